// LayerNorm on a CPU for minibert/fast.py's CpuLayerNorm, forward and backward. Not part of the
// lesson; fast.py says what is computed and why. Each row (a position's D numbers) is one loop of
// a thread; the loops over D are vector loops (built with -O3 -march=native by
// minibert/machinery/c_library.py).

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu_math.h"

// Rows of D float32 numbers (the residual stream): y = (x - mean) * rstd * weight + bias, with
// rstd = 1 / sqrt(var + eps), written in T: bfloat16 under autocast, the input of the product that
// follows, which would otherwise cast a float32 output in another pass. mean and rstd (rows,) are
// kept for the backward. bias NULL: none.
#define LAYER_NORM(SUFFIX, T, TO_FLOAT, FROM_FLOAT)                                                   \
    void layer_norm_##SUFFIX(const float *x, const float *weight, const float *bias, T *y, float *mean, \
                             float *rstd, int64_t rows, int64_t D, float eps, int threads) {          \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                             \
        for (int64_t r = 0; r < rows; r++) {                                                          \
            const float *row = x + r * D;                                                             \
            float sum = 0.0f, squares = 0.0f;                                                         \
            _Pragma("omp simd reduction(+ : sum)") for (int64_t d = 0; d < D; d++) sum += row[d];     \
            const float mu = sum / (float)D;                                                          \
            _Pragma("omp simd reduction(+ : squares)") for (int64_t d = 0; d < D; d++)                \
                squares += (row[d] - mu) * (row[d] - mu);                                             \
            const float rs = 1.0f / sqrtf(squares / (float)D + eps);                                  \
            if (bias) {                                                                               \
                _Pragma("omp simd") for (int64_t d = 0; d < D; d++)                                   \
                    y[r * D + d] = FROM_FLOAT((row[d] - mu) * rs * weight[d] + bias[d]);              \
            } else {                                                                                  \
                _Pragma("omp simd") for (int64_t d = 0; d < D; d++)                                   \
                    y[r * D + d] = FROM_FLOAT((row[d] - mu) * rs * weight[d]);                        \
            }                                                                                         \
            mean[r] = mu, rstd[r] = rs;                                                               \
        }                                                                                             \
    }                                                                                                 \
                                                                                                      \
    /* grad_x (rows, D) float32 from grad_y (rows, D) in T; grad_weight and grad_bias (D,) float32   */ \
    /* summed over the rows, each thread's rows apart, then the threads' sums in their order: the   */ \
    /* same numbers every run. grad_bias NULL: none.                                                 */ \
    void layer_norm_backward_##SUFFIX(const float *x, const float *weight, const float *mean,         \
                                      const float *rstd, const T *grad_y, float *grad_x,              \
                                      float *grad_weight, float *grad_bias, int64_t rows, int64_t D,  \
                                      int threads) {                                                  \
        float *partial = calloc((size_t)(threads * 2 * D), sizeof(float)); /* (threads, 2, D) */      \
        _Pragma("omp parallel num_threads(threads)") {                                                \
            float *weight_sum = partial + omp_get_thread_num() * 2 * D, *bias_sum = weight_sum + D;   \
            _Pragma("omp for schedule(static)") for (int64_t r = 0; r < rows; r++) {                  \
                const float *row = x + r * D, mu = mean[r], rs = rstd[r];                             \
                const T *g = grad_y + r * D;                                                          \
                float a = 0.0f, b = 0.0f; /* sums over d of g w, and of g w xhat */                   \
                _Pragma("omp simd reduction(+ : a, b)") for (int64_t d = 0; d < D; d++) {             \
                    const float gd = TO_FLOAT(g[d]), xhat = (row[d] - mu) * rs;                       \
                    a += gd * weight[d], b += gd * weight[d] * xhat;                                  \
                    weight_sum[d] += gd * xhat, bias_sum[d] += gd;                                    \
                }                                                                                     \
                a /= (float)D, b /= (float)D;                                                         \
                _Pragma("omp simd") for (int64_t d = 0; d < D; d++) {                                 \
                    const float xhat = (row[d] - mu) * rs;                                            \
                    grad_x[r * D + d] = rs * (TO_FLOAT(g[d]) * weight[d] - a - xhat * b);             \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
        for (int64_t d = 0; d < D; d++) {                                                             \
            float w = 0.0f, c = 0.0f;                                                                 \
            for (int t = 0; t < threads; t++) w += partial[t * 2 * D + d], c += partial[t * 2 * D + D + d]; \
            grad_weight[d] = w;                                                                       \
            if (grad_bias) grad_bias[d] = c;                                                          \
        }                                                                                             \
        free(partial);                                                                                \
    }

LAYER_NORM(bf16, uint16_t, bf16_to_float, float_to_bf16)
LAYER_NORM(float, float, float_to_float, float_to_float)
