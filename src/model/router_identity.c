// The identity router (the paper's Appendix A ablation): token i of an image
// goes to slot i (slot s = e*P + p of expert e), weight 1, so S = E*P = N.
// No parameters, no auxiliary loss.
#include <stdio.h>
#include <string.h>

#include "moe.h"

static size_t rnd(size_t n) { return (n + 15) / 16 * 16; }

// The slot map (E*R ints) and its weights (all 1), rebuilt each forward.
static size_t id_acts_floats(MoeDims d) { return 2 * rnd((size_t)d.E * moe_rows(d)); }
static size_t id_scratch_floats(MoeDims d) { return 0; }

static void id_map(MoeActs *a, MoeDims d, int **tok, float **wt) {
    *tok = (int *)a->r;
    *wt = a->r + rnd((size_t)d.E * moe_rows(d));
}

static void id_dispatch(MoeActs *a, MoeScratch *s, const float *y, const MoeW *w, MoeDims d,
                        const MoeCtx *c) {
    (void)s, (void)w, (void)c;
    int *tok;
    float *wt;
    id_map(a, d, &tok, &wt);
    for (int e = 0; e < d.E; e++)
        for (int b = 0; b < d.B; b++)
            for (int p = 0; p < d.P; p++) {
                size_t r = ((size_t)e * d.B + b) * d.P + p;
                tok[r] = b * d.N + e * d.P + p;
                wt[r] = 1.0f;
            }
    moe_gather(a->xs, tok, y, d);
    a->aux = 0;
    memset(a->metrics, 0, sizeof a->metrics);
    for (int e = 0; e < d.E; e++) a->load[e] = (float)d.B * d.P;  // every slot filled
}

static void id_combine(float *out, const MoeActs *a, MoeScratch *s, MoeDims d, int acc) {
    (void)s;
    int *tok;
    float *wt;
    id_map((MoeActs *)a, d, &tok, &wt);
    moe_scatter(out, a->ys, tok, wt, d, acc);
}

static void id_combine_backward(MoeScratch *s, const float *dout, const MoeActs *a, MoeDims d) {
    int *tok;
    float *wt;
    id_map((MoeActs *)a, d, &tok, &wt);
    moe_scatter_backward(s->dys, NULL, dout, a->ys, tok, wt, d);
}

static void id_dispatch_backward(float *dy, const MoeW *g, MoeScratch *s, const MoeActs *a,
                                 const float *y, const MoeW *w, MoeDims d) {
    (void)g, (void)y, (void)w;
    int *tok;
    float *wt;
    id_map((MoeActs *)a, d, &tok, &wt);
    moe_gather_backward(dy, s->dxs, tok, d);
}

// Token i of an image to slot i: E*P must be the N tokens.
static int id_rows(const Config *c, int N, char *err, size_t n) {
    if (c->slots <= 0 || c->experts * c->slots != N) {
        snprintf(err, n, "moe.router = identity sends token i to slot i, so it needs "
                 "moe.experts x moe.slots = %d tokens; got %d x %s", N, c->experts,
                 c->slots > 0 ? "P" : "auto");
        return -1;
    }
    return c->slots;
}

static double id_flops(MoeDims d) { return 0; }

const MoeRouter moe_router_identity = {
    .name = "identity",
    .params = MOE_PARAMS_NONE,
    .rows_are = "slots",
    .rows = id_rows,
    .flops = id_flops,
    .metric_names = {NULL},
    .acts_floats = id_acts_floats,
    .scratch_floats = id_scratch_floats,
    .dispatch = id_dispatch,
    .combine = id_combine,
    .combine_backward = id_combine_backward,
    .dispatch_backward = id_dispatch_backward,
};
