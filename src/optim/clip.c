// Global L2 norm of the gradient block and clipping by it.
#include <math.h>

#include "optim.h"

// The sum is split into a fixed number of chunks, not one per thread, so
// the rounding (and hence the logged l2_grads and the clip factor) is the
// same for every thread count.
#define NORM_CHUNKS 64
#define NORM_PARALLEL_MIN 65536

// Sum of squares of x (n) in double; four accumulators break the add
// latency chain the compiler may not reorder on its own.
static double sumsq(const float *x, size_t n) {
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += (double)x[i] * x[i];
        a1 += (double)x[i + 1] * x[i + 1];
        a2 += (double)x[i + 2] * x[i + 2];
        a3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++) a0 += (double)x[i] * x[i];
    return (a0 + a1) + (a2 + a3);
}

double l2_norm(const float *x, size_t n) { return sqrt(l2_sumsq(x, n)); }

double l2_sumsq(const float *x, size_t n) {
    double part[NORM_CHUNKS];
    size_t chunk = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
#pragma omp parallel for schedule(static) if (n >= NORM_PARALLEL_MIN)
    for (int c = 0; c < NORM_CHUNKS; c++) {
        size_t lo = (size_t)c * chunk, hi = lo + chunk;
        if (lo > n) lo = n;
        if (hi > n) hi = n;
        part[c] = sumsq(x + lo, hi - lo);
    }
    double s = 0;
    for (int c = 0; c < NORM_CHUNKS; c++) s += part[c];
    return s;
}

float clip_factor(double norm, double max_norm) {
    return max_norm > 0 && norm > max_norm ? (float)(max_norm / norm) : 1.0f;
}

double clip_global_norm(float *grads, size_t n, double max_norm) {
    double norm = l2_norm(grads, n);
    if (max_norm > 0 && norm > max_norm) {
        float scale = clip_factor(norm, max_norm);
#pragma omp parallel for schedule(static) if (n >= NORM_PARALLEL_MIN)
        for (size_t i = 0; i < n; i++) grads[i] *= scale;
    }
    return norm;
}
