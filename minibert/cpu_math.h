// Small helpers shared by the C files: bfloat16 <-> float32, an exponential that the compiler
// turns into vector instructions, SplitMix64's mixing function, and a 16 x 16 transpose.
#ifndef MINIBERT_CPU_MATH_H
#define MINIBERT_CPU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_bf16(float f) {  // round to nearest, ties to even, as PyTorch does
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float float_to_float(float f) { return f; }

// exp(x) for x <= 88, the largest float32 being e^88.7 (Cephes' expf, within 2 float32 steps of
// the exact value): x = n ln2 + r with |r| <= ln2 / 2, exp(x) = 2^n exp(r), exp(r) by its
// polynomial. Plain arithmetic, so that a loop of it becomes a vector loop (libm's expf would not).
static inline float exp_to_88(float x) {
    float clamped = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;  // 2^n stays a normal float32
    float n = floorf(clamped * 1.44269504088896341f + 0.5f);
    float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;  // ln2 in two parts: r stays exact
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;  // 2^n: the exponent field of a float32
    float two_n;
    memcpy(&two_n, &bits, 4);
    return x < -87.0f ? 0.0f : p * two_n;  // under 2^-125: nothing next to a sum's largest term
}

// SplitMix64 (Steele, Lea and Flood, 2014): the 64-bit word for a counter.
static inline uint64_t splitmix64(uint64_t counter) {
    uint64_t z = counter * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#define TILE 16  // the side of transpose_tile's square: 16 float32, one vector of AVX-512

// out (TILE, TILE) = tile^T, both stored by rows: what comes one row per word (or per lane) goes
// out one row per position (or per element), in sixteen loads, 64 shuffles and sixteen stores.
static inline void transpose_tile(const float *restrict tile, float *restrict out) {
#ifdef __AVX512F__
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(tile + 16 * i);
    for (int i = 0; i < 16; i += 2)  // pairs of rows interleaved
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks transposed inside each 128-bit quarter
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44), r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44), r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {  // then the quarters: column c + 4k gathers quarter k of each group
        const __m512 low01 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), high01 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
        const __m512 low23 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44), high23 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        _mm512_storeu_ps(out + 16 * c, _mm512_shuffle_f32x4(low01, low23, 0x88));
        _mm512_storeu_ps(out + 16 * (c + 4), _mm512_shuffle_f32x4(low01, low23, 0xDD));
        _mm512_storeu_ps(out + 16 * (c + 8), _mm512_shuffle_f32x4(high01, high23, 0x88));
        _mm512_storeu_ps(out + 16 * (c + 12), _mm512_shuffle_f32x4(high01, high23, 0xDD));
    }
#else
    for (int i = 0; i < TILE; i++)
        for (int j = 0; j < TILE; j++) out[j * TILE + i] = tile[i * TILE + j];
#endif
}

#endif
