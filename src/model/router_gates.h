// What the sparse routers (Tokens Choice, Experts Choice) share: vmoe's noisy
// gates, a slot map of whole tokens (moe.h helpers) and their gradients.
//   logits = y @ Wr (T,E), T = B*N tokens, Wr = Router/dense/kernel (D,E)
//   training: noisy = logits + (noise_std / E) * z, z ~ N(0,1) a pure function
//             of (seed, step, layer, global token index); else noisy = logits
//   gates = softmax_e(noisy): selection and combine weights
//   clean = softmax_e(logits): Tokens Choice's importance loss (as vmoe)
#pragma once
#include "moe.h"

typedef struct {
    float *logits;                  // (T,E)
    float *gates;                   // (T,E)
    float *clean;                   // (T,E)
    float *z;                       // (T,E) the standard normal draws (when noisy)
    int *tok;                       // (E*R) slot map: local token of each expert row, or -1
    float *wt;                      // (E*R) its combine weight (the gate)
    int *choice;                    // (T,2) Tokens Choice: row of each choice, or -1 if dropped
    int *choice_e;                  // (T,2) and its expert
    int *noisy;                     // 1: noise was added in the last forward
} GateActs;

typedef struct {
    float key;                      // top-1 gate (Tokens Choice) or gate (Experts Choice)
    int t;                          // local token index
} GateKey;

typedef struct {
    float *dgates;                  // (T,E) d/d gates
    float *dclean;                  // (T,E) d/d clean (auxiliary loss)
    float *dlogits;                 // (T,E)
    float *dwt;                     // (E*R)
    GateKey *order;                 // (T) per-group token order and sort keys
    int *fill;                      // (nG*E) rows filled per group and expert
} GateScratch;

// Buffer rows per expert and group (vmoe's compute_capacity): with k > 0
// (Tokens Choice) ceil(G*N*k*cf/E), else (Experts Choice) round(G*N*cf/E),
// then up to a multiple of moe.capacity_multiple_of, at least 1.
int gates_capacity(const Config *c, int N, int k);
// The router FLOPs per image: logits (N x E x D) and the weighted combine
// (one multiply-add per buffer row and feature).
double gates_flops(MoeDims d);

size_t gate_acts_floats(MoeDims d);
size_t gate_scratch_floats(MoeDims d);
GateActs gate_acts(float *p, MoeDims d);
GateScratch gate_scratch(float *p, MoeDims d);

// The logits, noise, gates and clean gates of every token (see above).
void gates_forward(GateActs *g, const float *y, const float *wr, MoeDims d, const MoeCtx *c);
// Tokens [t0, t1) of group q: its images [q*G, min(B, (q+1)*G)).
void gates_group_tokens(MoeDims d, int q, int *t0, int *t1);

// The combine half, shared: out (+)= scatter of ys with the gates as weights;
// backward gives dys and d gates per row.
void gates_combine(float *out, const MoeActs *a, MoeDims d, int accumulate);
void gates_combine_backward(MoeScratch *s, const float *dout, const MoeActs *a, MoeDims d);
// The dispatch half's backward: dgates from the rows' combine-weight grads,
// plus s->dclean (which the router filled, or zeroed) and any dlogits the
// router already put in gs->dlogits (added to); then through the softmaxes
// into dy (B,N,D) += dlogits @ Wr^T and dWr += y^T @ dlogits, and dy += the
// gathered tokens' gradients.
void gates_backward(float *dy, float *dwr, MoeScratch *s, const MoeActs *a, const float *y,
                    const float *wr, MoeDims d);
