// Dense layers as single sgemm calls, the tanh GELU, and the MLP block built from them.
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastmath.h"
#include "gemm.h"
#include "layers.h"

// out seeded with the bias (or the bias added, with accumulate) so the GEMM
// adds onto it in the same pass; returns the GEMM's beta.
static float seed_bias(float *out, const float *b, int R, int Dout, int accumulate) {
    float beta = accumulate ? 1.0f : 0.0f;
    if (b) {
        // Seed the output with the bias so the GEMM adds onto it (one pass).
        #pragma omp parallel for schedule(static)
        for (int r = 0; r < R; r++) {
            float *o = out + (size_t)r * Dout;
            if (accumulate)
                for (int j = 0; j < Dout; j++) o[j] += b[j];
            else
                memcpy(o, b, (size_t)Dout * sizeof(float));
        }
        beta = 1.0f;
    }
    return beta;
}

void dense_forward(float *out, const float *inp, const float *w, const float *b,
                   int R, int Din, int Dout, int accumulate) {
    // out (R,Dout), inp (R,Din), w (Din,Dout), b (Dout)
    float beta = seed_bias(out, b, R, Dout, accumulate);
    gemm_run(CblasNoTrans, CblasNoTrans, R, Dout, Din, 1.0f, inp, Din, w, Dout,
             beta, out, Dout);
}

void dense_backward(float *dinp, float *dw, float *db, const float *dout,
                    const float *inp, const float *w, int R, int Din, int Dout, int acc) {
    // dout (R,Dout)
    if (dinp)
        gemm_run(CblasNoTrans, CblasTrans, R, Din, Dout, 1.0f, dout, Dout, w, Dout,
                 acc ? 1.0f : 0.0f, dinp, Din);
    if (dw)
        gemm_run(CblasTrans, CblasNoTrans, Din, Dout, R, 1.0f, inp, Din, dout, Dout,
                 1.0f, dw, Dout);
    if (db) {
        // Column-parallel so the sum order does not depend on the thread count.
        #pragma omp parallel for schedule(static)
        for (int j0 = 0; j0 < Dout; j0 += 64) {
            int j1 = j0 + 64 < Dout ? j0 + 64 : Dout;
            float acc[64] = {0};
            for (int r = 0; r < R; r++) {
                const float *d = dout + (size_t)r * Dout;
                for (int j = j0; j < j1; j++) acc[j - j0] += d[j];
            }
            for (int j = j0; j < j1; j++) db[j] += acc[j - j0];
        }
    }
}

#define GELU_C 0.7978845608028654f  // sqrt(2/pi)

// gelu(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3)
static inline float gelu_of(float x) {
    float u = GELU_C * (x + 0.044715f * x * x * x);
    return x / (1.0f + fast_expf(-2.0f * u));
}

void gelu_forward(float *out, const float *inp, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = gelu_of(inp[i]);
}

// d gelu / dx = s + 2 x s (1 - s) du/dx with s = sigmoid(2u)
static inline float gelu_grad(float x) {
    float u = GELU_C * (x + 0.044715f * x * x * x);
    float s = 1.0f / (1.0f + fast_expf(-2.0f * u));
    float du = GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] = gelu_grad(inp[i]) * dout[i];
}

// The MLP at the bf16 precisions: the GELU writes its output (hg) and, in
// backward, its input gradient (dh) straight as bfloat16, into the first half
// of the same float buffers, since only bf16 products read them; no product
// then converts them again (on S/16 these are the largest operands, 4.5 MB
// each per block). Same numbers as rounding the fp32 values. The bias
// gradient db1 sums the fp32 dh values before rounding, per 64-column block
// with rows in order (as dense_backward does), so it does not depend on the
// thread count.
static void gelu_forward_bf16(uint16_t *out, const float *inp, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = gemm_bf16_of(gelu_of(inp[i]));
}

static void gelu_backward_bf16(uint16_t *dh, float *db, const float *dhg, const float *h, int R,
                               int M) {
    #pragma omp parallel for schedule(static)
    for (int j0 = 0; j0 < M; j0 += 64) {
        const int j1 = j0 + 64 < M ? j0 + 64 : M;
        float acc[64] = {0};
        for (int r = 0; r < R; r++) {
            const float *hr = h + (size_t)r * M, *gr = dhg + (size_t)r * M;
            uint16_t *o = dh + (size_t)r * M;
            #pragma omp simd
            for (int j = j0; j < j1; j++) {
                float g = gelu_grad(hr[j]) * gr[j];
                acc[j - j0] += g;
                o[j] = gemm_bf16_of(g);
            }
        }
        if (db)
            for (int j = j0; j < j1; j++) db[j] += acc[j - j0];
    }
}

static void mlp_forward_bf16(float *out, float *h, float *hg, const float *x, const float *w1,
                             const float *b1, const float *w2, const float *b2, int R, int D,
                             int M, int accumulate) {
    uint16_t *hgh = (uint16_t *)hg;
    dense_forward(h, x, w1, b1, R, D, M, 0);
    gelu_forward_bf16(hgh, h, (size_t)R * M);
    float beta = seed_bias(out, b2, R, D, accumulate);
    gemm_run_h(CblasNoTrans, CblasNoTrans, R, D, M, 1.0f, NULL, hgh, M, w2, NULL, D, beta, out, D);
}

static void mlp_backward_bf16(float *dx, float *dw1, float *db1, float *dw2, float *db2,
                              float *dh, float *dhg, const float *dout, const float *x,
                              const float *h, const float *hg, const float *w1, const float *w2,
                              int R, int D, int M) {
    const uint16_t *hgh = (const uint16_t *)hg;
    uint16_t *dhh = (uint16_t *)dh;
    // dw2 += hg^T dout, db2, dhg = dout w2^T
    if (dw2)
        gemm_run_h(CblasTrans, CblasNoTrans, M, D, R, 1.0f, NULL, hgh, M, dout, NULL, D, 1.0f,
                   dw2, D);
    dense_backward(dhg, NULL, db2, dout, NULL, w2, R, M, D, 0);
    gelu_backward_bf16(dhh, db1, dhg, h, R, M);
    // dw1 += x^T dh, dx = dh w1^T
    if (dw1)
        gemm_run_h(CblasTrans, CblasNoTrans, D, M, R, 1.0f, x, NULL, D, NULL, dhh, M, 1.0f, dw1,
                   M);
    if (dx)
        gemm_run_h(CblasNoTrans, CblasTrans, R, D, M, 1.0f, NULL, dhh, M, w1, NULL, M, 0.0f,
                   dx, D);
}

void mlp_forward(float *out, float *h, float *hg, const float *x, const float *w1,
                 const float *b1, const float *w2, const float *b2, int R, int D, int M,
                 int accumulate, int fewrow) {
    // x (R,D), w1 (D,M), w2 (M,D)
    if (!gemm_is_fp32(gemm_precision())) {
        mlp_forward_bf16(out, h, hg, x, w1, b1, w2, b2, R, D, M, accumulate);
        return;
    }
    if (fewrow) fewrow_nn(h, x, w1, b1, R, D, M, 0);
    else dense_forward(h, x, w1, b1, R, D, M, 0);
    gelu_forward(hg, h, (size_t)R * M);
    if (fewrow) fewrow_nn(out, hg, w2, b2, R, M, D, accumulate);
    else dense_forward(out, hg, w2, b2, R, M, D, accumulate);
}

void mlp_backward(float *dx, float *dw1, float *db1, float *dw2, float *db2, float *dh,
                  float *dhg, const float *dout, const float *x, const float *h,
                  const float *hg, const float *w1, const float *w2, int R, int D, int M,
                  int fewrow) {
    // dout (R,D). dhg and dh are written, never zeroed first. Few rows: weight
    // and bias gradients by sgemm, input gradients by fewrow_nt.
    if (!gemm_is_fp32(gemm_precision())) {
        mlp_backward_bf16(dx, dw1, db1, dw2, db2, dh, dhg, dout, x, h, hg, w1, w2, R, D, M);
        return;
    }
    const size_t RM = (size_t)R * M;
    if (fewrow) {
        dense_backward(NULL, dw2, db2, dout, hg, w2, R, M, D, 0);
        fewrow_nt(dhg, dout, w2, R, M, D, 0);
    } else {
        dense_backward(dhg, dw2, db2, dout, hg, w2, R, M, D, 0);
    }
    gelu_backward(dh, dhg, h, RM);
    if (fewrow) {
        dense_backward(NULL, dw1, db1, dh, x, w1, R, D, M, 0);
        if (dx) fewrow_nt(dx, dh, w1, R, D, M, 0);
    } else {
        dense_backward(dx, dw1, db1, dh, x, w1, R, D, M, 0);
    }
}
