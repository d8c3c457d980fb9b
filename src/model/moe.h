// One MoE block = a router + the shared stacked experts (DESIGN.md "Sparse
// routers and ablations"). The router turns the block input y (B,N,D) into
// expert inputs and, after the experts, combines their outputs back into
// tokens; it may add an auxiliary loss. Everything else is shared by every
// router: the expert MLPs (one mlp_forward/mlp_backward per expert), the
// all-to-all under expert parallelism, the parameter table and checkpoints.
//
// Expert rows. The tokens of a rank are routed in groups of G images (Soft
// MoE: G = 1). Each expert has a buffer of P rows per group (Soft MoE: its P
// slots; Tokens/Experts Choice: the capacity C), so an expert sees
// R = nG*P rows per rank, nG = ceil(B/G) groups, and the expert inputs live
// expert-major, (E, nG*P, D): row (e*nG + q)*P + c is row c of expert e's
// buffer for group q. A buffer row that receives no token is zero and its
// output is ignored.
//
// Expert parallelism (W > 1 ranks in the expert group, El = E/W experts
// each): group rank q owns experts [q*El, (q+1)*El). Their rows are one
// contiguous (El, R, D) block of xs, so one all-to-all hands every owner its
// blocks from all W ranks; they are regrouped to (El, W*R, D) and each local
// expert is one MLP over W*R rows. The outputs go back the same way; the
// backward mirrors it. Every router uses this same exchange.
//
// Adding a router: one file src/model/router_<x>.c that defines
// `const MoeRouter moe_router_<name> = {...}` at the start of a line. The
// Makefile finds every such definition and generates the router list
// (moe_find's table) and the moe.router choices from it (SM_ROUTERS,
// SM_ROUTER_CHOICES in $(BUILD)/gen/moe_routers.h); nothing else is edited.
// Its parameters are one of the kinds below; its rows() sizes the expert
// buffers and checks its own keys.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../core/config.h"

typedef struct MoeRouter MoeRouter;

// The expert-parallel group a model is built for (vit_build_group): this
// process's rank in it, its size, and the all-to-all that sends per_rank
// floats of `send` to every member and receives theirs into `recv`, in rank
// order (under MPI dist_alltoall_ep). {0, 1, NULL}: one process holding
// every expert.
typedef void (*MoeExchange)(const float *send, float *recv, size_t per_rank);
typedef struct {
    int rank, size;
    MoeExchange exchange;
} MoeGroup;

typedef struct {
    int B, N, D, M, E, P;           // P: buffer rows per expert and group (Soft MoE: slots)
    int El, W;                      // local experts, expert-group size (0: E and 1)
    MoeExchange exchange;           // the group's all-to-all (W > 1)
    int G;                          // images per routing group (0: 1)
    const MoeRouter *router;        // NULL: the soft router
    // Router settings (DESIGN.md keys).
    int k;                          // Tokens Choice: experts per token (1|2)
    int bpr;                        // Tokens Choice: batch priority routing
    float noise_std;                // train-time logit noise std = noise_std / E
    float imp_w, load_w;            // auxiliary loss weights (Tokens Choice)
    int uniform_dispatch, uniform_combine;  // Soft MoE ablations
} MoeDims;

// What a forward call needs beyond the shapes: the routing noise is a pure
// function of (seed, step, layer, global token index), so any rank count and
// a resumed run draw the same noise.
typedef struct {
    int train;                      // noise on (training only)
    uint64_t seed;
    long step;
    int layer;
    long img0;                      // global index of this rank's first image in the batch
    const float *noise;             // tests: (B*N,E) standard normal draws instead of the rng
} MoeCtx;

typedef struct {
    float *mu;                      // (D,E,P) = (D,S), soft router
    float *scale;                   // (), soft router
    float *wr;                      // (D,E) Router/dense/kernel, sparse routers
    float *w1, *b1;                 // (E,D,M), (E,M)
    float *w2, *b2;                 // (E,M,D), (E,D)
} MoeW;

#define MOE_NMETRICS 6

// Saved for backward, one set per MoE block.
typedef struct {
    float *xs;                      // (E,R,D) expert inputs of this rank's tokens
    float *xe;                      // (El,W*R,D) rows of this rank's experts (= xs if W = 1)
    float *h, *hg;                  // (El,W*R,M) expert hidden, before / after gelu
    float *ye;                      // (El,W*R,D) expert outputs (= ys if W = 1)
    float *ys;                      // (E,R,D) outputs for this rank's tokens
    float *r;                       // the router's own saved state (router->acts_floats)
    double aux;                     // auxiliary loss of the last forward (weighted)
    double metrics[MOE_NMETRICS];   // routing health of the last forward (router->metric_names)
    float *load;                    // (E) each expert's load in the last forward: rows filled
                                    // (routers that send tokens) or combine mass (soft); the
                                    // trainer sums it over ranks for global load_min/load_max
} MoeActs;

// Shared by all MoE blocks of a model (backward and staging).
typedef struct {
    float *dxs, *dys;               // (E,R,D)
    float *dxe, *dye;               // (El,W*R,D) (= dxs, dys if W = 1)
    float *xch;                     // (W,El,R,D) all-to-all staging (W > 1)
    float *dh, *dhg;                // (El,W*R,M)
    float *r;                       // the router's scratch (router->scratch_floats)
} MoeScratch;

// The router's own tensors (vmoe names), in the parameter table and checkpoints.
typedef enum {
    MOE_PARAMS_NONE,    // none
    MOE_PARAMS_SLOTS,   // Router/mu (D,E,P) and Router/scale (): MoeW.mu, .scale
    MOE_PARAMS_GATE,    // Router/dense/kernel (D,E), bias-free: MoeW.wr
} MoeParams;

struct MoeRouter {
    const char *name;                       // the moe.router value
    const char *metric_names[MOE_NMETRICS]; // NULL-terminated early if fewer
    int has_aux;                            // adds an auxiliary loss
    MoeParams params;                       // its tensors
    int grouped;                            // routes groups of moe.group_size images (else 1)
    int ablations;                          // takes moe.dispatch / moe.combine = uniform
    const char *rows_are;                   // what a buffer row is, for `softmoe params`: "slots", "capacity"
    // Buffer rows per expert and group (P) for a model with N tokens per
    // image; checks the router's own keys: -1 with a message in err.
    int (*rows)(const Config *c, int N, char *err, size_t n);
    // FLOPs per image of the router itself (logits, dispatch, combine), beyond the experts.
    double (*flops)(MoeDims d);
    size_t (*acts_floats)(MoeDims d);
    size_t (*scratch_floats)(MoeDims d);
    // a->xs (E,R,D) from y (B,N,D); sets a->aux and a->metrics; may use s.
    void (*dispatch)(MoeActs *a, MoeScratch *s, const float *y, const MoeW *w, MoeDims d,
                     const MoeCtx *c);
    // out (B,N,D) (+)= the combination of a->ys.
    void (*combine)(float *out, const MoeActs *a, MoeScratch *s, MoeDims d, int accumulate);
    // s->dys (E,R,D) = d/d ys from dout (B,N,D); may keep what dispatch_backward needs in s->r.
    void (*combine_backward)(MoeScratch *s, const float *dout, const MoeActs *a, MoeDims d);
    // dy (B,N,D) += d/dy from s->dxs (and the combine weights' and auxiliary
    // loss's gradients); router parameter gradients g += .
    void (*dispatch_backward)(float *dy, const MoeW *g, MoeScratch *s, const MoeActs *a,
                              const float *y, const MoeW *w, MoeDims d);
};

// The router named `name` (one of SM_ROUTER_CHOICES), or NULL.
const MoeRouter *moe_router_find(const char *name);
// All routers, n of them (the Makefile's generated list).
const MoeRouter *const *moe_routers(int *n);

// Fills El, W, G and router when left 0/NULL.
MoeDims moe_dims_local(MoeDims d);
// Groups per rank and expert rows per rank (R = nG*P).
int moe_groups(MoeDims d);
size_t moe_rows(MoeDims d);
// Floats each structure needs (for one arena carve); carve points it into base.
size_t moe_acts_floats(MoeDims d);
size_t moe_scratch_floats(MoeDims d);
void moe_acts_carve(MoeActs *a, float *base, MoeDims d);
void moe_scratch_carve(MoeScratch *s, float *base, MoeDims d);

// out (B,N,D) = MoE(y), or out += with accumulate (the residual add). w's
// expert tensors hold the El local experts. With W > 1 every rank of the
// expert group must call this with the same B (the all-to-alls pair up).
// c may be NULL (evaluation: no noise).
void moe_forward(float *out, MoeActs *a, MoeScratch *s, const float *y, const MoeW *w,
                 MoeDims d, const MoeCtx *c, int accumulate);
// dy (B,N,D) += d/dy of <dout, out> + a->aux; parameter gradients g += .
void moe_backward(float *dy, const MoeW *g, MoeScratch *s, const float *dout, const MoeActs *a,
                  const float *y, const MoeW *w, MoeDims d);

// ---- helpers for routers that send whole tokens (Tokens/Experts Choice, identity) ----
// A slot map gives every expert row (E*R of them) the local token index
// b*N + n it carries, or -1, and its combine weight.
// xs[row] = y[tok[row]] (0 for -1).
void moe_gather(float *xs, const int *tok, const float *y, MoeDims d);
// out[t] (+)= sum over rows carrying t of wt[row] * ys[row]; in parallel over groups.
void moe_scatter(float *out, const float *ys, const int *tok, const float *wt, MoeDims d,
                 int accumulate);
// dys[row] = wt[row] * dout[tok]; dwt[row] = <dout[tok], ys[row]> (dwt may be NULL).
void moe_scatter_backward(float *dys, float *dwt, const float *dout, const float *ys,
                          const int *tok, const float *wt, MoeDims d);
// dy[tok[row]] += dxs[row].
void moe_gather_backward(float *dy, const float *dxs, const int *tok, MoeDims d);

// The soft router's dispatch and combine weights (B,N,S) of the last forward
// (tests and debugging).
void moe_soft_weights(const MoeActs *a, MoeDims d, const float **dw, const float **cw);
