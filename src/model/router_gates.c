// The sparse routers' shared gates and slot-map plumbing (router_gates.h).
#include "router_gates.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "../core/rng.h"
#include "gemm.h"

static size_t rnd(size_t n) { return (n + 15) / 16 * 16; }

// ints and floats share the arena (both 4 bytes)
_Static_assert(sizeof(int) == sizeof(float), "slot maps are carved from float arenas");

int gates_capacity(const Config *c, int N, int k) {
    const double t = (double)c->group_size * N;
    const double x = t * (k > 0 ? k : 1) * c->capacity_factor / c->experts;
    long C = k > 0 ? (long)ceil(x - 1e-9) : (long)rint(x);  // rint: half to even, as Python round
    if (C < 1) C = 1;
    C += (c->capacity_multiple_of - C % c->capacity_multiple_of) % c->capacity_multiple_of;
    if (k == 0 && C > (long)t) C = (long)t;  // an expert cannot take more tokens than the group has
    return (int)C;
}

double gates_flops(MoeDims d) {
    const double rows = (double)d.E * d.P / (d.G > 0 ? d.G : 1);
    return 2.0 * d.N * d.D * d.E + 2.0 * rows * d.D;
}

size_t gate_acts_floats(MoeDims d) {
    size_t T = (size_t)d.B * d.N, TE = T * d.E, rows = (size_t)d.E * moe_rows(d);
    return 4 * rnd(TE) + 2 * rnd(rows) + 2 * rnd(2 * T) + 16;
}

GateActs gate_acts(float *p, MoeDims d) {
    size_t T = (size_t)d.B * d.N, TE = T * d.E, rows = (size_t)d.E * moe_rows(d);
    GateActs g;
#define TAKE(f, n) (g.f = (void *)p, p += rnd(n))
    TAKE(logits, TE); TAKE(gates, TE); TAKE(clean, TE); TAKE(z, TE);
    TAKE(tok, rows); TAKE(wt, rows); TAKE(choice, 2 * T); TAKE(choice_e, 2 * T);
    TAKE(noisy, 1);
#undef TAKE
    return g;
}

size_t gate_scratch_floats(MoeDims d) {
    size_t T = (size_t)d.B * d.N, TE = T * d.E, rows = (size_t)d.E * moe_rows(d);
    return 3 * rnd(TE) + rnd(rows) + rnd(2 * T) + rnd((size_t)moe_groups(d) * d.E);
}

GateScratch gate_scratch(float *p, MoeDims d) {
    size_t T = (size_t)d.B * d.N, TE = T * d.E, rows = (size_t)d.E * moe_rows(d);
    GateScratch s;
#define TAKE(f, n) (s.f = (void *)p, p += rnd(n))
    TAKE(dgates, TE); TAKE(dclean, TE); TAKE(dlogits, TE); TAKE(dwt, rows);
    TAKE(order, 2 * T); TAKE(fill, (size_t)moe_groups(d) * d.E);
#undef TAKE
    return s;
}

void gates_group_tokens(MoeDims d, int q, int *t0, int *t1) {
    int b1 = (q + 1) * d.G < d.B ? (q + 1) * d.G : d.B;
    *t0 = q * d.G * d.N;
    *t1 = b1 * d.N;
}

// splitmix64: one well-mixed stream id per (step, layer, global token)
static uint64_t mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static void softmax_row(float *p, const float *l, int E) {
    float mx = l[0], sum = 0.0f;
    for (int e = 1; e < E; e++) mx = fmaxf(mx, l[e]);
    for (int e = 0; e < E; e++) sum += (p[e] = expf(l[e] - mx));
    for (int e = 0; e < E; e++) p[e] /= sum;
}

void gates_forward(GateActs *g, const float *y, const float *wr, MoeDims d, const MoeCtx *c) {
    const int T = d.B * d.N, E = d.E;
    gemm_run(CblasNoTrans, CblasNoTrans, T, E, d.D, 1.0f, y, d.D, wr, E, 0.0f,
             g->logits, E);
    const int noisy = c->train && d.noise_std > 0;
    const float sigma = d.noise_std / (float)E;
    *g->noisy = noisy;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *l = g->logits + (size_t)t * E;
        float *z = g->z + (size_t)t * E, *gt = g->gates + (size_t)t * E, nl[E];
        softmax_row(g->clean + (size_t)t * E, l, E);
        if (!noisy) {
            memcpy(gt, g->clean + (size_t)t * E, (size_t)E * sizeof(float));
            continue;
        }
        if (c->noise) {
            memcpy(z, c->noise + (size_t)t * E, (size_t)E * sizeof(float));
        } else {
            // global token index: image (img0 + b), token n
            uint64_t gi = (uint64_t)(c->img0 + t / d.N) * (uint64_t)d.N + (uint64_t)(t % d.N);
            Rng r;
            rng_seed(&r, c->seed, mix(mix(mix((uint64_t)c->step) ^ (uint64_t)c->layer) ^ gi));
            for (int e = 0; e < E; e++) z[e] = rng_normal(&r);
        }
        for (int e = 0; e < E; e++) nl[e] = l[e] + sigma * z[e];
        softmax_row(gt, nl, E);
    }
}

void gates_combine(float *out, const MoeActs *a, MoeDims d, int accumulate) {
    GateActs g = gate_acts(a->r, d);
    moe_scatter(out, a->ys, g.tok, g.wt, d, accumulate);
}

void gates_combine_backward(MoeScratch *s, const float *dout, const MoeActs *a, MoeDims d) {
    GateActs g = gate_acts(a->r, d);
    GateScratch gs = gate_scratch(s->r, d);
    moe_scatter_backward(s->dys, gs.dwt, dout, a->ys, g.tok, g.wt, d);
}

// dl += p * (dp - <p, dp>) over each row of E
static void softmax_backward_rows(float *dl, const float *p, const float *dp, int T, int E) {
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *pr = p + (size_t)t * E, *gr = dp + (size_t)t * E;
        float dot = 0.0f, *o = dl + (size_t)t * E;
        for (int e = 0; e < E; e++) dot += pr[e] * gr[e];
        for (int e = 0; e < E; e++) o[e] += pr[e] * (gr[e] - dot);
    }
}

void gates_backward(float *dy, float *dwr, MoeScratch *s, const MoeActs *a, const float *y,
                    const float *wr, MoeDims d) {
    GateActs g = gate_acts(a->r, d);
    GateScratch gs = gate_scratch(s->r, d);
    const int T = d.B * d.N, E = d.E;
    const size_t R = moe_rows(d), rows = (size_t)E * R;
    memset(gs.dgates, 0, (size_t)T * E * sizeof(float));
    // a (token, expert) pair holds at most one row: no two rows add to one entry
    for (size_t r = 0; r < rows; r++)
        if (g.tok[r] >= 0) gs.dgates[(size_t)g.tok[r] * E + r / R] += gs.dwt[r];
    softmax_backward_rows(gs.dlogits, g.gates, gs.dgates, T, E);
    softmax_backward_rows(gs.dlogits, g.clean, gs.dclean, T, E);
    // logits = y @ Wr
    gemm_run(CblasNoTrans, CblasTrans, T, d.D, E, 1.0f, gs.dlogits, E, wr, E,
             1.0f, dy, d.D);
    gemm_run(CblasTrans, CblasNoTrans, d.D, E, T, 1.0f, y, d.D, gs.dlogits, E,
             1.0f, dwr, E);
    moe_gather_backward(dy, s->dxs, g.tok, d);
}
