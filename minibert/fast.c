// Dropout on a CPU in one pass: minibert/fast.py's `dropout_scale` and the product by it, for
// CpuDropout. Not part of the lesson; fast.py says what is computed and why.
//
// The same numbers as `x * dropout_scale(seed, n, dropped, x.dtype)`, bit for bit: element i
// keeps x[i] * factor where the 15 low bits of the (i % 4)-th 16-bit quarter of the 64-bit word
// SplitMix64(seed + i / 4) are >= dropped, else 0. The words are drawn a chunk at a time into a
// small array, so that both loops are vector loops (built with -O3 -march=native by
// minibert/machinery/c_library.py); nothing but the output is written.

#include <stdint.h>

#include "cpu_math.h"

#define CHUNK_WORDS 1024  // 64-bit words a thread draws at once: 8 KB, in its first-level cache

// dropout_bf16 and dropout_float: out = x * the dropout factors, for n contiguous elements of T.
// factor is 2^15 / (2^15 - dropped) in T's precision (PyTorch multiplies by it in T).
#define DROPOUT(NAME, T, TO_FLOAT, FROM_FLOAT)                                                        \
    void NAME(const T *x, T *out, int64_t n, int64_t seed, int32_t dropped, float factor, int threads) { \
        const int64_t chunk = 4 * CHUNK_WORDS; /* elements: four per word */                          \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                             \
        for (int64_t start = 0; start < n; start += chunk) {                                          \
            uint64_t words[CHUNK_WORDS];                                                              \
            int64_t stop = start + chunk < n ? start + chunk : n;                                     \
            for (int64_t k = 0; k < (stop - start + 3) / 4; k++)                                      \
                words[k] = splitmix64((uint64_t)seed + (uint64_t)(start / 4 + k));                    \
            const uint16_t *quarters = (const uint16_t *)words; /* as view(torch.int16) cuts them */ \
            for (int64_t i = start; i < stop; i++) {                                                  \
                int32_t bits = quarters[i - start] & 0x7FFF;                                          \
                out[i] = FROM_FLOAT(bits >= dropped ? TO_FLOAT(x[i]) * factor : 0.0f);                \
            }                                                                                         \
        }                                                                                             \
    }

DROPOUT(dropout_bf16, uint16_t, bf16_to_float, float_to_bf16)
DROPOUT(dropout_float, float, float_to_float, float_to_float)
