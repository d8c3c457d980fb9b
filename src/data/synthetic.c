// Synthetic oriented-grating classification data (see synthetic.h).
#include "synthetic.h"

#include <math.h>
#include <string.h>

#include "../core/rng.h"

void synthetic_batch(float *images, float *targets, int *labels, int B, int S, int C, int K,
                     uint64_t seed, uint64_t first) {
    memset(targets, 0, (size_t)B * K * sizeof(float));
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        Rng r;
        rng_seed(&r, seed, 0x5eed0000ULL + first + (uint64_t)b);
        int k = (int)rng_below(&r, (uint32_t)K);
        double theta = M_PI * k / K;
        double freq = (1.5 + 0.5 * rng_uniform(&r)) / S * 2.0 * M_PI * 2.0;
        double phase = 2.0 * M_PI * rng_uniform(&r);
        double contrast = 0.6 + 0.4 * rng_uniform(&r);
        double ct = cos(theta), st = sin(theta);
        float *img = images + (size_t)b * S * S * C;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                double v = contrast * sin(freq * (x * ct + y * st) + phase);
                for (int c = 0; c < C; c++)
                    img[((size_t)y * S + x) * C + c] = (float)v + 0.5f * rng_normal(&r);
            }
        targets[(size_t)b * K + k] = 1.0f;
        if (labels) labels[b] = k;
    }
}
