// The optimiser (docs/maths.md "Optimiser and schedule"): the learning-rate
// schedule as a pure function of the step, per-tensor weight decay chosen by
// name patterns, global-norm gradient clipping and the Adam update over the
// parameter block. Everything here is deterministic for any thread count.
#pragma once
#include <stdint.h>
#include <stddef.h>

#include "../core/config.h"
#include "../model/params.h"

// ---- schedule (schedule.c) ----

typedef enum { SCHED_RSQRT, SCHED_COSINE, SCHED_LINEAR, SCHED_CONSTANT } SchedDecay;

// SchedDecay for a schedule.decay name, or -1 when unknown.
int sched_decay_kind(const char *name);

// Learning rate at 0-based `step` (big_vision's create_learning_rate_schedule):
// base c->lr shaped by c->decay after c->warmup_steps, times a linear warmup
// from 0, times a linear cooldown to 0 over the last c->cooldown_steps of
// c->steps. Reads lr, steps, warmup_steps, decay, timescale, cooldown_steps.
double sched_lr(const Config *c, long step);

// ---- weight decay (wd.c) ----

// WdRule, WD_PATTERN and WD_MAX_RULES are config.h's (Config holds the
// parsed optim.wd).

// Parses optim.wd, "pattern:value, pattern:value" (whitespace around entries,
// patterns and values is ignored; a blank spec means no decay). Returns the
// number of rules, or -1 with a message naming optim.wd and the entry in err.
int wd_parse(const char *spec, WdRule *rules, int max_rules, char *err, size_t errlen);

// 1 when the whole of `name` matches `pattern` ('*' matches any run of
// characters, '/' included; every other character matches itself).
int wd_glob_match(const char *pattern, const char *name);

// out[i] = value of the FIRST rule whose pattern matches tensor i, else 0.
// out has pt->n entries.
void wd_per_tensor(const WdRule *rules, int n, const ParamTable *pt, float *out);

// ---- clipping (clip.c) ----

// L2 norm of x (n), accumulated in double.
double clip_l2_norm(const float *x, size_t n);
// Its square (sum of squares in double), for norms over several pieces.
double clip_l2_sumsq(const float *x, size_t n);

// Returns the global L2 norm of grads (n) before clipping; when max_norm > 0
// and the norm exceeds it, scales grads in place so the norm is max_norm.
double clip_global_norm(float *grads, size_t n, double max_norm);

// The factor clipping multiplies gradients by: max_norm / norm when max_norm
// > 0 and norm > max_norm, else 1. Passed to adam_update as gscale, it clips
// without a separate pass over the gradients (bit-identical to
// clip_global_norm followed by adam_update with gscale 1).
float clip_factor(double norm, double max_norm);

// ---- Adam (adam.c) ----

// One Adam step with decoupled weight decay (vmoe), for every tensor of pt:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr * (mhat / (sqrt(vhat) + eps) + wd[i] p),
//   mhat = m / (1-b1^t), vhat = v / (1-b2^t).
// params, grads, m, v are blocks laid out by pt (pt->total floats); wd has
// pt->n entries (wd_per_tensor); t is the 1-based update count; every
// gradient is first multiplied by gscale (clip_factor, or 1). The padding
// between tensors is never read or written.
void adam_update(float *params, const float *grads, float *m, float *v,
                 const ParamTable *pt, const float *wd, double lr, double b1,
                 double b2, double eps, long t, float gscale);

// adam_update, and every gradient of pt's tensors is set to 0 once read, in
// the same pass: a training step can then skip vit_zero_grad (a separate
// pass over all gradients) as long as the gradients were zero before its
// first step (vit_alloc zeroes them) and nothing else writes them between
// this update and the next backward. Bit-identical params, m and v.
void adam_update_zero(float *params, float *grads, float *m, float *v,
                      const ParamTable *pt, const float *wd, double lr, double b1,
                      double b2, double eps, long t, float gscale);

// ---- the optimiser's state (adam.c), as train and bench hold it ----

typedef struct {
    float *m, *v;             // Adam's moments, laid out as the parameter block (pt->total)
    float *wd;                // (pt->n) weight decay of each tensor, from optim.wd
} Optim;

// Zero moments for pt and every tensor's decay from c->wd_rules (optim.wd).
void optim_init(Optim *o, const ParamTable *pt, const Config *c);
void optim_zero(Optim *o, const ParamTable *pt);
void optim_free(Optim *o);
// adam_update_zero with c's b1, b2, eps: update `step` (1-based) at lr, every
// gradient times gscale (clipping, 1/W, 1/micro-steps); leaves grads zero.
// With half not NULL, the same pass also writes half[i] = the bf16 of every
// updated parameter (gemm_bf16_of): the model's bf16 copy (Vit.wh) then
// needs no conversion pass before the next forward.
void optim_step(Optim *o, float *params, float *grads, uint16_t *half, const ParamTable *pt,
                const Config *c, double lr, long step, float gscale);
