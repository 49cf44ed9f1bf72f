// The loss of a block of rows of logits: minibert/fused_loss.py's `block_loss` for a CPU. Not part
// of the lesson; fused_loss.py says what is computed and why.
//
// The logits come one row per word, (V, n): the head's product is faster in that layout
// (fused_loss.py). A thread takes LANES positions at once, one per vector lane, so that every
// step over the words is element-wise across lanes, as attention.c's loops are. Two passes: (1)
// the largest logit of each position, how many words score at least as high as its right one,
// and the exponentials and their sum, kept in the thread's scratch; (2) the softmax times
// row_weight, turned (a LANES x LANES tile at a time) into the position's row of grad_out (n, V),
// the layout of the products that follow, and, from the same tiles, each word's sum over the
// strip's positions: the bias's gradient, without another pass over grad_out. torch.compile's
// loops (the fallback) each read the whole block back from the last level of cache; here the
// block is read once and the scratch once.
//
// Built by minibert/machinery/c_library.py with -O3 -march=native: the compiler turns the loops over
// lanes into vector instructions. The exponential is written out so that it vectorises as well.

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_math.h"

#define LANES 16  // positions a thread computes at once: one float32 vector of AVX-512
_Static_assert(LANES == TILE, "a strip's gradient goes out through transpose_tile");
#define EACH_LANE _Pragma("omp simd") for (int l = 0; l < LANES; l++)

// The exponentials are shifted by each position's right logit, known before the loop, so that
// one pass over the block finds the top logit, the rank and the exponentials together. A word
// scoring more than SHIFT_LIMIT above the right one (their sum could leave float32) makes the strip
// compute them again, shifted by the top logit: the usual softmax, one more pass.
#define SHIFT_LIMIT 64.0f  // e^64 times a vocabulary of a billion words stays under float32's e^88.7

// One strip: the LANES positions whose logits are x[j * stride + l] (word j, lane l). bias[j *
// bias_step] is word j's bias (a step of 0 over a single 0 without one: no branch in the loops).
// Writes grad (LANES, V), and each lane's shift, sum of exponentials over e^shift, and rank; and,
// where sums is not NULL, adds into sums (V,) each word's gradient summed over the lanes.
#define STRIP(SUFFIX, T, TO_FLOAT, FROM_FLOAT)                                                        \
    /* One pass over the strip: the top logit, the rank, and the exponentials over e^shift. */        \
    static void exponentials_##SUFFIX(const T *restrict x, int64_t stride, const float *restrict bias,    \
                                      int64_t bias_step, const float *restrict right,                 \
                                      const float *restrict shift, float *restrict top,               \
                                      float *restrict total, int32_t *restrict above,                 \
                                      float *restrict scratch, int64_t V) {                           \
        EACH_LANE top[l] = -FLT_MAX, total[l] = 0.0f, above[l] = 0;                                   \
        for (int64_t j = 0; j < V; j++) {                                                             \
            const float b = bias[j * bias_step];                                                      \
            EACH_LANE {                                                                               \
                const float v = TO_FLOAT(x[j * stride + l]) + b;                                      \
                top[l] = v > top[l] ? v : top[l];                                                     \
                above[l] += v >= right[l]; /* a tie counts against the right word */                  \
                const float e = exp_to_88(v - shift[l]);                                              \
                scratch[j * LANES + l] = e;                                                           \
                total[l] += e;                                                                        \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    static void strip_##SUFFIX(const T *restrict x, int64_t stride, const float *restrict bias,       \
                               int64_t bias_step, const float *restrict right,                        \
                               const float *restrict row_weight, T *restrict grad, float *restrict shift, \
                               float *restrict total, int32_t *restrict above, float *restrict scratch, \
                               float *restrict sums, int64_t V) {                                     \
        float top[LANES];                                                                             \
        EACH_LANE shift[l] = right[l];                                                                \
        exponentials_##SUFFIX(x, stride, bias, bias_step, right, shift, top, total, above, scratch, V); \
        int again = 0;                                                                                \
        for (int l = 0; l < LANES; l++) again |= top[l] - right[l] > SHIFT_LIMIT;                     \
        if (again) {                                                                                  \
            EACH_LANE shift[l] = top[l];                                                              \
            exponentials_##SUFFIX(x, stride, bias, bias_step, right, shift, top, total, above, scratch, V); \
        }                                                                                             \
        float scale[LANES], tile[LANES * LANES], rows[LANES * LANES];                                 \
        EACH_LANE scale[l] = row_weight[l] / total[l];                                                \
        for (int64_t j0 = 0; j0 < V; j0 += LANES) {                                                   \
            const int words = V - j0 < LANES ? (int)(V - j0) : LANES;                                 \
            for (int w = 0; w < LANES; w++) /* past the last word: repeats it, never stored */        \
                EACH_LANE tile[w * LANES + l] = scratch[(j0 + (w < words ? w : 0)) * LANES + l] * scale[l]; \
            transpose_tile(tile, rows);                                                               \
            if (sums) { /* row l of the tile is lane l's gradient of these LANES words */             \
                float word_sum[LANES];                                                                \
                _Pragma("omp simd") for (int w = 0; w < LANES; w++) word_sum[w] = rows[w];            \
                for (int l = 1; l < LANES; l++)                                                       \
                    _Pragma("omp simd") for (int w = 0; w < LANES; w++) word_sum[w] += rows[l * LANES + w]; \
                for (int w = 0; w < words; w++) sums[j0 + w] += word_sum[w];                          \
            }                                                                                         \
            for (int l = 0; l < LANES; l++) {                                                         \
                _Pragma("omp simd") for (int w = 0; w < words; w++)                                   \
                    grad[l * V + j0 + w] = FROM_FLOAT(rows[l * LANES + w]);                           \
            }                                                                                         \
        }                                                                                             \
    }

STRIP(bf16, uint16_t, bf16_to_float, float_to_bf16)
STRIP(float, float, float_to_float, float_to_float)

// block_loss_bf16 and block_loss_float: the arguments of fused_loss.py's block_loss, as pointers to
// contiguous memory, with the logits one row per word. word_logits (V, n) and grad_out (n, V) in T;
// bias (V,) float32 or NULL; labels (n,) in [0, V); row_weight (n,) float32. Writes losses (n,)
// float32, ranks (n,) int64 and right_grads (n,) float32, and returns 0; returns 1, having written
// nothing, where a label is outside [0, V). Where bias_sums (threads, V) float32 is not NULL, each
// thread adds into its own row its positions' gradients, the right words' entries being
// (softmax - 1) * row_weight: after the last block, the column sums of bias_sums are the bias's
// gradient (the same threads take the same positions at every call: the same sums, bit for bit).
// A last strip of fewer than LANES positions is copied into a whole one first (n is a multiple of
// LANES in training).
#define BLOCK_LOSS(SUFFIX, T, TO_FLOAT)                                                               \
    int block_loss_##SUFFIX(const T *word_logits, const float *bias, const int64_t *labels,           \
                            const float *row_weight, T *grad_out, float *losses, int64_t *ranks,      \
                            float *right_grads, float *bias_sums, int64_t n, int64_t V, int threads) { \
        for (int64_t p = 0; p < n; p++)                                                               \
            if (labels[p] < 0 || labels[p] >= V) return 1;                                            \
        static const float no_bias = 0.0f;                                                            \
        const float *bias_at = bias ? bias : &no_bias;                                                \
        const int64_t bias_step = bias ? 1 : 0;                                                       \
        _Pragma("omp parallel num_threads(threads)") {                                                \
            float *scratch = malloc(sizeof(float) * V * LANES); /* this thread's exponentials */      \
            T *part = NULL;                                  /* a short strip's logits and gradient */ \
            float *sums = bias_sums ? bias_sums + omp_get_thread_num() * V : NULL; /* its own row */  \
            _Pragma("omp for schedule(static)") for (int64_t p0 = 0; p0 < n; p0 += LANES) {           \
                const int lanes = n - p0 < LANES ? (int)(n - p0) : LANES;                             \
                float right[LANES], weight[LANES], shift[LANES], total[LANES];                        \
                int32_t above[LANES];                                                                 \
                for (int l = 0; l < LANES; l++) { /* lanes past the last position repeat it */        \
                    const int64_t p = p0 + (l < lanes ? l : lanes - 1), label = labels[p];            \
                    right[l] = TO_FLOAT(word_logits[label * n + p]) + bias_at[label * bias_step];     \
                    weight[l] = l < lanes ? row_weight[p] : 0.0f;                                     \
                }                                                                                     \
                if (lanes == LANES) {                                                                 \
                    strip_##SUFFIX(word_logits + p0, n, bias_at, bias_step, right, weight,            \
                                   grad_out + p0 * V, shift, total, above, scratch, sums, V);         \
                } else {                                                                              \
                    if (!part) part = malloc(sizeof(T) * V * LANES * 2);                              \
                    for (int64_t j = 0; j < V; j++)                                                   \
                        for (int l = 0; l < LANES; l++)                                               \
                            part[j * LANES + l] = word_logits[j * n + p0 + (l < lanes ? l : lanes - 1)]; \
                    strip_##SUFFIX(part, LANES, bias_at, bias_step, right, weight, part + V * LANES,  \
                                   shift, total, above, scratch, sums, V);                            \
                    memcpy(grad_out + p0 * V, part + V * LANES, sizeof(T) * V * lanes);               \
                }                                                                                     \
                if (sums) /* the one-hot's part: the loop summed the softmax alone */                 \
                    for (int l = 0; l < lanes; l++) sums[labels[p0 + l]] -= weight[l];                \
                for (int l = 0; l < lanes; l++) {                                                     \
                    const float log_norm = shift[l] + logf(total[l]);                                 \
                    losses[p0 + l] = log_norm - right[l];                                             \
                    ranks[p0 + l] = above[l] - 1;                                                     \
                    right_grads[p0 + l] = (expf(right[l] - log_norm) - 1.0f) * weight[l];             \
                }                                                                                     \
            }                                                                                         \
            free(scratch), free(part);                                                                \
        }                                                                                             \
        return 0;                                                                                     \
    }

BLOCK_LOSS(bf16, uint16_t, bf16_to_float)
BLOCK_LOSS(float, float, float_to_float)
