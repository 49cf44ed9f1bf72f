// Dropout on a CPU in one pass: minibert/fast.py's `dropout_scale` and the product by it, for
// CpuDropout, and with the residual addition after it, for FastEncoderLayer. Not part of the
// lesson; fast.py says what is computed and why.
//
// The same numbers as `x * dropout_scale(seed, n, dropped, x.dtype)`, bit for bit: element i
// keeps x[i] * factor where the 15 low bits of the (i % 4)-th 16-bit quarter of the 64-bit word
// SplitMix64(seed + i / 4) are >= dropped, else 0. The words are drawn a chunk at a time into a
// small array, so that both loops are vector loops (built with -O3 -march=native by
// minibert/machinery/c_library.py); nothing but the output is written.

#include <stdint.h>

#include "cpu_math.h"

#define CHUNK_WORDS 1024  // 64-bit words a thread draws at once: 8 KB, in its first-level cache

// The loop of every function below, over n contiguous elements: STORE writes element i, with
// `kept` whether dropout keeps it, and the survivors' factor `factor`, 2^15 / (2^15 - dropped) in
// T's precision (PyTorch multiplies by it in T).
#define DROPOUT_LOOP(STORE)                                                                           \
    const int64_t chunk = 4 * CHUNK_WORDS; /* elements: four per word */                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                 \
    for (int64_t start = 0; start < n; start += chunk) {                                              \
        uint64_t words[CHUNK_WORDS];                                                                  \
        int64_t stop = start + chunk < n ? start + chunk : n;                                         \
        for (int64_t k = 0; k < (stop - start + 3) / 4; k++)                                          \
            words[k] = splitmix64((uint64_t)seed + (uint64_t)(start / 4 + k));                        \
        const uint16_t *quarters = (const uint16_t *)words; /* as view(torch.int16) cuts them */     \
        for (int64_t i = start; i < stop; i++) {                                                      \
            const int kept = (quarters[i - start] & 0x7FFF) >= dropped;                               \
            STORE;                                                                                    \
        }                                                                                             \
    }

#define DROPOUT(SUFFIX, T, TO_FLOAT, FROM_FLOAT)                                                      \
    /* out = x * the dropout factors. */                                                             \
    void dropout_##SUFFIX(const T *x, T *out, int64_t n, int64_t seed, int32_t dropped, float factor, \
                          int threads) {                                                              \
        DROPOUT_LOOP(out[i] = FROM_FLOAT(kept ? TO_FLOAT(x[i]) * factor : 0.0f))                      \
    }                                                                                                 \
                                                                                                      \
    /* out (float32) = residual (float32) + dropout_##SUFFIX(x): the sum of a block's input and its */ \
    /* dropped output, in one pass. The dropped x is rounded to T first, as dropout's output is,    */ \
    /* and not fused with the addition into one multiply-add (one rounding where PyTorch has two).  */ \
    __attribute__((optimize("fp-contract=off"))) void residual_dropout_##SUFFIX(const float *residual, const T *x, float *out, int64_t n, int64_t seed, \
                                   int32_t dropped, float factor, int threads) {                      \
        DROPOUT_LOOP(out[i] = residual[i] + TO_FLOAT(FROM_FLOAT(kept ? TO_FLOAT(x[i]) * factor : 0.0f))) \
    }                                                                                                 \
                                                                                                      \
    /* Its backward for x: out (T) = dropout_##SUFFIX(grad rounded to T), from the float32 grad, as  */ \
    /* autograd would cast the gradient to x's dtype before dropout's backward.                     */ \
    void dropout_of_float_##SUFFIX(const float *grad, T *out, int64_t n, int64_t seed, int32_t dropped, \
                                   float factor, int threads) {                                       \
        DROPOUT_LOOP(out[i] = FROM_FLOAT(kept ? TO_FLOAT(FROM_FLOAT(grad[i])) * factor : 0.0f))       \
    }

DROPOUT(bf16, uint16_t, bf16_to_float, float_to_bf16)
DROPOUT(float, float, float_to_float, float_to_float)
