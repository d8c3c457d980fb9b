// Central finite differences for the hand-written backward passes (ggml's
// habit: per-op step, a cap on probed elements). The scalar under test is a
// double-accumulated function of float32 tensors.
#pragma once
#include <math.h>
#include <stddef.h>

typedef double (*GcLossFn)(void *ctx);

// Probes up to max_probe elements of x (evenly strided, always the first and
// last) and returns max |fd - g| / (max_all |g| + floor): the error relative
// to the gradient's scale, so a tiny entry cannot fail on rounding alone.
static inline double gc_check(GcLossFn f, void *ctx, float *x, const float *g, size_t n, float h,
                       int max_probe, double floor) {
    double gmax = 0, err = 0;
    for (size_t i = 0; i < n; i++) gmax = fabs(g[i]) > gmax ? fabs(g[i]) : gmax;
    size_t stride = n <= (size_t)max_probe ? 1 : (n + max_probe - 1) / max_probe;
    for (size_t i = 0; i < n; i += stride) {
        size_t k = (i + stride >= n) ? n - 1 : i;
        float x0 = x[k];
        x[k] = x0 + h;
        double fp = f(ctx);
        x[k] = x0 - h;
        double fm = f(ctx);
        x[k] = x0;
        double fd = (fp - fm) / (2.0 * (double)h);
        double e = fabs(fd - g[k]);
        if (e > err || e != e) err = e != e ? INFINITY : e;
        if (k == n - 1) break;
    }
    return err / (gmax + floor);
}

// Deterministic pseudo-random fill in [-a, a] (xorshift), no Rng dependency.
static inline void gc_fill(float *x, size_t n, float a, unsigned seed) {
    unsigned s = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 17; s ^= s << 5;
        x[i] = a * (2.0f * (float)(s & 0xffffff) / 16777216.0f - 1.0f);
    }
}

static inline double gc_dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}
