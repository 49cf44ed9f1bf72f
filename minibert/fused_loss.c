// The loss of a block of rows of logits, one row at a time: minibert/fused_loss.py's `block_loss`
// for a CPU. Not part of the lesson; fused_loss.py says what is computed and why.
//
// torch.compile makes three loops of `block_loss`, each over the whole block (128 rows of 23,562
// logits at base.yaml's sizes: 6 MB in bfloat16, twice that in float32), so each loop reads the
// block back from the last level of cache. Here each thread takes whole rows: a row (94 KB in
// float32) is read once from the logits and then stays in the core's own cache for the three
// passes over it, and its gradient is written once.
//
// Built by minibert/machinery/c_library.py with -O3 -march=native: the compiler turns every loop
// over j into vector instructions. Its flags let it reorder the sums (-fassociative-math), which
// is what a vector loop does; the exponential is written out so that it vectorises as well.

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu_math.h"

// exp(row - top) in place; returns its sum (the softmax's denominator, over e^top).
static float exp_and_sum(float *row, int64_t V, float top) {
    float total = 0.0f;
    for (int64_t j = 0; j < V; j++) {
        row[j] = exp_nonpositive(row[j] - top);
        total += row[j];
    }
    return total;
}

// block_loss_bf16 and block_loss_float: the arguments of fused_loss.py's block_loss, as pointers
// to contiguous memory. logits and grad_out are (n, V) in T; bias (V,) float32 or NULL; labels (n,)
// in [0, V); row_weight (n,) float32. Writes losses (n,) float32, ranks (n,) int64 and right_grads
// (n,) float32. Each row: (1) logits + bias into a float32 scratch row, with its largest entry and
// how many entries are >= the right word's, (2) their exponentials and sum, (3) the softmax times
// row_weight into grad_out.
#define BLOCK_LOSS(NAME, T, TO_FLOAT, FROM_FLOAT)                                                     \
    void NAME(const T *logits, const float *bias, const int64_t *labels, const float *row_weight,    \
              T *grad_out, float *losses, int64_t *ranks, float *right_grads, int64_t n, int64_t V,   \
              int threads) {                                                                          \
        _Pragma("omp parallel num_threads(threads)") {                                                \
            float *row = malloc(V * sizeof(float)); /* this thread's scratch row */                   \
            _Pragma("omp for schedule(static)") for (int64_t i = 0; i < n; i++) {                     \
                const T *x = logits + i * V;                                                          \
                T *grad = grad_out + i * V;                                                           \
                float right = TO_FLOAT(x[labels[i]]) + (bias ? bias[labels[i]] : 0.0f);              \
                float top = -FLT_MAX;                                                                 \
                int32_t above = 0; /* int32: a narrower vector count than int64 */                    \
                for (int64_t j = 0; j < V; j++) {                                                     \
                    row[j] = TO_FLOAT(x[j]) + (bias ? bias[j] : 0.0f);                                \
                    top = row[j] > top ? row[j] : top;                                                \
                    above += row[j] >= right; /* a tie counts against the right word */               \
                }                                                                                     \
                float total = exp_and_sum(row, V, top);                                               \
                float scale = row_weight[i] / total;                                                  \
                for (int64_t j = 0; j < V; j++) grad[j] = FROM_FLOAT(row[j] * scale);                \
                float log_norm = top + logf(total);                                                   \
                losses[i] = log_norm - right;                                                         \
                ranks[i] = above - 1;                                                                 \
                right_grads[i] = (expf(right - log_norm) - 1.0f) * row_weight[i];                    \
            }                                                                                         \
            free(row);                                                                                \
        }                                                                                             \
    }

BLOCK_LOSS(block_loss_bf16, uint16_t, bf16_to_float, float_to_bf16)
BLOCK_LOSS(block_loss_float, float, float_to_float, float_to_float)
