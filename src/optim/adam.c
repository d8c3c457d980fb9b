// Adam with decoupled, per-tensor weight decay over the parameter block.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"
#include "../model/gemm.h"
#include "optim.h"

// Per-step constants, rounded to float once so every element (and every
// thread) uses the same values.
typedef struct {
    float lr, b1, one_b1, b2, one_b2, eps;
    float c1, c2; // bias corrections 1/(1-b1^t), 1/(1-b2^t)
    float gscale; // gradient multiplier (the clipping factor)
} AdamStep;

// One element: gradient i through the moments into parameter i.
static inline __attribute__((always_inline)) void adam_elem(
    float *restrict p, float *restrict g, float *restrict m, float *restrict v,
    uint16_t *restrict h, size_t i, float wd, AdamStep k, int zero, int half) {
    float gi = g[i] * k.gscale;
    if (zero) g[i] = 0.0f;
    float mi = k.b1 * m[i] + k.one_b1 * gi;
    float vi = k.b2 * v[i] + k.one_b2 * gi * gi;
    float u = (mi * k.c1) / (sqrtf(vi * k.c2) + k.eps);
    m[i] = mi;
    v[i] = vi;
    // Decoupled decay (vmoe): added after Adam's scaling, then times lr.
    p[i] -= k.lr * (u + wd * p[i]);
    if (half) h[i] = gemm_bf16_of(p[i]);
}

// The elements go in blocks of ADAM_BLOCK (a 64-byte line of each array),
// each block prefetching the lines ADAM_AHEAD floats ahead into L2: the
// pass is memory-bound, and the hardware prefetcher alone keeps too few
// reads in flight for the four streams.
#define ADAM_BLOCK 16
#define ADAM_AHEAD 1024

// One tensor of n elements. Called by every thread of the enclosing parallel
// region: the orphaned `omp for` splits the blocks, and `nowait` lets a
// thread move on to the next tensor because tensors never share memory.
// Element-wise float math, so the result does not depend on the split.
// GCC vectorises the block loop (about 2x faster) only under -fno-math-errno,
// since sqrtf may otherwise set errno; v >= 0 here, so that flag is safe.
// With zero set, each gradient is set to 0 once read (adam_update_zero).
static inline __attribute__((always_inline)) void adam_tensor(
    float *restrict p, float *restrict g, float *restrict m, float *restrict v,
    uint16_t *restrict h, size_t n, float wd, AdamStep k, int zero, int half) {
    const size_t nb = (n + ADAM_BLOCK - 1) / ADAM_BLOCK;
#pragma omp for schedule(static) nowait
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * ADAM_BLOCK;
        // prefetches never fault, so running past the tensor is harmless
        __builtin_prefetch(p + i0 + ADAM_AHEAD, 1, 2);
        __builtin_prefetch(g + i0 + ADAM_AHEAD, 1, 2);
        __builtin_prefetch(m + i0 + ADAM_AHEAD, 1, 2);
        __builtin_prefetch(v + i0 + ADAM_AHEAD, 1, 2);
        if (i0 + ADAM_BLOCK <= n)
            for (size_t i = i0; i < i0 + ADAM_BLOCK; i++)
                adam_elem(p, g, m, v, h, i, wd, k, zero, half);
        else
            for (size_t i = i0; i < n; i++) adam_elem(p, g, m, v, h, i, wd, k, zero, half);
    }
}

// adam_update and adam_update_zero; zero is a constant in each caller so
// that the element loop is compiled once with and once without the store.
static inline __attribute__((always_inline)) void adam_all(
    float *params, float *grads, float *m, float *v, uint16_t *half, const ParamTable *pt,
    const float *wd, double lr, double b1, double b2, double eps, long t, float gscale,
    int zero) {
    SM_CHECK(t >= 1, "adam_update: update count t = %ld, must start at 1", t);
    AdamStep k = {
        .lr = (float)lr, .b1 = (float)b1, .one_b1 = (float)(1.0 - b1),
        .b2 = (float)b2, .one_b2 = (float)(1.0 - b2), .eps = (float)eps,
        .c1 = (float)(1.0 / (1.0 - pow(b1, (double)t))),
        .c2 = (float)(1.0 / (1.0 - pow(b2, (double)t))),
        .gscale = gscale,
    };
    // One parallel region for the whole table: a region per tensor would pay
    // a fork/join for each of the many small bias and scale tensors.
#pragma omp parallel
    for (int i = 0; i < pt->n; i++) {
        const ParamSpec *s = &pt->t[i];
        size_t o = s->offset;
        if (half)
            adam_tensor(params + o, grads + o, m + o, v + o, half + o, s->numel, wd[i], k, zero, 1);
        else
            adam_tensor(params + o, grads + o, m + o, v + o, NULL, s->numel, wd[i], k, zero, 0);
    }
}

void adam_update(float *params, const float *grads, float *m, float *v,
                 const ParamTable *pt, const float *wd, double lr, double b1,
                 double b2, double eps, long t, float gscale) {
    // zero = 0: grads is only read
    adam_all(params, (float *)grads, m, v, NULL, pt, wd, lr, b1, b2, eps, t, gscale, 0);
}

void adam_update_zero(float *params, float *grads, float *m, float *v,
                      const ParamTable *pt, const float *wd, double lr, double b1,
                      double b2, double eps, long t, float gscale) {
    adam_all(params, grads, m, v, NULL, pt, wd, lr, b1, b2, eps, t, gscale, 1);
}

void optim_init(Optim *o, const ParamTable *pt, const Config *c) {
    o->m = sm_aligned(pt->total * sizeof(float));
    o->v = sm_aligned(pt->total * sizeof(float));
    optim_zero(o, pt);
    o->wd = sm_malloc((size_t)pt->n * sizeof(float));
    wd_per_tensor(c->wd_rules, c->n_wd, pt, o->wd);  // optim.wd, parsed by config_load
}

void optim_zero(Optim *o, const ParamTable *pt) {
    memset(o->m, 0, pt->total * sizeof(float));
    memset(o->v, 0, pt->total * sizeof(float));
}

void optim_free(Optim *o) {
    free(o->m), free(o->v), free(o->wd);
    *o = (Optim){0};
}

void optim_step(Optim *o, float *params, float *grads, uint16_t *half, const ParamTable *pt,
                const Config *c, double lr, long step, float gscale) {
    adam_all(params, grads, o->m, o->v, half, pt, o->wd, lr, c->b1, c->b2, c->eps, step, gscale,
             1);
}
