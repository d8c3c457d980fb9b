// The MoE block shared by every router (see moe.h): sizing and carving of the
// saved state, the expert MLPs, the all-to-all exchange, the router list, and
// the gather/scatter helpers of routers that send whole tokens.
#include "moe.h"

#include <string.h>

#include "../dist/dist.h"
#include "layers.h"

extern const MoeRouter moe_router_soft, moe_router_tokens_choice, moe_router_experts_choice,
    moe_router_identity;

const MoeRouter *moe_router_find(const char *name) {
    const MoeRouter *all[] = {&moe_router_soft, &moe_router_tokens_choice,
                              &moe_router_experts_choice, &moe_router_identity};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (!strcmp(all[i]->name, name)) return all[i];
    return NULL;
}

static size_t rnd(size_t n) { return (n + 15) / 16 * 16; }

MoeDims moe_dims_local(MoeDims d) {
    if (d.W < 1) d.W = 1;
    if (d.El < 1) d.El = d.E / d.W;
    if (d.G < 1) d.G = 1;
    if (!d.router) d.router = &moe_router_soft;
    return d;
}

int moe_groups(MoeDims d) {
    d = moe_dims_local(d);
    return (d.B + d.G - 1) / d.G;
}

size_t moe_rows(MoeDims d) { return (size_t)moe_groups(d) * d.P; }

// The expert tensors are E*R rows on either side of the exchange (El*W = E);
// the expert-side copies exist only with W > 1.
size_t moe_acts_floats(MoeDims d) {
    d = moe_dims_local(d);
    size_t xd = rnd((size_t)d.E * moe_rows(d) * d.D), xm = rnd((size_t)d.E * moe_rows(d) * d.M);
    return (d.W > 1 ? 4 : 2) * xd + 2 * xm + rnd(d.router->acts_floats(d));
}

void moe_acts_carve(MoeActs *a, float *p, MoeDims d) {
    d = moe_dims_local(d);
    const size_t xd = (size_t)d.E * moe_rows(d) * d.D, xm = (size_t)d.E * moe_rows(d) * d.M;
    memset(a, 0, sizeof *a);
#define TAKE(f, n) (a->f = p, p += rnd(n))
    TAKE(xs, xd); TAKE(ys, xd);
    if (d.W > 1) {
        TAKE(xe, xd); TAKE(ye, xd);
    } else {
        a->xe = a->xs, a->ye = a->ys;
    }
    TAKE(h, xm); TAKE(hg, xm);
    TAKE(r, d.router->acts_floats(d));
#undef TAKE
}

size_t moe_scratch_floats(MoeDims d) {
    d = moe_dims_local(d);
    size_t xd = rnd((size_t)d.E * moe_rows(d) * d.D), xm = rnd((size_t)d.E * moe_rows(d) * d.M);
    return (d.W > 1 ? 5 : 2) * xd + 2 * xm + rnd(d.router->scratch_floats(d));
}

void moe_scratch_carve(MoeScratch *s, float *p, MoeDims d) {
    d = moe_dims_local(d);
    const size_t xd = (size_t)d.E * moe_rows(d) * d.D, xm = (size_t)d.E * moe_rows(d) * d.M;
#define TAKE(f, n) (s->f = p, p += rnd(n))
    TAKE(dxs, xd); TAKE(dys, xd);
    if (d.W > 1) {
        TAKE(dxe, xd); TAKE(dye, xd); TAKE(xch, xd);
    } else {
        s->dxe = s->dxs, s->dye = s->dys, s->xch = NULL;
    }
    TAKE(dh, xm); TAKE(dhg, xm);
    TAKE(r, d.router->scratch_floats(d));
#undef TAKE
}

// Expert parallelism: rows (E,R,D) of this rank's tokens to the rows
// (El,W*R,D) of its experts, through xch (W,El,R,D) as received.
static void to_owners(float *xe, const float *xs, float *xch, MoeDims d) {
    if (d.W == 1) return;  // xe is xs
    const size_t blk = moe_rows(d) * d.D;
    dist_alltoall_ep(xs, xch, (size_t)d.El * blk);
    #pragma omp parallel for schedule(static) collapse(2)
    for (int e = 0; e < d.El; e++)
        for (int r = 0; r < d.W; r++)
            memcpy(xe + ((size_t)e * d.W + r) * blk, xch + ((size_t)r * d.El + e) * blk,
                   blk * sizeof(float));
}

// The way back: expert rows (El,W*R,D) to the rows (E,R,D) of the tokens
// they came from.
static void from_owners(float *ys, const float *ye, float *xch, MoeDims d) {
    if (d.W == 1) return;  // ys is ye
    const size_t blk = moe_rows(d) * d.D;
    #pragma omp parallel for schedule(static) collapse(2)
    for (int r = 0; r < d.W; r++)
        for (int e = 0; e < d.El; e++)
            memcpy(xch + ((size_t)r * d.El + e) * blk, ye + ((size_t)e * d.W + r) * blk,
                   blk * sizeof(float));
    dist_alltoall_ep(xch, ys, (size_t)d.El * blk);
}

// The El local experts, each one MLP over its W*R rows (few-row kernels).
static void experts_forward(MoeActs *a, const MoeW *w, MoeDims d) {
    const int R = d.W * (int)moe_rows(d);
    #pragma omp parallel for schedule(dynamic)
    for (int e = 0; e < d.El; e++) {
        size_t rd = (size_t)e * R * d.D, rm = (size_t)e * R * d.M;
        mlp_forward(a->ye + rd, a->h + rm, a->hg + rm, a->xe + rd, w->w1 + (size_t)e * d.D * d.M,
                    w->b1 + (size_t)e * d.M, w->w2 + (size_t)e * d.M * d.D,
                    w->b2 + (size_t)e * d.D, R, d.D, d.M, 0, 1);
    }
}

static void experts_backward(MoeScratch *s, const MoeW *g, const MoeActs *a, const MoeW *w,
                             MoeDims d) {
    const int R = d.W * (int)moe_rows(d);
    #pragma omp parallel for schedule(dynamic)
    for (int e = 0; e < d.El; e++) {
        size_t rd = (size_t)e * R * d.D, rm = (size_t)e * R * d.M, wo = (size_t)e * d.D * d.M;
        // this expert's input gradient rows, zeroed in cache by the thread that fills them
        memset(s->dxe + rd, 0, (size_t)R * d.D * sizeof(float));
        mlp_backward(s->dxe + rd, g->w1 + wo, g->b1 + (size_t)e * d.M, g->w2 + wo,
                     g->b2 + (size_t)e * d.D, s->dh + rm, s->dhg + rm, s->dye + rd, a->xe + rd,
                     a->h + rm, a->hg + rm, w->w1 + wo, w->w2 + wo, R, d.D, d.M, 1);
    }
}

void moe_forward(float *out, MoeActs *a, MoeScratch *s, const float *y, const MoeW *w,
                 MoeDims d, const MoeCtx *c, int accumulate) {
    d = moe_dims_local(d);
    static const MoeCtx eval_ctx = {0};
    d.router->dispatch(a, s, y, w, d, c ? c : &eval_ctx);
    to_owners(a->xe, a->xs, s->xch, d);
    experts_forward(a, w, d);
    from_owners(a->ys, a->ye, s->xch, d);
    d.router->combine(out, a, s, d, accumulate);
}

void moe_backward(float *dy, const MoeW *g, MoeScratch *s, const float *dout, const MoeActs *a,
                  const float *y, const MoeW *w, MoeDims d) {
    d = moe_dims_local(d);
    d.router->combine_backward(s, dout, a, d);
    to_owners(s->dye, s->dys, s->xch, d);
    experts_backward(s, g, a, w, d);
    from_owners(s->dxs, s->dxe, s->xch, d);
    d.router->dispatch_backward(dy, g, s, a, y, w, d);
}

// ---- token-sending routers: row (e*nG + q)*P + c of the slot map ----

void moe_gather(float *xs, const int *tok, const float *y, MoeDims d) {
    const size_t rows = (size_t)d.E * moe_rows(d);
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *o = xs + r * d.D;
        if (tok[r] < 0) memset(o, 0, (size_t)d.D * sizeof(float));
        else memcpy(o, y + (size_t)tok[r] * d.D, (size_t)d.D * sizeof(float));
    }
}

// Group q's rows only carry group q's tokens, so groups run in parallel and
// each token's sum runs in row order whatever the thread count.
void moe_scatter(float *out, const float *ys, const int *tok, const float *wt, MoeDims d,
                 int accumulate) {
    d = moe_dims_local(d);
    const int nG = moe_groups(d), P = d.P, D = d.D;
    #pragma omp parallel for schedule(static)
    for (int q = 0; q < nG; q++) {
        int b1 = (q + 1) * d.G < d.B ? (q + 1) * d.G : d.B;
        if (!accumulate)
            memset(out + (size_t)q * d.G * d.N * D, 0,
                   (size_t)(b1 - q * d.G) * d.N * D * sizeof(float));
        for (int e = 0; e < d.E; e++)
            for (int c = 0; c < P; c++) {
                size_t r = ((size_t)e * nG + q) * P + c;
                if (tok[r] < 0) continue;
                float *o = out + (size_t)tok[r] * D;
                const float *v = ys + r * D, g = wt[r];
                for (int j = 0; j < D; j++) o[j] += g * v[j];
            }
    }
}

void moe_scatter_backward(float *dys, float *dwt, const float *dout, const float *ys,
                          const int *tok, const float *wt, MoeDims d) {
    const size_t rows = (size_t)d.E * moe_rows(d);
    const int D = d.D;
    #pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *o = dys + r * D;
        if (tok[r] < 0) {
            memset(o, 0, (size_t)D * sizeof(float));
            if (dwt) dwt[r] = 0.0f;
            continue;
        }
        const float *g = dout + (size_t)tok[r] * D, *v = ys + r * D;
        float dot = 0.0f;
        for (int j = 0; j < D; j++) o[j] = wt[r] * g[j], dot += g[j] * v[j];
        if (dwt) dwt[r] = dot;
    }
}

void moe_gather_backward(float *dy, const float *dxs, const int *tok, MoeDims d) {
    d = moe_dims_local(d);
    const int nG = moe_groups(d), P = d.P, D = d.D;
    #pragma omp parallel for schedule(static)
    for (int q = 0; q < nG; q++)
        for (int e = 0; e < d.E; e++)
            for (int c = 0; c < P; c++) {
                size_t r = ((size_t)e * nG + q) * P + c;
                if (tok[r] < 0) continue;
                float *o = dy + (size_t)tok[r] * D;
                const float *v = dxs + r * D;
                for (int j = 0; j < D; j++) o[j] += v[j];
            }
}
