// The Soft MoE layer (Puigcerver et al. 2023, vmoe's soft router), one group
// per image. For y = LN_1(x)[b] (N,D), slots S = E*P:
//   xn = y * rsqrt(sum_d y^2 + 1e-6), mun = mu * rsqrt(sum_d mu^2 + 1e-6)
//   logits = scale * xn @ mun (N,S); Dw = softmax over n, Cw = softmax over s
//   xs = Dw^T @ y (S,D); ys[e] = Mlp_e(xs[e]); out = Cw @ ys (N,D)
// Slots live expert-major, (E, B*P, D): expert e's rows from every image are
// one contiguous block, so the experts are E GEMMs over B*P rows.
//
// Expert parallelism (W > 1 ranks in the expert group, El = E/W experts each):
// group rank q owns experts [q*El, (q+1)*El). The slots for those experts are
// one contiguous (El, B*P, D) block of xs, so one all-to-all hands every owner
// its blocks from all W ranks; they are regrouped to (El, W*B*P, D) (expert
// e's rows from rank r at rows r*B*P...) and each local expert is one GEMM
// over W*B*P rows. The outputs go back the same way; backward mirrors it.
#pragma once
#include <stddef.h>

typedef struct {
    int B, N, D, M, E, P;           // S = E*P; B images on this rank
    int El, W;                      // local experts, expert-group size (0: E and 1)
} MoeDims;

typedef struct {
    float *mu;                      // (D,E,P) = (D,S)
    float *scale;                   // ()
    float *w1, *b1;                 // (E,D,M), (E,M)
    float *w2, *b2;                 // (E,M,D), (E,D)
} MoeW;

// Saved for backward, one set per Soft MoE block.
typedef struct {
    float *xn;                      // (B,N,D) row-normalised tokens
    float *rn;                      // (B,N) their rsqrt norms
    float *mun;                     // (D,S) column-normalised mu
    float *cn;                      // (S) column rsqrt norms
    float *raw;                     // (B,N,S) xn @ mun, before the scale
    float *dw, *cw;                 // (B,N,S) dispatch / combine weights
    float *xs;                      // (E,B*P,D) slot inputs of this rank's images
    float *xe;                      // (El,W*B*P,D) rows of this rank's experts (= xs if W = 1)
    float *h, *hg;                  // (El,W*B*P,M) expert hidden, before / after gelu
    float *ye;                      // (El,W*B*P,D) expert outputs (= ys if W = 1)
    float *ys;                      // (E,B*P,D) slot outputs of this rank's images
} MoeActs;

// Shared by all Soft MoE blocks of a model (backward and per-image staging).
typedef struct {
    float *sd0, *sd1;               // (B,S,D) image-major staging
    float *dC, *dD;                 // (B,N,S) grads of combine / dispatch weights
    float *dxs, *dys;               // (E,B*P,D)
    float *dxe, *dye;               // (El,W*B*P,D) (= dxs, dys if W = 1)
    float *xch;                     // (W,El,B*P,D) all-to-all staging (W > 1)
    float *dh, *dhg;                // (El,W*B*P,M)
    float *dxn;                     // (B,N,D)
    float *dmun;                    // (D,S)
    float *col;                     // (B,2S) per-image column statistics
} MoeScratch;

// Fills El and W when left 0 (a single rank holding every expert).
MoeDims moe_dims_local(MoeDims d);
// Floats each structure needs (for one arena carve).
size_t softmoe_acts_floats(MoeDims d);
size_t softmoe_scratch_floats(MoeDims d);
// Points the structure into `base` (which must hold the size above).
void softmoe_acts_carve(MoeActs *a, float *base, MoeDims d);
void softmoe_scratch_carve(MoeScratch *s, float *base, MoeDims d);

// out (B,N,D) = SoftMoE(y), or out += with accumulate (the residual add).
// w's expert tensors hold the El local experts. With W > 1 every rank of the
// expert group must call this with the same B (the all-to-alls pair up).
void softmoe_forward(float *out, MoeActs *a, MoeScratch *s, const float *y, const MoeW *w,
                     MoeDims d, int accumulate);
// dy (B,N,D) += d/dy; parameter gradients g += (g has the MoeW layout).
void softmoe_backward(float *dy, const MoeW *g, MoeScratch *s, const float *dout,
                      const MoeActs *a, const float *y, const MoeW *w, MoeDims d);
