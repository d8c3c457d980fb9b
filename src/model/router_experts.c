// Experts Choice (vmoe's NoisyTopItemsPerExpertRouter, Zhou et al. 2022), per
// group of G images (T_q = G*N tokens), on router_gates.h's noisy gates: each
// expert takes the C = P tokens of the group with the largest gate for it
// (ties by position), combine weight = the gate. A token may be taken by
// several experts or by none. No auxiliary loss: every expert is full.
//
// Cost per group: O(E T_q log C) for the selections (a size-C heap per
// expert over the group's tokens; no sort of the batch) and O(E C log C) to
// order each buffer by gate.
#include <stdio.h>
#include <string.h>

#include "router_gates.h"

static size_t ec_acts_floats(MoeDims d) { return gate_acts_floats(d); }
static size_t ec_scratch_floats(MoeDims d) { return gate_scratch_floats(d); }

// x ranks before y: larger gate, then the earlier token.
static int better(GateKey x, GateKey y) { return x.key > y.key || (x.key == y.key && x.t < y.t); }

// Min-heap (the worst selected token on top) of n keys.
static void sift_down(GateKey *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(h[w], h[l])) w = l;
        if (r < n && better(h[w], h[r])) w = r;
        if (w == i) return;
        GateKey t = h[i];
        h[i] = h[w], h[w] = t;
        i = w;
    }
}

static void route_group(GateActs *g, GateScratch *s, MoeDims d, int q) {
    const int E = d.E, nG = moe_groups(d);
    int t0, t1;
    gates_group_tokens(d, q, &t0, &t1);
    const int C = d.P < t1 - t0 ? d.P : t1 - t0;
    GateKey *h = s->order + t0;  // this group's share of the scratch (>= C entries)
    for (int e = 0; e < E; e++) {
        int n = 0;
        for (int t = t0; t < t1; t++) {
            GateKey k = {g->gates[(size_t)t * E + e], t};
            if (n < C) {
                h[n++] = k;
                if (n == C)
                    for (int i = C / 2 - 1; i >= 0; i--) sift_down(h, C, i);
            } else if (better(k, h[0])) {
                h[0] = k;
                sift_down(h, C, 0);
            }
        }
        // pop the worst to the back: the buffer ends up best first
        for (int m = C - 1; m > 0; m--) {
            GateKey t = h[0];
            h[0] = h[m], h[m] = t;
            sift_down(h, m, 0);
        }
        for (int c = 0; c < d.P; c++) {
            size_t r = ((size_t)e * nG + q) * d.P + c;
            g->tok[r] = c < C ? h[c].t : -1;
            g->wt[r] = c < C ? h[c].key : 0.0f;
        }
    }
}

// Fraction of tokens taken by no expert and by at least two; load min/max
// over the mean (rows filled per expert).
static void ec_metrics(double *m, float *load, const GateActs *g, GateScratch *s, MoeDims d) {
    const int T = d.B * d.N;
    const size_t R = moe_rows(d);
    int *cnt = (int *)s->dlogits;  // scratch: forward only
    memset(cnt, 0, (size_t)T * sizeof(int));
    long filled = 0, lmin = -1, lmax = 0;
    for (int e = 0; e < d.E; e++) {
        long n = 0;
        for (size_t r = 0; r < R; r++) {
            int t = g->tok[(size_t)e * R + r];
            if (t >= 0) cnt[t]++, n++;
        }
        load[e] = (float)n;
        filled += n;
        lmin = lmin < 0 || n < lmin ? n : lmin;
        lmax = n > lmax ? n : lmax;
    }
    long none = 0, many = 0;
    for (int t = 0; t < T; t++) none += cnt[t] == 0, many += cnt[t] >= 2;
    double mean = (double)filled / d.E;
    m[0] = (double)none / T;
    m[1] = (double)many / T;
    m[2] = mean > 0 ? lmin / mean : 0;
    m[3] = mean > 0 ? lmax / mean : 0;
}

static void ec_dispatch(MoeActs *a, MoeScratch *ms, const float *y, const MoeW *w, MoeDims d,
                        const MoeCtx *c) {
    GateActs g = gate_acts(a->r, d);
    GateScratch s = gate_scratch(ms->r, d);
    gates_forward(&g, y, w->wr, d, c);
    const int nG = moe_groups(d);
    #pragma omp parallel for schedule(static)
    for (int q = 0; q < nG; q++) route_group(&g, &s, d, q);
    a->aux = 0;
    moe_gather(a->xs, g.tok, y, d);
    ec_metrics(a->metrics, a->load, &g, &s, d);
}

static void ec_combine(float *out, const MoeActs *a, MoeScratch *s, MoeDims d, int acc) {
    (void)s;
    gates_combine(out, a, d, acc);
}

static void ec_dispatch_backward(float *dy, const MoeW *gw, MoeScratch *ms, const MoeActs *a,
                                 const float *y, const MoeW *w, MoeDims d) {
    GateScratch s = gate_scratch(ms->r, d);
    const size_t TE = (size_t)d.B * d.N * d.E;
    memset(s.dlogits, 0, TE * sizeof(float));
    memset(s.dclean, 0, TE * sizeof(float));
    gates_backward(dy, gw->wr, ms, a, y, w->wr, d);
}

static int ec_rows(const Config *c, int N, char *err, size_t n) {
    return gates_capacity(c, N, 0);
}

const MoeRouter moe_router_experts_choice = {
    .name = "experts_choice",
    .params = MOE_PARAMS_GATE,
    .grouped = 1,
    .rows_are = "capacity",
    .rows = ec_rows,
    .flops = gates_flops,
    .metric_names = {"unprocessed", "multi_expert", "load_min", "load_max"},
    .acts_floats = ec_acts_floats,
    .scratch_floats = ec_scratch_floats,
    .dispatch = ec_dispatch,
    .combine = ec_combine,
    .combine_backward = gates_combine_backward,
    .dispatch_backward = ec_dispatch_backward,
};
