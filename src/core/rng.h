// Seeded random numbers (PCG32 stream + Box-Muller). Deterministic across
// machines: every draw is a pure function of the seed and the draw count.
#pragma once
#include <stdint.h>

typedef struct {
    uint64_t state, inc;
} Rng;

void rng_seed(Rng *r, uint64_t seed, uint64_t stream);
uint32_t rng_u32(Rng *r);
float rng_uniform(Rng *r);                 // [0, 1)
float rng_normal(Rng *r);                  // N(0, 1)
float rng_truncnormal(Rng *r);             // N(0, 1) truncated to [-2, 2]
uint32_t rng_below(Rng *r, uint32_t n);    // uniform integer in [0, n)
