// Attention's core for MultiHeadSelfAttention on a CPU: softmax(q k^T / sqrt(d)) v, with dropout
// on the weights, for every sequence b and head h, straight from the projection's output to the
// merged heads. PyTorch computes it as about ten separate passes of tiny batched products
// (20 x 16 matrices at base.yaml's sizes) and copies between layouts. Here a thread takes
// LANES (sequence, head) pairs at once, one per vector lane: every product, the softmax and the
// dropout are then element-wise across lanes, in float32, with no sums inside a vector and no
// loop whose length is T or d. The backward computes the weights and their dropout again.
//
// qkv: (B, T, 3, H, d), the projection's output; y and grad_y: (B, T, H, d); attend: (B, T)
// bytes, 0 for a key no query may attend to (every row has one it may), or NULL. The weight of
// query t on key s of head h in sequence b is element ((b H + h) T + t) T + s of a (B, H, T, T)
// tensor, dropped as fast.c's `dropout` drops that element (seed, dropped, factor); dropped = 0:
// no dropout. Built with -O3 -march=native by minibert/machinery/c_library.py.

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_math.h"

#define LANES 16  // (sequence, head) pairs a thread computes at once: one float32 vector of AVX-512
_Static_assert(LANES == TILE, "the lanes move in and out through transpose_tile");
#define EACH_LANE _Pragma("omp simd") for (int l = 0; l < LANES; l++)

// The dropout factors keep (T, T, LANES) of the LANES heads: factor or 0 (1 without dropout).
// first[l]: the place of lane l's element (0, 0) in the (B, H, T, T) weights.
static void keep_factors(float *restrict keep, const int64_t *restrict first, int64_t T, int64_t seed,
                         int32_t dropped, float factor) {
    const int64_t n = T * T;
    if (dropped == 0) {
        for (int64_t i = 0; i < n * LANES; i++) keep[i] = 1.0f;
        return;
    }
    if (n % 4 == 0) {  // every lane's first element (b H + h) T T starts a word: one word per four elements
        for (int64_t j = 0; j < n / 4; j++) EACH_LANE {
            const uint64_t word = splitmix64((uint64_t)seed + (uint64_t)(first[l] / 4 + j));
            for (int quarter = 0; quarter < 4; quarter++) {  // as view(torch.int16) cuts the word
                const uint32_t bits = (uint32_t)(word >> (16 * quarter)) & 0x7FFF;
                keep[(4 * j + quarter) * LANES + l] = bits >= (uint32_t)dropped ? factor : 0.0f;
            }
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) EACH_LANE {
        const uint64_t at = (uint64_t)(first[l] + i);
        const uint64_t word = splitmix64((uint64_t)seed + (at >> 2));
        const uint32_t bits = (uint32_t)(word >> (16 * (at & 3))) & 0x7FFF;  // as view(torch.int16) cuts it
        keep[i * LANES + l] = bits >= (uint32_t)dropped ? factor : 0.0f;
    }
}

// The vector registers: WIDTH floats, as a type of GCC's vector extension (element-wise
// arithmetic, loaded from any float's address). BLOCK_ROWS x 4 sums at once: with AVX-512, 16 of
// its 32 registers and 8 vector loads per step; with 16 registers, 8 of them.
#if defined(__AVX512F__)
#define WIDTH 16
#define BLOCK_ROWS 4
#elif defined(__AVX__)
#define WIDTH 8
#define BLOCK_ROWS 2
#else
#define WIDTH 4
#define BLOCK_ROWS 2
#endif
_Static_assert(LANES % WIDTH == 0, "the lanes are whole vectors");
typedef float Vector __attribute__((vector_size(4 * WIDTH), aligned(4), may_alias));

// Keeps v in a register: GCC would otherwise fold its load into each multiply-add that uses it,
// loading it again every time, and the loads, not the arithmetic, would bound the loop (blocks
// of sums were then no faster than a row of four at a time).
#if defined(__x86_64__) && defined(__AVX__)
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define IN_REGISTER(v) (void)(v)
#endif

// An R x C block (each at most 4) of the sums of `products` at once, WIDTH lanes at a time: R C
// chains of additions run side by side, and each vector loaded serves R or C of them.
static inline __attribute__((always_inline)) void block_sums(int R, int C, float *restrict out, int64_t out_next,
                                                           const float *restrict a, int64_t a_next, int64_t a_step,
                                                           const float *restrict b, int64_t b_next, int64_t b_step,
                                                           int64_t n) {
    for (int lane = 0; lane < LANES; lane += WIDTH) {
        Vector sum[4][4] = {{0}}, b_i[4];
        for (int64_t i = 0; i < n; i++) {
            _Pragma("GCC unroll 4") for (int j = 0; j < C; j++) {
                b_i[j] = *(const Vector *)(b + (j * b_next + i * b_step) * LANES + lane);
                IN_REGISTER(b_i[j]);
            }
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                Vector a_ri = *(const Vector *)(a + (r * a_next + i * a_step) * LANES + lane);
                IN_REGISTER(a_ri);
                _Pragma("GCC unroll 4") for (int j = 0; j < C; j++) sum[r][j] += a_ri * b_i[j];
            }
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) _Pragma("GCC unroll 4") for (int j = 0; j < C; j++)
            *(Vector *)(out + (r * out_next + j) * LANES + lane) = sum[r][j];
    }
}

// Sums of products, LANES heads at once: out[r out_next + j] = sum over i < n of
// a[r a_next + i a_step] b[j b_next + i b_step] for r < rows and j < count, each index that of a
// vector of LANES floats; every product of attention is one of these. Each sum is a chain of
// additions, each waiting for the one before (4 cycles), and each of its steps loads two vectors:
// made in blocks of BLOCK_ROWS x 4, many chains keep the vector units busy, and each vector
// loaded serves several of them (AVX-512: 8 loads for 16 multiply-adds, against 5 for 4 a row
// at a time; the kernel 1.3 to 1.6 times as fast; with AVX2, 1.2 to 1.3).
static void products(float *restrict out, int64_t rows, int64_t out_next, int64_t count, const float *restrict a,
                     int64_t a_next, int64_t a_step, const float *restrict b, int64_t b_next, int64_t b_step,
                     int64_t n) {
#define BLOCK(R, C)                                                                                   \
    block_sums(R, C, out + (r * out_next + j) * LANES, out_next, a + r * a_next * LANES, a_next, a_step, \
               b + j * b_next * LANES, b_next, b_step, n)
    int64_t r = 0, j;
    for (; r + BLOCK_ROWS <= rows; r += BLOCK_ROWS) {
        for (j = 0; j + 4 <= count; j += 4) BLOCK(BLOCK_ROWS, 4);
        for (; j < count; j++) BLOCK(BLOCK_ROWS, 1);
    }
    for (; r < rows; r++) {
        for (j = 0; j + 4 <= count; j += 4) BLOCK(1, 4);
        for (; j < count; j++) BLOCK(1, 1);
    }
#undef BLOCK
}

// The weights w (T, T, LANES) of the LANES heads whose q and k are (T, d, LANES): the softmax over
// the keys s of the scaled scores; 0 for a key whose `open` (T, LANES) is 0.
static void softmax_weights(const float *restrict q, const float *restrict k, const float *restrict open,
                            float *restrict w, int64_t T, int64_t d) {
    const float scale = 1.0f / sqrtf((float)d);
    products(w, T, T, T, q, d, 1, k, d, 1, d);  // w[t, s] = q[t] . k[s], the scores
    for (int64_t t = 0; t < T; t++) {
        float *restrict row = w + t * T * LANES;  // (T, LANES): query t's weights over the keys
        float top[LANES], total[LANES];
        EACH_LANE top[l] = -1e30f, total[l] = 0.0f;
        for (int64_t s = 0; s < T; s++) EACH_LANE {
            row[s * LANES + l] = open[s * LANES + l] > 0.0f ? row[s * LANES + l] * scale : -1e30f;
            top[l] = row[s * LANES + l] > top[l] ? row[s * LANES + l] : top[l];
        }
        for (int64_t s = 0; s < T; s++) EACH_LANE {
            row[s * LANES + l] = exp_to_88(row[s * LANES + l] - top[l]);  // a masked key: 0
            total[l] += row[s * LANES + l];
        }
        EACH_LANE total[l] = 1.0f / total[l];
        for (int64_t s = 0; s < T; s++) EACH_LANE row[s * LANES + l] *= total[l];
    }
}

// Per thread: LANES heads in float32, lane innermost (q[(t d + e) LANES + lane]).
typedef struct {
    float *q, *k, *v, *dy, *dq, *dk, *dv;  // (T, d, LANES) each
    float *w, *keep, *dS, *A;              // (T, T, LANES): the weights, their dropout factors; gradients
    float *open;                           // (T, LANES): 1 for a key that may be attended to, else 0
} Heads;

static Heads heads_alloc(int64_t T, int64_t d) {
    const int64_t n = T * d * LANES, nn = T * T * LANES;
    Heads a;
    a.q = malloc(sizeof(float) * (size_t)(7 * n + 4 * nn + T * LANES));
    a.k = a.q + n, a.v = a.k + n, a.dy = a.v + n, a.dq = a.dy + n, a.dk = a.dq + n, a.dv = a.dk + n;
    a.w = a.dv + n, a.keep = a.w + nn, a.dS = a.keep + nn, a.A = a.dS + nn, a.open = a.A + nn;
    return a;
}

static void heads_free(Heads *a) { free(a->q); }

// y (T, d, LANES) = A v: the dropped weights A = w keep (T, T, LANES) times the values.
static void weighted_values(const float *restrict A, const float *restrict v, float *restrict y, int64_t T,
                            int64_t d) {
    products(y, T, d, d, A, T, 1, v, 1, d, T);  // y[t, e] = sum over s of A[t, s] v[s, e]
}

// dq, dk, dv (T, d, LANES) from dy (T, d, LANES). With A = w keep (the dropped weights):
// dv = A^T dy; dA = dy v^T; dS = w (dA keep - rowsum(w dA keep)) / sqrt(d); dq = dS k; dk = dS^T q.
// dS and A (T, T, LANES) are made first, so that each product then sums in a register.
static void attention_gradients(const float *restrict q, const float *restrict k, const float *restrict v,
                                const float *restrict w, const float *restrict keep, const float *restrict dy,
                                float *restrict dq, float *restrict dk, float *restrict dv, float *restrict dS,
                                float *restrict A, int64_t T, int64_t d) {
    const float scale = 1.0f / sqrtf((float)d);
    products(dS, T, T, T, dy, d, 1, v, d, 1, d);  // dA[t, s] = dy[t] . v[s], in dS
    for (int64_t t = 0; t < T; t++) {
        float *restrict row = dS + t * T * LANES;  // (T, LANES): dA, then dS, of query t
        float rowsum[LANES] = {0};
        for (int64_t s = 0; s < T; s++) EACH_LANE {
            const int64_t ts = (t * T + s) * LANES + l;
            row[s * LANES + l] *= keep[ts];
            rowsum[l] += w[ts] * row[s * LANES + l];
        }
        for (int64_t s = 0; s < T; s++) EACH_LANE {
            const int64_t ts = (t * T + s) * LANES + l;
            A[ts] = w[ts] * keep[ts];
            row[s * LANES + l] = w[ts] * (row[s * LANES + l] - rowsum[l]) * scale;
        }
    }
    products(dq, T, d, d, dS, T, 1, k, 1, d, T);   // dq[t, e] = sum over s of dS[t, s] k[s, e]
    products(dk, T, d, d, dS, 1, T, q, 1, d, T);   // dk[s, e] = sum over t of dS[t, s] q[t, e]
    products(dv, T, d, d, A, 1, T, dy, 1, d, T);   // dv[s, e] = sum over t of A[t, s] dy[t, e]
}

// Between a (B, T, H, d) layout of row stride `stride` (from `x`: x's rows) and a (T, d, LANES)
// one: lane l is the head at offset at[l] of x. Both go a LANES x LANES tile at a time through
// transpose_tile (cpu_math.h), so that each lane's row of d elements is read or written in
// order, as vectors, and the (T, d, LANES) side a vector at a time.
#define MOVES(SUFFIX, T_, TO_FLOAT, FROM_FLOAT)                                                       \
    static void gather_##SUFFIX(float *restrict dst, const T_ *restrict x, const int64_t *restrict at, \
                                int64_t stride, int64_t T, int64_t d) {                               \
        float tile[LANES * LANES] = {0}, rows[LANES * LANES];                                         \
        for (int64_t t = 0; t < T; t++)                                                               \
            for (int64_t e0 = 0; e0 < d; e0 += LANES) {                                               \
                const int width = d - e0 < LANES ? (int)(d - e0) : LANES; /* elements e0 .. */        \
                for (int l = 0; l < LANES; l++) {                                                     \
                    const T_ *restrict from = x + at[l] + t * stride + e0;                            \
                    if (width == LANES) /* a loop of known length: one vector, no loop */             \
                        for (int i = 0; i < LANES; i++) tile[l * LANES + i] = TO_FLOAT(from[i]);      \
                    else                                                                              \
                        for (int i = 0; i < width; i++) tile[l * LANES + i] = TO_FLOAT(from[i]);      \
                }                                                                                     \
                float *restrict to = dst + (t * d + e0) * LANES; /* width rows of LANES */            \
                if (width == LANES) {                                                                 \
                    transpose_tile(tile, to);                                                         \
                } else {                                                                              \
                    transpose_tile(tile, rows);                                                       \
                    memcpy(to, rows, sizeof(float) * (size_t)(width * LANES));                        \
                }                                                                                     \
            }                                                                                         \
    }                                                                                                 \
                                                                                                      \
    /* `lanes`: how many lanes hold a head (the last group of B H may hold fewer). */                 \
    static void scatter_##SUFFIX(T_ *restrict x, const float *restrict src, const int64_t *restrict at, \
                                 int64_t stride, int64_t T, int64_t d, int lanes) {                   \
        float tile[LANES * LANES] = {0}, rows[LANES * LANES];                                         \
        for (int64_t t = 0; t < T; t++)                                                               \
            for (int64_t e0 = 0; e0 < d; e0 += LANES) {                                               \
                const int width = d - e0 < LANES ? (int)(d - e0) : LANES;                             \
                const float *restrict from = src + (t * d + e0) * LANES;                              \
                if (width == LANES) {                                                                 \
                    transpose_tile(from, rows);                                                       \
                } else {                                                                              \
                    memcpy(tile, from, sizeof(float) * (size_t)(width * LANES));                      \
                    transpose_tile(tile, rows);                                                       \
                }                                                                                     \
                for (int l = 0; l < lanes; l++) {                                                     \
                    T_ *restrict to = x + at[l] + t * stride + e0;                                    \
                    if (width == LANES) /* as in gather_: a loop of known length */                   \
                        for (int i = 0; i < LANES; i++) to[i] = FROM_FLOAT(rows[l * LANES + i]);      \
                    else                                                                              \
                        for (int i = 0; i < width; i++) to[i] = FROM_FLOAT(rows[l * LANES + i]);      \
                }                                                                                     \
            }                                                                                         \
    }

MOVES(bf16, uint16_t, bf16_to_float, float_to_bf16)
MOVES(float, float, float_to_float, float_to_float)

// The LANES (sequence, head) pairs first, first + 1, ... of B H: where each starts in the
// projection's output qkv (B, T, 3, H, d), in the (B, T, H, d) attention output, and in the
// (B, H, T, T) weights. Lanes past the last pair repeat it: they are computed for nothing and never
// stored. Returns how many lanes hold a pair.
static int lanes_at(int64_t *restrict qkv_at, int64_t *restrict y_at, int64_t *restrict weights_at,
                    int64_t first, int64_t B, int64_t T, int64_t H, int64_t d) {
    for (int l = 0; l < LANES; l++) {
        const int64_t bh = first + l < B * H ? first + l : B * H - 1, b = bh / H, h = bh % H;
        qkv_at[l] = b * T * 3 * H * d + h * d, y_at[l] = b * T * H * d + h * d, weights_at[l] = bh * T * T;
    }
    return first + LANES <= B * H ? LANES : (int)(B * H - first);
}

#define ATTENTION(SUFFIX, T_)                                                                         \
    /* q, k, v, the open keys and the dropout factors of LANES pairs, then their weights. */         \
    static int load_##SUFFIX(Heads *a, int64_t *restrict at, int64_t *restrict y_at, const T_ *restrict qkv, \
                             const uint8_t *restrict attend, int64_t first, int64_t B, int64_t T,     \
                             int64_t H, int64_t d, int64_t seed, int32_t dropped, float factor) {     \
        const int64_t D = H * d;                                                                      \
        int64_t weights_at[LANES];                                                                    \
        const int lanes = lanes_at(at, y_at, weights_at, first, B, T, H, d);                          \
        gather_##SUFFIX(a->q, qkv, at, 3 * D, T, d);                                                  \
        gather_##SUFFIX(a->k, qkv + D, at, 3 * D, T, d);                                              \
        gather_##SUFFIX(a->v, qkv + 2 * D, at, 3 * D, T, d);                                          \
        for (int64_t s = 0; s < T; s++) /* y_at[l] / D is the lane's row b T of (B, T) */             \
            EACH_LANE a->open[s * LANES + l] = !attend || attend[y_at[l] / D + s] ? 1.0f : 0.0f;       \
        keep_factors(a->keep, weights_at, T, seed, dropped, factor);                                  \
        softmax_weights(a->q, a->k, a->open, a->w, T, d);                                             \
        return lanes;                                                                                 \
    }                                                                                                 \
                                                                                                      \
    /* Forward (grad_y NULL): out is y (B, T, H, d). Backward: out is grad_qkv (B, T, 3, H, d), from   */ \
    /* grad_y (B, T, H, d).                                                                         */ \
    void attention_##SUFFIX(const T_ *restrict qkv, const uint8_t *restrict attend, const T_ *restrict grad_y, \
                            T_ *restrict out, int64_t B, int64_t T, int64_t H, int64_t d, int64_t seed,   \
                            int32_t dropped, float factor, int threads) {                             \
        const int64_t D = H * d;                                                                      \
        _Pragma("omp parallel num_threads(threads)") {                                                \
            Heads a = heads_alloc(T, d);                                                              \
            _Pragma("omp for schedule(static)")                                                       \
            for (int64_t first = 0; first < B * H; first += LANES) {                                  \
                int64_t at[LANES], y_at[LANES];                                                       \
                const int lanes =                                                                     \
                    load_##SUFFIX(&a, at, y_at, qkv, attend, first, B, T, H, d, seed, dropped, factor);   \
                if (!grad_y) {                                                                        \
                    for (int64_t i = 0; i < T * T * LANES; i++) a.A[i] = a.w[i] * a.keep[i];          \
                    weighted_values(a.A, a.v, a.dq, T, d); /* dq as scratch for the output */        \
                    scatter_##SUFFIX(out, a.dq, y_at, D, T, d, lanes);                                \
                    continue;                                                                         \
                }                                                                                     \
                gather_##SUFFIX(a.dy, grad_y, y_at, D, T, d);                                         \
                attention_gradients(a.q, a.k, a.v, a.w, a.keep, a.dy, a.dq, a.dk, a.dv, a.dS, a.A, T, d); \
                scatter_##SUFFIX(out, a.dq, at, 3 * D, T, d, lanes);                                  \
                scatter_##SUFFIX(out + D, a.dk, at, 3 * D, T, d, lanes);                              \
                scatter_##SUFFIX(out + 2 * D, a.dv, at, 3 * D, T, d, lanes);                          \
            }                                                                                         \
            heads_free(&a);                                                                           \
        }                                                                                             \
    }

ATTENTION(bf16, uint16_t)
ATTENTION(float, float)
