// Small helpers shared by fused_loss.c and fast.c: bfloat16 <-> float32, an exponential that the
// compiler turns into vector instructions, and SplitMix64's mixing function.
#ifndef MINIBERT_CPU_MATH_H
#define MINIBERT_CPU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

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

#endif
