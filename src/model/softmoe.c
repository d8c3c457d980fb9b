// Soft MoE forward and backward (see softmoe.h for the maths and layouts).
// Per-image products run in parallel over images with BLAS single-threaded
// inside the region; the experts run in parallel over experts.
#include "softmoe.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "../dist/dist.h"
#include "fastmath.h"
#include "gemm.h"
#include "layers.h"

#define NORM_EPS 1e-6f

static size_t rnd(size_t n) { return (n + 15) / 16 * 16; }

MoeDims moe_dims_local(MoeDims d) {
    if (d.W < 1) d.W = 1;
    if (d.El < 1) d.El = d.E / d.W;
    return d;
}

// The slot tensors are E*B*P rows on either side of the exchange (El*W = E);
// the expert-side copies exist only with W > 1.
size_t softmoe_acts_floats(MoeDims d) {
    d = moe_dims_local(d);
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N, R = (size_t)d.B * d.P;
    size_t xd = rnd(d.E * R * d.D);
    return rnd(BN * d.D) + rnd(BN) + rnd((size_t)d.D * S) + rnd(S) + 3 * rnd(BN * S) +
           (d.W > 1 ? 4 : 2) * xd + 2 * rnd(d.E * R * d.M);
}

void softmoe_acts_carve(MoeActs *a, float *p, MoeDims d) {
    d = moe_dims_local(d);
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N, R = (size_t)d.B * d.P;
#define TAKE(f, n) (a->f = p, p += rnd(n))
    TAKE(xn, BN * d.D); TAKE(rn, BN); TAKE(mun, (size_t)d.D * S); TAKE(cn, S);
    TAKE(raw, BN * S); TAKE(dw, BN * S); TAKE(cw, BN * S);
    TAKE(xs, d.E * R * d.D); TAKE(ys, d.E * R * d.D);
    if (d.W > 1) {
        TAKE(xe, d.E * R * d.D); TAKE(ye, d.E * R * d.D);
    } else {
        a->xe = a->xs, a->ye = a->ys;
    }
    TAKE(h, d.E * R * d.M); TAKE(hg, d.E * R * d.M);
#undef TAKE
}

size_t softmoe_scratch_floats(MoeDims d) {
    d = moe_dims_local(d);
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N, R = (size_t)d.B * d.P;
    return 2 * rnd((size_t)d.B * S * d.D) + 2 * rnd(BN * S) +
           (d.W > 1 ? 5 : 2) * rnd(d.E * R * d.D) + 2 * rnd(d.E * R * d.M) + rnd(BN * d.D) +
           rnd((size_t)d.D * S) + rnd((size_t)d.B * 2 * S);
}

void softmoe_scratch_carve(MoeScratch *s, float *p, MoeDims d) {
    d = moe_dims_local(d);
    size_t S = (size_t)d.E * d.P, BN = (size_t)d.B * d.N, R = (size_t)d.B * d.P;
#define TAKE(f, n) (s->f = p, p += rnd(n))
    TAKE(sd0, (size_t)d.B * S * d.D); TAKE(sd1, (size_t)d.B * S * d.D);
    TAKE(dC, BN * S); TAKE(dD, BN * S);
    TAKE(dxs, d.E * R * d.D); TAKE(dys, d.E * R * d.D);
    if (d.W > 1) {
        TAKE(dxe, d.E * R * d.D); TAKE(dye, d.E * R * d.D); TAKE(xch, d.E * R * d.D);
    } else {
        s->dxe = s->dxs, s->dye = s->dys, s->xch = NULL;
    }
    TAKE(dh, d.E * R * d.M); TAKE(dhg, d.E * R * d.M);
    TAKE(dxn, BN * d.D); TAKE(dmun, (size_t)d.D * S); TAKE(col, (size_t)d.B * 2 * S);
#undef TAKE
}

// Expert parallelism: slot rows (E,B*P,D) of this rank's images to the rows
// (El,W*B*P,D) of its experts, through xch (W,El,B*P,D) as received.
static void to_owners(float *xe, const float *xs, float *xch, MoeDims d) {
    if (d.W == 1 || gemm_planning()) return;  // xe is xs; planning sends nothing
    const size_t blk = (size_t)d.B * d.P * d.D;
    dist_alltoall_ep(xs, xch, (size_t)d.El * blk);
    #pragma omp parallel for schedule(static) collapse(2)
    for (int e = 0; e < d.El; e++)
        for (int r = 0; r < d.W; r++)
            memcpy(xe + ((size_t)e * d.W + r) * blk, xch + ((size_t)r * d.El + e) * blk,
                   blk * sizeof(float));
}

// The way back: expert rows (El,W*B*P,D) to the slots (E,B*P,D) of the
// images they came from.
static void from_owners(float *ys, const float *ye, float *xch, MoeDims d) {
    if (d.W == 1 || gemm_planning()) return;  // ys is ye
    const size_t blk = (size_t)d.B * d.P * d.D;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int r = 0; r < d.W; r++)
        for (int e = 0; e < d.El; e++)
            memcpy(xch + ((size_t)r * d.El + e) * blk, ye + ((size_t)e * d.W + r) * blk,
                   blk * sizeof(float));
    dist_alltoall_ep(xch, ys, (size_t)d.El * blk);
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

// The El local experts, each on its W*B*P rows. Few rows: fewrow_* (kernels.c)
// read the weights once instead of packing them as sgemm does.
static void experts_forward(MoeActs *a, const MoeW *w, MoeDims d) {
    const int R = d.W * d.B * d.P;
    #pragma omp parallel for schedule(dynamic)
    for (int e = 0; e < d.El; e++) {
        size_t rd = (size_t)e * R * d.D, rm = (size_t)e * R * d.M;
        fewrow_nn(a->h + rm, a->xe + rd, w->w1 + (size_t)e * d.D * d.M, w->b1 + (size_t)e * d.M,
                  R, d.D, d.M, 0);
        gelu_forward(a->hg + rm, a->h + rm, (size_t)R * d.M);
        fewrow_nn(a->ye + rd, a->hg + rm, w->w2 + (size_t)e * d.M * d.D,
                  w->b2 + (size_t)e * d.D, R, d.M, d.D, 0);
    }
}

void softmoe_forward(float *out, MoeActs *a, MoeScratch *s, const float *y, const MoeW *w,
                     MoeDims d, int accumulate) {
    d = moe_dims_local(d);
    const int S = d.E * d.P, N = d.N, D = d.D;
    const float scale = w->scale[0];
    rownorm_forward(a->xn, a->rn, y, d.B * N, D);
    colnorm_forward(a->mun, a->cn, w->mu, D, S);
    gemm_run(CblasNoTrans, CblasNoTrans, d.B * N, S, D, 1.0f, a->xn, D, a->mun,
             S, 0.0f, a->raw, S);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++) {
        size_t o = (size_t)b * N * S;
        route_image(a->dw + o, a->cw + o, s->col + (size_t)b * 2 * S, a->raw + o, scale, N, S);
        // slots (S,D) = Dw^T (S,N) @ y (N,D)
        gemm_run(CblasTrans, CblasNoTrans, S, D, N, 1.0f, a->dw + o, S,
                 y + (size_t)b * N * D, D, 0.0f, s->sd0 + (size_t)b * S * D, D);
    }
    to_experts(a->xs, s->sd0, d);
    to_owners(a->xe, a->xs, s->xch, d);
    experts_forward(a, w, d);
    from_owners(a->ys, a->ye, s->xch, d);
    to_images(s->sd0, a->ys, d);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++)
        // out (N,D) (+)= Cw (N,S) @ ys (S,D)
        gemm_run(CblasNoTrans, CblasNoTrans, N, D, S, 1.0f,
                 a->cw + (size_t)b * N * S, S, s->sd0 + (size_t)b * S * D, D,
                 accumulate ? 1.0f : 0.0f, out + (size_t)b * N * D, D);
}

static void experts_backward(MoeScratch *s, const MoeW *g, const MoeActs *a, const MoeW *w,
                             MoeDims d) {
    const int R = d.W * d.B * d.P;
    // dxe and dhg are written, not accumulated, by fewrow_nt (no memset); dh
    // is zeroed per expert below, by both threads and while in cache.
    #pragma omp parallel for schedule(dynamic)
    for (int e = 0; e < d.El; e++) {
        size_t rd = (size_t)e * R * d.D, rm = (size_t)e * R * d.M;
        size_t wo = (size_t)e * d.D * d.M;
        // weight and bias gradients by sgemm, input gradients by fewrow_nt
        dense_backward(NULL, g->w2 + wo, g->b2 + (size_t)e * d.D, s->dye + rd, a->hg + rm,
                       w->w2 + wo, R, d.M, d.D);
        fewrow_nt(s->dhg + rm, s->dye + rd, w->w2 + wo, R, d.M, d.D, 0);
        memset(s->dh + rm, 0, (size_t)R * d.M * sizeof(float));
        gelu_backward(s->dh + rm, s->dhg + rm, a->h + rm, (size_t)R * d.M);
        dense_backward(NULL, g->w1 + wo, g->b1 + (size_t)e * d.M, s->dh + rm, a->xe + rd,
                       w->w1 + wo, R, d.D, d.M);
        fewrow_nt(s->dxe + rd, s->dh + rm, w->w1 + wo, R, d.D, d.M, 0);
    }
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

void softmoe_backward(float *dy, const MoeW *g, MoeScratch *s, const float *dout,
                      const MoeActs *a, const float *y, const MoeW *w, MoeDims d) {
    d = moe_dims_local(d);
    const int S = d.E * d.P, N = d.N, D = d.D, BN = d.B * d.N;
    const float scale = w->scale[0];
    // combine: out = Cw @ ys
    to_images(s->sd0, a->ys, d);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++) {
        size_t on = (size_t)b * N * S, od = (size_t)b * N * D, os = (size_t)b * S * D;
        gemm_run(CblasNoTrans, CblasTrans, N, S, D, 1.0f, dout + od, D,
                 s->sd0 + os, D, 0.0f, s->dC + on, S);
        gemm_run(CblasTrans, CblasNoTrans, S, D, N, 1.0f, a->cw + on, S,
                 dout + od, D, 0.0f, s->sd1 + os, D);
    }
    to_experts(s->dys, s->sd1, d);
    to_owners(s->dye, s->dys, s->xch, d);
    experts_backward(s, g, a, w, d);
    from_owners(s->dxs, s->dxe, s->xch, d);
    // dispatch: xs = Dw^T @ y
    to_images(s->sd0, s->dxs, d);
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < d.B; b++) {
        size_t on = (size_t)b * N * S, od = (size_t)b * N * D, os = (size_t)b * S * D;
        gemm_run(CblasNoTrans, CblasTrans, N, S, D, 1.0f, y + od, D,
                 s->sd0 + os, D, 0.0f, s->dD + on, S);
        gemm_run(CblasNoTrans, CblasNoTrans, N, D, S, 1.0f, a->dw + on, S,
                 s->sd0 + os, D, 1.0f, dy + od, D);
        route_backward_image(s->dD + on, s->col + (size_t)b * 2 * S, s->dC + on, a->dw + on,
                             a->cw + on, N, S);
    }
    // logits = scale * raw: d scale = <dl, raw>; d raw = scale * dl
    double ds = 0.0;
    for (size_t i = 0; i < (size_t)BN * S; i++) ds += (double)s->dD[i] * a->raw[i];
    g->scale[0] += (float)ds;
    cblas_sscal(BN * S, scale, s->dD, 1);
    // raw = xn @ mun
    gemm_run(CblasNoTrans, CblasTrans, BN, D, S, 1.0f, s->dD, S, a->mun, S,
             0.0f, s->dxn, D);
    gemm_run(CblasTrans, CblasNoTrans, D, S, BN, 1.0f, a->xn, D, s->dD, S,
             0.0f, s->dmun, S);
    // xn = y * r: dy += r (dxn - xn <dxn, xn>)
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < BN; i++) {
        const float *xn = a->xn + (size_t)i * D, *dx = s->dxn + (size_t)i * D;
        float dot = 0.0f;
        for (int j = 0; j < D; j++) dot += dx[j] * xn[j];
        float *o = dy + (size_t)i * D;
        for (int j = 0; j < D; j++) o[j] += a->rn[i] * (dx[j] - xn[j] * dot);
    }
    // mun = mu * c (per column): dmu += c (dmun - mun <dmun, mun>_column)
    for (int sl = 0; sl < S; sl++) {
        float dot = 0.0f;
        for (int j = 0; j < D; j++) dot += s->dmun[(size_t)j * S + sl] * a->mun[(size_t)j * S + sl];
        for (int j = 0; j < D; j++)
            g->mu[(size_t)j * S + sl] +=
                a->cn[sl] * (s->dmun[(size_t)j * S + sl] - a->mun[(size_t)j * S + sl] * dot);
    }
}
