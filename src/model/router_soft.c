// The soft router (Puigcerver et al. 2023, vmoe's soft router), one group per
// image. For y = LN_1(x)[b] (N,D), slots S = E*P:
//   xn = y * rsqrt(sum_d y^2 + 1e-6), mun = mu * rsqrt(sum_d mu^2 + 1e-6)
//   logits = scale * xn @ mun (N,S); Dw = softmax over n, Cw = softmax over s
//   xs = Dw^T @ y (S,D); ys[e] = Mlp_e(xs[e]) (moe.c); out = Cw @ ys (N,D)
// Slot s = e*P + p of image b is expert row (e*B + b)*P + p (moe.h).
// Ablations (the paper's Appendix A): moe.dispatch = uniform fills every slot
// with the mean of the tokens (Dw = 1/N), moe.combine = uniform gives every
// token the mean of the slot outputs (Cw = 1/S); their logits get no gradient
// from the uniform side.
// Per-image products run in parallel over images with BLAS single-threaded
// inside the region.
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "fastmath.h"
#include "gemm.h"
#include "moe.h"

#define NORM_EPS 1e-6f

static size_t rnd(size_t n) { return (n + 15) / 16 * 16; }

// Saved for backward (carved from MoeActs.r).
typedef struct {
    float *xn;                      // (B,N,D) row-normalised tokens
    float *rn;                      // (B,N) their rsqrt norms
    float *mun;                     // (D,S) column-normalised mu
    float *cn;                      // (S) column rsqrt norms
    float *raw;                     // (B,N,S) xn @ mun, before the scale
    float *dw, *cw;                 // (B,N,S) dispatch / combine weights
} SoftActs;

// Scratch (carved from MoeScratch.r).
typedef struct {
    float *sd0, *sd1;               // (B,S,D) image-major staging
    float *dC, *dD;                 // (B,N,S) grads of combine / dispatch weights
    float *dxn;                     // (B,N,D)
    float *dmun;                    // (D,S)
    float *col;                     // (B,2S) per-image column statistics
} SoftScratch;

static size_t soft_acts_floats(MoeDims d) {
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N;
    return rnd(BN * d.D) + rnd(BN) + rnd((size_t)d.D * S) + rnd(S) + 3 * rnd(BN * S);
}

static SoftActs soft_acts(float *p, MoeDims d) {
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N;
    SoftActs a;
#define TAKE(f, n) (a.f = p, p += rnd(n))
    TAKE(xn, BN * d.D); TAKE(rn, BN); TAKE(mun, (size_t)d.D * S); TAKE(cn, S);
    TAKE(raw, BN * S); TAKE(dw, BN * S); TAKE(cw, BN * S);
#undef TAKE
    return a;
}

static size_t soft_scratch_floats(MoeDims d) {
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N;
    return 2 * rnd((size_t)d.B * S * d.D) + 2 * rnd(BN * S) + rnd(BN * d.D) +
           rnd((size_t)d.D * S) + rnd((size_t)d.B * 2 * S);
}

static SoftScratch soft_scratch(float *p, MoeDims d) {
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N;
    SoftScratch s;
#define TAKE(f, n) (s.f = p, p += rnd(n))
    TAKE(sd0, (size_t)d.B * S * d.D); TAKE(sd1, (size_t)d.B * S * d.D);
    TAKE(dC, BN * S); TAKE(dD, BN * S);
    TAKE(dxn, BN * d.D); TAKE(dmun, (size_t)d.D * S); TAKE(col, (size_t)d.B * 2 * S);
#undef TAKE
    return s;
}

// Image-major (B,S,D) <-> expert-major (E,B*P,D): slot s = e*P + p of image b
// sits at row (e*B + b)*P + p of the expert-major tensor.
static void to_experts(float *em, const float *im, MoeDims d) {
    const size_t blk = (size_t)d.P * d.D;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int e = 0; e < d.E; e++)
        for (int b = 0; b < d.B; b++)
            memcpy(em + ((size_t)e * d.B + b) * blk, im + ((size_t)b * d.E + e) * blk,
                   blk * sizeof(float));
}

static void to_images(float *im, const float *em, MoeDims d) {
    const size_t blk = (size_t)d.P * d.D;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int b = 0; b < d.B; b++)
        for (int e = 0; e < d.E; e++)
            memcpy(im + ((size_t)b * d.E + e) * blk, em + ((size_t)e * d.B + b) * blk,
                   blk * sizeof(float));
}

// Row normalisation of y (R,D): xn = y * r, r = rsqrt(sum y^2 + eps).
static void rownorm_forward(float *xn, float *r, const float *y, int R, int D) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < R; i++) {
        const float *yr = y + (size_t)i * D;
        float ss = 0.0f;
        for (int j = 0; j < D; j++) ss += yr[j] * yr[j];
        float s = 1.0f / sqrtf(ss + NORM_EPS);
        for (int j = 0; j < D; j++) xn[(size_t)i * D + j] = yr[j] * s;
        r[i] = s;
    }
}

// Column normalisation of mu (D,S) over D.
static void colnorm_forward(float *mun, float *c, const float *mu, int D, int S) {
    for (int s = 0; s < S; s++) c[s] = 0.0f;
    for (int j = 0; j < D; j++)
        for (int s = 0; s < S; s++) c[s] += mu[(size_t)j * S + s] * mu[(size_t)j * S + s];
    for (int s = 0; s < S; s++) c[s] = 1.0f / sqrtf(c[s] + NORM_EPS);
    for (int j = 0; j < D; j++)
        for (int s = 0; s < S; s++) mun[(size_t)j * S + s] = mu[(size_t)j * S + s] * c[s];
}

// Dispatch (softmax over the N tokens of each column) and combine (softmax
// over the S slots of each row) weights of one image from logits scale*raw.
// Both walk the (N,S) rows in order so the inner loops run over contiguous
// slots and vectorise; col (2S) holds the running column max and sum.
static void route_image(float *dw, float *cw, float *col, const float *raw, float scale, int N,
                        int S) {
    float *cmax = col, *csum = col + S;
    for (int s = 0; s < S; s++) cmax[s] = scale * raw[s], csum[s] = 0.0f;
    for (int n = 0; n < N; n++) {
        const float *l = raw + (size_t)n * S;
        float *c = cw + (size_t)n * S;
        float mx = scale * l[0];
        for (int s = 0; s < S; s++) mx = fmaxf(mx, scale * l[s]);
        for (int s = 0; s < S; s++) cmax[s] = fmaxf(cmax[s], scale * l[s]);
        float sum = 0.0f;
        for (int s = 0; s < S; s++) sum += (c[s] = fast_expf(scale * l[s] - mx));
        float inv = 1.0f / sum;
        for (int s = 0; s < S; s++) c[s] *= inv;
    }
    for (int n = 0; n < N; n++) {
        const float *l = raw + (size_t)n * S;
        float *w = dw + (size_t)n * S;
        for (int s = 0; s < S; s++) csum[s] += (w[s] = fast_expf(scale * l[s] - cmax[s]));
    }
    for (int s = 0; s < S; s++) csum[s] = 1.0f / csum[s];
    for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++) dw[(size_t)n * S + s] *= csum[s];
}

// Routing health: each token's largest combine weight and each slot's
// largest dispatch weight (means), and each expert's combine mass (the sum of
// its slots' combine weights over the tokens) min and max over the mean.
static void soft_metrics(double *m, float *load, const SoftActs *sa, MoeDims d) {
    const int S = d.E * d.P, N = d.N;
    double cmax = 0, dmax = 0;
    memset(load, 0, (size_t)d.E * sizeof(float));
    for (int b = 0; b < d.B; b++) {
        const float *cw = sa->cw + (size_t)b * N * S, *dw = sa->dw + (size_t)b * N * S;
        for (int n = 0; n < N; n++) {
            float mx = 0;
            for (int s = 0; s < S; s++) {
                mx = fmaxf(mx, cw[(size_t)n * S + s]);
                load[s / d.P] += cw[(size_t)n * S + s];
            }
            cmax += mx;
        }
        for (int s = 0; s < S; s++) {
            float mx = 0;
            for (int n = 0; n < N; n++) mx = fmaxf(mx, dw[(size_t)n * S + s]);
            dmax += mx;
        }
    }
    double lmin = 1e300, lmax = 0, lsum = 0;
    for (int e = 0; e < d.E; e++)
        lmin = fmin(lmin, load[e]), lmax = fmax(lmax, load[e]), lsum += load[e];
    m[0] = cmax / ((double)d.B * N);
    m[1] = dmax / ((double)d.B * S);
    m[2] = lmin / (lsum / d.E);
    m[3] = lmax / (lsum / d.E);
}

static void soft_dispatch(MoeActs *a, MoeScratch *ms, const float *y, const MoeW *w, MoeDims d,
                          const MoeCtx *c) {
    (void)c;
    SoftActs sa = soft_acts(a->r, d);
    SoftScratch s = soft_scratch(ms->r, d);
    const int S = d.E * d.P, N = d.N, D = d.D;
    const float scale = w->scale[0];
    rownorm_forward(sa.xn, sa.rn, y, d.B * N, D);
    colnorm_forward(sa.mun, sa.cn, w->mu, D, S);
    gemm_run(CblasNoTrans, CblasNoTrans, d.B * N, S, D, 1.0f, sa.xn, D, sa.mun,
             S, 0.0f, sa.raw, S);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++) {
        size_t o = (size_t)b * N * S;
        route_image(sa.dw + o, sa.cw + o, s.col + (size_t)b * 2 * S, sa.raw + o, scale, N, S);
        if (d.uniform_dispatch)
            for (size_t i = 0; i < (size_t)N * S; i++) sa.dw[o + i] = 1.0f / (float)N;
        if (d.uniform_combine)
            for (size_t i = 0; i < (size_t)N * S; i++) sa.cw[o + i] = 1.0f / (float)S;
        // slots (S,D) = Dw^T (S,N) @ y (N,D)
        gemm_run(CblasTrans, CblasNoTrans, S, D, N, 1.0f, sa.dw + o, S,
                 y + (size_t)b * N * D, D, 0.0f, s.sd0 + (size_t)b * S * D, D);
    }
    to_experts(a->xs, s.sd0, d);
    a->aux = 0;
    soft_metrics(a->metrics, a->load, &sa, d);
}

static void soft_combine(float *out, const MoeActs *a, MoeScratch *ms, MoeDims d,
                         int accumulate) {
    SoftActs sa = soft_acts(a->r, d);
    SoftScratch s = soft_scratch(ms->r, d);
    const int S = d.E * d.P, N = d.N, D = d.D;
    to_images(s.sd0, a->ys, d);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++)
        // out (N,D) (+)= Cw (N,S) @ ys (S,D)
        gemm_run(CblasNoTrans, CblasNoTrans, N, D, S, 1.0f,
                 sa.cw + (size_t)b * N * S, S, s.sd0 + (size_t)b * S * D, D,
                 accumulate ? 1.0f : 0.0f, out + (size_t)b * N * D, D);
}

static void soft_combine_backward(MoeScratch *ms, const float *dout, const MoeActs *a,
                                  MoeDims d) {
    SoftActs sa = soft_acts(a->r, d);
    SoftScratch s = soft_scratch(ms->r, d);
    const int S = d.E * d.P, N = d.N, D = d.D;
    // combine: out = Cw @ ys
    to_images(s.sd0, a->ys, d);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++) {
        size_t on = (size_t)b * N * S, od = (size_t)b * N * D, os = (size_t)b * S * D;
        if (d.uniform_combine) memset(s.dC + on, 0, (size_t)N * S * sizeof(float));
        else
            gemm_run(CblasNoTrans, CblasTrans, N, S, D, 1.0f, dout + od, D,
                     s.sd0 + os, D, 0.0f, s.dC + on, S);
        gemm_run(CblasTrans, CblasNoTrans, S, D, N, 1.0f, sa.cw + on, S,
                 dout + od, D, 0.0f, s.sd1 + os, D);
    }
    to_experts(ms->dys, s.sd1, d);
}

// dl (N,S) = grad of the logits of one image from the grads of its dispatch
// (dD, softmax over n per column) and combine (dC, softmax over s per row)
// weights; written into dD. col (S) holds the column dot products.
static void route_backward_image(float *dD, float *col, const float *dC, const float *dw,
                                 const float *cw, int N, int S) {
    for (int s = 0; s < S; s++) col[s] = 0.0f;
    for (int n = 0; n < N; n++)
        for (int s = 0; s < S; s++) col[s] += dw[(size_t)n * S + s] * dD[(size_t)n * S + s];
    for (int n = 0; n < N; n++) {
        const float *c = cw + (size_t)n * S, *gc = dC + (size_t)n * S, *w = dw + (size_t)n * S;
        float *d = dD + (size_t)n * S;
        float dot = 0.0f;
        for (int s = 0; s < S; s++) dot += c[s] * gc[s];
        for (int s = 0; s < S; s++) d[s] = w[s] * (d[s] - col[s]) + c[s] * (gc[s] - dot);
    }
}

static void soft_dispatch_backward(float *dy, const MoeW *g, MoeScratch *ms, const MoeActs *a,
                                   const float *y, const MoeW *w, MoeDims d) {
    SoftActs sa = soft_acts(a->r, d);
    SoftScratch s = soft_scratch(ms->r, d);
    const int S = d.E * d.P, N = d.N, D = d.D, BN = d.B * d.N;
    const float scale = w->scale[0];
    // dispatch: xs = Dw^T @ y
    to_images(s.sd0, ms->dxs, d);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++) {
        size_t on = (size_t)b * N * S, od = (size_t)b * N * D, os = (size_t)b * S * D;
        if (d.uniform_dispatch) memset(s.dD + on, 0, (size_t)N * S * sizeof(float));
        else
            gemm_run(CblasNoTrans, CblasTrans, N, S, D, 1.0f, y + od, D,
                     s.sd0 + os, D, 0.0f, s.dD + on, S);
        gemm_run(CblasNoTrans, CblasNoTrans, N, D, S, 1.0f, sa.dw + on, S,
                 s.sd0 + os, D, 1.0f, dy + od, D);
        route_backward_image(s.dD + on, s.col + (size_t)b * 2 * S, s.dC + on, sa.dw + on,
                             sa.cw + on, N, S);
    }
    // logits = scale * raw: d scale = <dl, raw>; d raw = scale * dl
    double ds = 0.0;
    for (size_t i = 0; i < (size_t)BN * S; i++) ds += (double)s.dD[i] * sa.raw[i];
    g->scale[0] += (float)ds;
    cblas_sscal(BN * S, scale, s.dD, 1);
    // raw = xn @ mun
    gemm_run(CblasNoTrans, CblasTrans, BN, D, S, 1.0f, s.dD, S, sa.mun, S,
             0.0f, s.dxn, D);
    gemm_run(CblasTrans, CblasNoTrans, D, S, BN, 1.0f, sa.xn, D, s.dD, S,
             0.0f, s.dmun, S);
    // xn = y * r: dy += r (dxn - xn <dxn, xn>)
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < BN; i++) {
        const float *xn = sa.xn + (size_t)i * D, *dx = s.dxn + (size_t)i * D;
        float dot = 0.0f;
        for (int j = 0; j < D; j++) dot += dx[j] * xn[j];
        float *o = dy + (size_t)i * D;
        for (int j = 0; j < D; j++) o[j] += sa.rn[i] * (dx[j] - xn[j] * dot);
    }
    // mun = mu * c (per column): dmu += c (dmun - mun <dmun, mun>_column)
    for (int sl = 0; sl < S; sl++) {
        float dot = 0.0f;
        for (int j = 0; j < D; j++) dot += s.dmun[(size_t)j * S + sl] * sa.mun[(size_t)j * S + sl];
        for (int j = 0; j < D; j++)
            g->mu[(size_t)j * S + sl] +=
                sa.cn[sl] * (s.dmun[(size_t)j * S + sl] - sa.mun[(size_t)j * S + sl] * dot);
    }
}

// P slots per expert; moe.slots = auto: round(N * capacity_factor / E), at least 1.
static int soft_rows(const Config *c, int N, char *err, size_t n) {
    int P = c->slots > 0 ? c->slots : (int)lround(N * c->capacity_factor / c->experts);
    return P < 1 ? 1 : P;
}

// logits, dispatch and combine: N x S x D multiply-adds each
static double soft_flops(MoeDims d) { return 2.0 * d.N * d.D * d.E * d.P * 3; }

const MoeRouter moe_router_soft = {
    .name = "soft",
    .params = MOE_PARAMS_SLOTS,
    .ablations = 1,
    .rows_are = "slots",
    .rows = soft_rows,
    .flops = soft_flops,
    .metric_names = {"max_combine", "max_dispatch", "load_min", "load_max"},
    .acts_floats = soft_acts_floats,
    .scratch_floats = soft_scratch_floats,
    .dispatch = soft_dispatch,
    .combine = soft_combine,
    .combine_backward = soft_combine_backward,
    .dispatch_backward = soft_dispatch_backward,
};

void moe_soft_weights(const MoeActs *a, MoeDims d, const float **dw, const float **cw) {
    SoftActs sa = soft_acts(a->r, moe_dims_local(d));
    *dw = sa.dw, *cw = sa.cw;
}
