// Patch embedding (im2col + one GEMM), sincos position embedding, pooling.
#include <math.h>
#include <string.h>

#include "layers.h"

static void im2col(float *patches, const float *img, int B, int S, int C, int P) {
    // img (B,S,S,C) -> patches (B,G*G,P*P*C), each patch in (row, col, channel) order
    const int G = S / P;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int b = 0; b < B; b++) {
        for (int gi = 0; gi < G; gi++) {
            for (int gj = 0; gj < G; gj++) {
                float *dst = patches + (((size_t)b * G + gi) * G + gj) * P * P * C;
                for (int r = 0; r < P; r++) {
                    const float *src = img + (((size_t)b * S + gi * P + r) * S + gj * P) * C;
                    memcpy(dst + (size_t)r * P * C, src, (size_t)P * C * sizeof(float));
                }
            }
        }
    }
}

void patch_forward(float *out, float *patches, const float *img, const float *w,
                   const float *b, int B, int S, int C, int P, int D) {
    const int G = S / P;
    im2col(patches, img, B, S, C, P);
    dense_forward(out, patches, w, b, B * G * G, P * P * C, D, 0);
}

void patch_backward(float *dimg, float *dw, float *db, const float *dout,
                    const float *patches, const float *w, int B, int S, int C,
                    int P, int D) {
    const int G = S / P, PPC = P * P * C;
    dense_backward(NULL, dw, db, dout, patches, w, B * G * G, PPC, D, 0);
    if (!dimg) return;
    // Patches do not overlap (stride = size), so col2im is a scatter-add.
    #pragma omp parallel for schedule(static)
    for (int bp = 0; bp < B * G * G; bp++) {
        int b = bp / (G * G), gi = (bp / G) % G, gj = bp % G;
        const float *d = dout + (size_t)bp * D;
        for (int r = 0; r < P; r++)
            for (int c = 0; c < P * C; c++) {
                const float *wr = w + ((size_t)r * P * C + c) * D;
                float acc = 0.0f;
                for (int j = 0; j < D; j++) acc += d[j] * wr[j];
                dimg[(((size_t)b * S + gi * P + r) * S + gj * P) * C + c] += acc;
            }
    }
    (void)PPC;
}

void posemb_sincos2d(float *out, int G, int D) {
    // big_vision posemb_sincos_2d: [sin(x w), cos(x w), sin(y w), cos(y w)],
    // w_i = 10000^(-i/(D/4-1)), x the column and y the row of the patch.
    const int Q = D / 4;
    for (int y = 0; y < G; y++)
        for (int x = 0; x < G; x++) {
            float *o = out + ((size_t)y * G + x) * D;
            for (int i = 0; i < Q; i++) {
                double om = Q > 1 ? pow(10000.0, -(double)i / (Q - 1)) : 1.0;
                o[i] = (float)sin(x * om);
                o[Q + i] = (float)cos(x * om);
                o[2 * Q + i] = (float)sin(y * om);
                o[3 * Q + i] = (float)cos(y * om);
            }
        }
}

void gap_forward(float *out, const float *x, int B, int N, int D) {
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * D;
        for (int j = 0; j < D; j++) o[j] = 0.0f;
        for (int n = 0; n < N; n++) {
            const float *xr = x + ((size_t)b * N + n) * D;
            for (int j = 0; j < D; j++) o[j] += xr[j];
        }
        for (int j = 0; j < D; j++) o[j] /= (float)N;
    }
}

void gap_backward(float *dx, const float *dout, int B, int N, int D) {
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            float *d = dx + ((size_t)b * N + n) * D;
            for (int j = 0; j < D; j++) d[j] += dout[(size_t)b * D + j] / (float)N;
        }
}

void tok_forward(float *out, const float *x, int B, int N, int D) {
    for (int b = 0; b < B; b++)
        memcpy(out + (size_t)b * D, x + (size_t)b * N * D, (size_t)D * sizeof(float));
}

void tok_backward(float *dx, const float *dout, int B, int N, int D) {
    for (int b = 0; b < B; b++)
        for (int j = 0; j < D; j++) dx[(size_t)b * N * D + j] += dout[(size_t)b * D + j];
}

void posemb_resize(float *out, int Gn, const float *in, int Go, int D) {
    // Bilinear with half-pixel centres (jax.image.resize "bilinear", as
    // big_vision resamples position embeddings when fine-tuning at a new
    // resolution); coordinates outside the grid clamp to its edge.
    const double sc = (double)Go / Gn;
    for (int y = 0; y < Gn; y++) {
        double fy = (y + 0.5) * sc - 0.5;
        fy = fy < 0 ? 0 : fy > Go - 1 ? Go - 1 : fy;
        int y0 = (int)fy, y1 = y0 + 1 < Go ? y0 + 1 : y0;
        double wy = fy - y0;
        for (int x = 0; x < Gn; x++) {
            double fx = (x + 0.5) * sc - 0.5;
            fx = fx < 0 ? 0 : fx > Go - 1 ? Go - 1 : fx;
            int x0 = (int)fx, x1 = x0 + 1 < Go ? x0 + 1 : x0;
            double wx = fx - x0;
            const float *a = in + ((size_t)y0 * Go + x0) * D, *b = in + ((size_t)y0 * Go + x1) * D;
            const float *c = in + ((size_t)y1 * Go + x0) * D, *e = in + ((size_t)y1 * Go + x1) * D;
            float *o = out + ((size_t)y * Gn + x) * D;
            for (int j = 0; j < D; j++)
                o[j] = (float)((1 - wy) * ((1 - wx) * a[j] + wx * b[j]) +
                               wy * ((1 - wx) * c[j] + wx * e[j]));
        }
    }
}
