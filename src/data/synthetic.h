// A seeded, learnable image-classification task generated in memory: class
// k is a grating at orientation pi*k/K with a per-image random phase,
// frequency jitter and contrast, plus Gaussian pixel noise. It needs no
// files, so the training core can be exercised before any dataset exists.
#pragma once
#include <stdint.h>

// Writes images (B,S,S,C) in [-1,1]-ish range and one-hot targets (B,K) for
// samples first, first+1, ...; sample i is a pure function of (seed, i).
// labels (B) may be NULL.
void synthetic_batch(float *images, float *targets, int *labels, int B, int S, int C, int K,
                     uint64_t seed, uint64_t first);
