// LayerNorm over the last axis (eps 1e-6, biased variance), optional bias.
#include <math.h>

#include "layers.h"

#define LN_EPS 1e-6f

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int R, int C) {
    // inp, out (R,C); mean, rstd (R)
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const float *x = inp + (size_t)r * C;
        float *o = out + (size_t)r * C;
        // vectorised sums (order fixed by the vector width, not the threads)
        float m = 0.0f;
        #pragma omp simd reduction(+ : m)
        for (int i = 0; i < C; i++) m += x[i];
        m /= (float)C;
        float v = 0.0f;
        #pragma omp simd reduction(+ : v)
        for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
        v /= (float)C;
        float s = 1.0f / sqrtf(v + LN_EPS);
        if (b)
            for (int i = 0; i < C; i++) o[i] = (x[i] - m) * s * w[i] + b[i];
        else
            for (int i = 0; i < C; i++) o[i] = (x[i] - m) * s * w[i];
        mean[r] = m;
        rstd[r] = s;
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int R, int C) {
    if (dinp) {
        #pragma omp parallel for schedule(static)
        for (int r = 0; r < R; r++) {
            const float *x = inp + (size_t)r * C, *d = dout + (size_t)r * C;
            float m = mean[r], s = rstd[r];
            // dxhat = d * w; dx = s * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
            float a = 0.0f, bsum = 0.0f;
            #pragma omp simd reduction(+ : a, bsum)
            for (int i = 0; i < C; i++) {
                float dxh = d[i] * w[i];
                a += dxh;
                bsum += dxh * (x[i] - m) * s;
            }
            a /= (float)C;
            bsum /= (float)C;
            float *dx = dinp + (size_t)r * C;
            for (int i = 0; i < C; i++) {
                float xh = (x[i] - m) * s;
                dx[i] += s * (d[i] * w[i] - a - xh * bsum);
            }
        }
    }
    // Parameter gradients: column blocks per thread, rows in order, so the
    // result does not depend on the number of threads.
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += 32) {
        int c1 = c0 + 32 < C ? c0 + 32 : C;
        float aw[32] = {0}, ab[32] = {0};
        for (int r = 0; r < R; r++) {
            const float *x = inp + (size_t)r * C, *d = dout + (size_t)r * C;
            float m = mean[r], s = rstd[r];
            for (int i = c0; i < c1; i++) {
                aw[i - c0] += d[i] * (x[i] - m) * s;
                ab[i - c0] += d[i];
            }
        }
        for (int i = c0; i < c1; i++) {
            if (dw) dw[i] += aw[i - c0];
            if (db) db[i] += ab[i - c0];
        }
    }
}
