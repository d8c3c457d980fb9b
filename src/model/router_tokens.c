// Tokens Choice (vmoe's NoisyTopExpertsPerItemRouter, "V-MoE", Riquelme et
// al. 2021), per group of G images (T_q = G*N tokens), on router_gates.h's
// noisy gates:
//   - each token picks its top-k experts (k = 1|2) by gate;
//   - priority is k-major (every first choice before any second choice); with
//     moe.bpr (Batch Priority Routing) tokens go by descending top-1 gate
//     (ties by position), otherwise by position;
//   - expert e takes choices while its C = P buffer rows last; a choice past
//     capacity is dropped (a token dropped by all its choices has MoE output 0:
//     the residual carries it);
//   - the combine weight is the gate, not renormalised.
// Auxiliary loss per group, as vmoe (cv(x)^2 = (std(x) / mean(x))^2, std over
// experts with 1/E): importance cv(sum_t clean[t,:])^2 on the clean gates,
// and with noise the load loss cv(mean_t P[t,:])^2 with
// P[t,e] = 1 - Phi((thr_t - logits[t,e]) / sigma), thr_t = the k-th largest
// noisy logit of token t, sigma = noise_std / E. The block's aux is
// importance_weight * mean_q importance + load_weight * mean_q load.
//
// Cost per group: O(T_q E) for the top-k and the losses, O(T_q log T_q)
// for the BPR sort of the group's tokens (no sort of the whole batch), and
// O(k T_q) to fill the buffers.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router_gates.h"

static size_t tc_acts_floats(MoeDims d) { return gate_acts_floats(d); }
static size_t tc_scratch_floats(MoeDims d) { return gate_scratch_floats(d); }

// Descending gate, then ascending token (a total order: the sort is deterministic).
static int by_gate(const void *a, const void *b) {
    const GateKey *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return (x->t > y->t) - (x->t < y->t);
}

// cv^2 of x (E) and its gradient dx (E) (population variance).
static double cv2(const double *x, double *dx, int E) {
    double m = 0, v = 0;
    for (int e = 0; e < E; e++) m += x[e];
    m /= E;
    for (int e = 0; e < E; e++) v += (x[e] - m) * (x[e] - m);
    v /= E;
    for (int e = 0; e < E; e++) dx[e] = 2.0 * (x[e] - m) / (E * m * m) - 2.0 * v / (E * m * m * m);
    return v / (m * m);
}

static double phi(double z) { return exp(-0.5 * z * z) / sqrt(2.0 * M_PI); }

// Routes group q: fills its rows of the slot map and the token choices.
static void route_group(GateActs *g, GateScratch *s, MoeDims d, int q) {
    const int E = d.E, P = d.P, k = d.k, nG = moe_groups(d);
    int t0, t1;
    gates_group_tokens(d, q, &t0, &t1);
    GateKey *order = s->order + t0;
    int *fill = s->fill + (size_t)q * E;
    for (int t = t0; t < t1; t++) {
        const float *gt = g->gates + (size_t)t * E;
        int e1 = 0, e2 = -1;
        for (int e = 1; e < E; e++)
            if (gt[e] > gt[e1]) e1 = e;
        if (k == 2)
            for (int e = 0; e < E; e++)
                if (e != e1 && (e2 < 0 || gt[e] > gt[e2])) e2 = e;
        g->choice_e[2 * t] = e1, g->choice_e[2 * t + 1] = e2;
        order[t - t0] = (GateKey){gt[e1], t};
    }
    if (d.bpr) qsort(order, (size_t)(t1 - t0), sizeof *order, by_gate);
    memset(fill, 0, (size_t)E * sizeof(int));
    for (int e = 0; e < E; e++)
        for (int c = 0; c < P; c++) {
            size_t r = ((size_t)e * nG + q) * P + c;
            g->tok[r] = -1, g->wt[r] = 0.0f;
        }
    for (int kk = 0; kk < k; kk++)
        for (int i = 0; i < t1 - t0; i++) {
            int t = order[i].t, e = g->choice_e[2 * t + kk];
            if (fill[e] >= P) {
                g->choice[2 * t + kk] = -1;
                continue;
            }
            size_t r = ((size_t)e * nG + q) * P + fill[e]++;
            g->tok[r] = t;
            g->wt[r] = g->gates[(size_t)t * E + e];
            g->choice[2 * t + kk] = (int)r;
        }
    if (k == 1) for (int t = t0; t < t1; t++) g->choice[2 * t + 1] = -1;
}

// Importance and load losses of group q (unweighted, into l[0], l[1]); with
// grad, their weighted gradients (scaled by w/nG) into dclean and dlogits.
static void aux_group(const GateActs *g, GateScratch *s, MoeDims d, int q, double *l, int grad) {
    const int E = d.E, nG = moe_groups(d);
    int t0, t1;
    gates_group_tokens(d, q, &t0, &t1);
    double x[E], dx[E];
    for (int e = 0; e < E; e++) x[e] = 0;
    for (int t = t0; t < t1; t++)
        for (int e = 0; e < E; e++) x[e] += g->clean[(size_t)t * E + e];
    l[0] = cv2(x, dx, E);
    if (grad)
        for (int t = t0; t < t1; t++)
            for (int e = 0; e < E; e++)
                s->dclean[(size_t)t * E + e] = (float)(d.imp_w / nG * dx[e]);
    l[1] = 0;
    if (!*g->noisy) return;
    const double sigma = d.noise_std / (double)E, Tq = t1 - t0;
    for (int e = 0; e < E; e++) x[e] = 0;
    for (int t = t0; t < t1; t++) {
        const float *lg = g->logits + (size_t)t * E;
        int ek = g->choice_e[2 * t + d.k - 1];
        double thr = lg[ek] + sigma * g->z[(size_t)t * E + ek];
        for (int e = 0; e < E; e++) x[e] += 0.5 * erfc((thr - lg[e]) / sigma / M_SQRT2) / Tq;
    }
    l[1] = cv2(x, dx, E);
    if (!grad) return;
    for (int t = t0; t < t1; t++) {
        const float *lg = g->logits + (size_t)t * E;
        float *dl = s->dlogits + (size_t)t * E;
        int ek = g->choice_e[2 * t + d.k - 1];
        double thr = lg[ek] + sigma * g->z[(size_t)t * E + ek], dthr = 0;
        for (int e = 0; e < E; e++) {
            // dP/dlogit = phi(z)/sigma, dP/dthr = -phi(z)/sigma
            double gp = d.load_w / nG * dx[e] / Tq * phi((thr - lg[e]) / sigma) / sigma;
            dl[e] += (float)gp;
            dthr -= gp;
        }
        dl[ek] += (float)dthr;  // thr = logits[t,ek] + noise
    }
}

static void tc_metrics(double *m, float *load, const GateActs *g, MoeDims d) {
    const int T = d.B * d.N;
    const size_t R = moe_rows(d);
    long dropped = 0, filled = 0, lmin = -1, lmax = 0;
    for (int t = 0; t < T; t++) {
        int kept = g->choice[2 * t] >= 0 || (d.k == 2 && g->choice[2 * t + 1] >= 0);
        dropped += !kept;
    }
    for (int e = 0; e < d.E; e++) {
        long n = 0;
        for (size_t r = 0; r < R; r++) n += g->tok[(size_t)e * R + r] >= 0;
        load[e] = (float)n;
        filled += n;
        lmin = lmin < 0 || n < lmin ? n : lmin;
        lmax = n > lmax ? n : lmax;
    }
    double mean = (double)filled / d.E;
    m[0] = (double)dropped / T;
    m[1] = (double)filled / ((double)d.E * R);
    m[2] = mean > 0 ? lmin / mean : 0;
    m[3] = mean > 0 ? lmax / mean : 0;
}

static void tc_dispatch(MoeActs *a, MoeScratch *ms, const float *y, const MoeW *w, MoeDims d,
                        const MoeCtx *c) {
    GateActs g = gate_acts(a->r, d);
    GateScratch s = gate_scratch(ms->r, d);
    gates_forward(&g, y, w->wr, d, c);
    const int nG = moe_groups(d);
    double imp = 0, load = 0;
    #pragma omp parallel for schedule(static) reduction(+ : imp, load)
    for (int q = 0; q < nG; q++) {
        double l[2];
        route_group(&g, &s, d, q);
        aux_group(&g, &s, d, q, l, 0);
        imp += l[0], load += l[1];
    }
    a->aux = (d.imp_w * imp + d.load_w * load) / nG;
    moe_gather(a->xs, g.tok, y, d);
    tc_metrics(a->metrics, a->load, &g, d);
    a->metrics[4] = imp / nG;
    a->metrics[5] = load / nG;
}

static void tc_combine(float *out, const MoeActs *a, MoeScratch *s, MoeDims d, int acc) {
    (void)s;
    gates_combine(out, a, d, acc);
}

static void tc_dispatch_backward(float *dy, const MoeW *gw, MoeScratch *ms, const MoeActs *a,
                                 const float *y, const MoeW *w, MoeDims d) {
    GateActs g = gate_acts(a->r, d);
    GateScratch s = gate_scratch(ms->r, d);
    const size_t TE = (size_t)d.B * d.N * d.E;
    memset(s.dlogits, 0, TE * sizeof(float));
    const int nG = moe_groups(d);
    #pragma omp parallel for schedule(static)
    for (int q = 0; q < nG; q++) {
        double l[2];
        aux_group(&g, &s, d, q, l, 1);
    }
    gates_backward(dy, gw->wr, ms, a, y, w->wr, d);
}

static int tc_rows(const Config *c, int N, char *err, size_t n) {
    if (c->k < 1 || c->k > 2 || c->k > c->experts) {
        snprintf(err, n, "moe.k = %d: tokens_choice takes 1 or 2 experts per token (at most "
                 "moe.experts = %d)", c->k, c->experts);
        return -1;
    }
    return gates_capacity(c, N, c->k);
}

const MoeRouter moe_router_tokens_choice = {
    .name = "tokens_choice",
    .params = MOE_PARAMS_GATE,
    .grouped = 1,
    .rows_are = "capacity",
    .rows = tc_rows,
    .flops = gates_flops,
    .metric_names = {"dropped", "buffer_filled", "load_min", "load_max", "importance_loss",
                     "load_loss"},
    .has_aux = 1,
    .acts_floats = tc_acts_floats,
    .scratch_floats = tc_scratch_floats,
    .dispatch = tc_dispatch,
    .combine = tc_combine,
    .combine_backward = gates_combine_backward,
    .dispatch_backward = tc_dispatch_backward,
};
