// PCG32 (O'Neill, pcg-random.org, the XSH-RR variant) and normals from it.
#include "rng.h"

#include <math.h>

void rng_seed(Rng *r, uint64_t seed, uint64_t stream) {
    r->state = 0;
    r->inc = (stream << 1u) | 1u;
    rng_u32(r);
    r->state += seed;
    rng_u32(r);
}

uint32_t rng_u32(Rng *r) {
    uint64_t old = r->state;
    r->state = old * 6364136223846793005ULL + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

float rng_uniform(Rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

float rng_normal(Rng *r) {
    // Box-Muller, one value per call keeps the state a pure counter.
    float u1 = ((float)(rng_u32(r) >> 8) + 0.5f) * (1.0f / 16777216.0f);
    float u2 = rng_uniform(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

float rng_truncnormal(Rng *r) {
    for (;;) {
        float z = rng_normal(r);
        if (z >= -2.0f && z <= 2.0f) return z;
    }
}

uint32_t rng_below(Rng *r, uint32_t n) {
    // Lemire's nearly-divisionless method would be faster; rejection is enough.
    uint32_t limit = (uint32_t)(-n) % n;
    for (;;) {
        uint32_t x = rng_u32(r);
        if (x >= limit) return x % n;
    }
}
