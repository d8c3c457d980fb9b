// The Vision Transformer: its parameter table, weights, saved activations,
// forward and backward. An MoE block (moe.h: any router, shared experts)
// replaces the dense MLP in the blocks moe.layers selects.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../core/config.h"
#include "params.h"
#include "moe.h"

enum { POOL_GAP = 0, POOL_TOK = 1, POOL_MAP = 2 };
#define VIT_MAX_DEPTH 256

typedef struct {
    int img, C, patch, G;            // image size, channels, patch size, grid G = img/patch
    int Np, N;        // patches, tokens (Np + 1 with a cls token)
    int D, H, Dh, M, L, K;
    int pool, learn_pos, qk_norm, loss;
    int E, rows, all_rows;           // experts E, buffer rows per expert and group (MoeDims.P;
                                     // Soft MoE: slots, sparse routers: capacity C), E*rows
                                     // (E = 0: dense)
    const MoeRouter *router;         // moe.router
    int group;                       // images per routing group (moe.group_size; Soft MoE 1)
    int k, bpr, uni_dispatch, uni_combine;
    float noise_std, imp_w, load_w;
    int shared_init;                 // all experts start equal
    int El, ep_size, ep_rank;        // experts held here, expert-group size and rank
    MoeExchange exchange;            // the expert group's all-to-all (MoeGroup)
    int n_moe;                       // number of MoE blocks
    unsigned char is_moe[VIT_MAX_DEPTH];
} VitDims;

// Pointers into the parameter (or gradient) block; NULL when absent.
typedef struct {
    float *ln0_s, *ln0_b;            // (D)
    float *wq, *bq, *wk, *bk, *wv, *bv;  // kernels (D,H,Dh), biases (H,Dh)
    float *qln_s, *kln_s;            // (Dh), qk_norm only
    float *wo, *bo;                  // (H,Dh,D), (D)
    float *ln1_s, *ln1_b;            // (D)
    float *w1, *b1, *w2, *b2;        // (D,M) (M) (M,D) (D), dense blocks
    MoeW moe;                        // MoE blocks instead of w1..b2
} BlockW;

typedef struct {
    float *probe;                    // (1,1,D)
    float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
    float *ln_s, *ln_b;
    float *w1, *b1, *w2, *b2;
} MapW;

typedef struct {
    float *emb_w, *emb_b;            // (P,P,C,D), (D)
    float *cls;                      // (1,1,D), pool=tok
    float *pos;                      // (1,N,D), posemb=learn
    BlockW *blk;                     // L blocks
    float *enc_s, *enc_b;            // (D)
    MapW map;                        // pool=map
    float *head_w, *head_b;          // (D,K), (K)
} VitW;

// Activations saved for backward, per block; all (B,N,.) unless noted.
typedef struct {
    float *x;                        // block input (residual stream)
    float *ln0, *ln0_mean, *ln0_rstd;    // (B,N,D), (B,N), (B,N)
    float *qr, *kr;                  // q, k before qk_norm
    float *qm, *qs, *km, *ks;        // their LayerNorm stats (B,N,H)
    float *q, *k, *v;                // what attention sees
    float *att;                      // (B,H,N,N)
    float *ao;                       // attention output before the projection
    float *xm;                       // x + attention branch
    float *ln1, *ln1_mean, *ln1_rstd;
    float *h, *hg;                   // (B,N,M) before / after gelu, dense blocks
    MoeActs moe;                     // MoE blocks
} BlockActs;

typedef struct {
    float *qin, *q, *k, *v, *att, *ao, *a;   // (B,1,D) (B,1,D) (B,N,D) x2 (B,H,1,N) (B,1,D) (B,D)
    float *ln, *ln_mean, *ln_rstd, *h, *hg;  // (B,D) (B) (B) (B,M) (B,M)
} MapActs;

typedef struct {
    float *patches;                  // (B,Np,P*P*C)
    float *emb;                      // (B,Np,D) patch embeddings
    BlockActs *blk;
    float *xL;                       // (B,N,D) encoder output before encoder_norm
    float *enc, *enc_mean, *enc_rstd;
    MapActs map;
    float *pooled;                   // (B,D) pre-logits
    float *logits;                   // (B,K)
    // backward scratch
    float *dx, *dln, *dq, *dk, *dv, *dqr, *dkr, *dao, *datt, *dh, *dhg;
    float *dmap_small;               // (B,M + 6D) for the MAP head
    float *dpooled, *dlogits;
    MoeScratch moe;                  // shared by the MoE blocks
} VitActs;

typedef struct {
    VitDims d;
    ParamTable pt;
    int B;                           // batch the activations are sized for
    int fwd_B;                       // batch of the last vit_forward (vit_backward's)
    int precision;                   // GEMM_FP32 | GEMM_BF16 (train.precision, gemm.h)
    float *params, *grads;           // one block each, pt.total floats
    uint16_t *wh;                    // bf16 copy of params (bf16 precision; gemm_shadow)
    int wh_ready;                    // wh already equals params (set by whoever wrote both)
    VitW w, g;
    VitActs a;
    float *act_block;                // the single activation allocation
    size_t act_floats;
    float *posemb_fixed;             // (Np,D) for sincos2d
    // Routing context of the next forward (training sets train, step, img0;
    // evaluation leaves train 0: no noise) and what it produced.
    MoeCtx ctx;
    double aux_loss;                 // sum over MoE blocks of their auxiliary losses
    const float *test_noise;         // tests only: (B*N,E) logit noise for every block
} Vit;

// The MoE layer's dimensions for a batch of B images on this rank.
MoeDims vit_moe_dims(const VitDims *d, int B);
// Checks the model keys the config loader cannot judge alone (moe.layers,
// moe.router, slots); returns 0, or -1 with a message naming the key.
int vit_check_config(const Config *c, char *err, size_t errlen);
// Size limits on the config (vit_limits.c), before anything is allocated: no
// dimension above 2^24 and no per-image tensor above 2^31-1 elements, for B
// images per rank. Returns 0, or -1 with err naming the keys.
int vit_check_sizes(const Config *c, int B, char *err, size_t errlen);
// Floats of the activation block for B images (what vit_alloc would take).
size_t vit_act_floats(Vit *m, int B);
// Derives dimensions and the parameter table from the config (no weights)
// for one process holding every expert; dies with vit_check_config's
// message on a bad config.
void vit_build(Vit *m, const Config *c);
// The same for a member of an expert-parallel group: it holds E / g->size
// experts and exchanges expert rows through g->exchange (the model reads no
// global state of its own).
void vit_build_group(Vit *m, const Config *c, const MoeGroup *g);
// Allocates params, grads and activations for batches of up to B images;
// in bf16 also plans every product of a B-image step (gemm.h).
void vit_alloc(Vit *m, int B);
void vit_free(Vit *m);
// Draws the initial parameters (docs/maths.md init rules) from the seed.
void vit_init(Vit *m, uint64_t seed);
// images (B,S,S,C); targets (B,K) or NULL; B at most the batch vit_alloc
// sized the activations for (dies otherwise). Fills logits and pre-logits;
// returns the mean loss (0 without targets), without the auxiliary loss,
// which goes to m->aux_loss (the training objective is their sum).
double vit_forward(Vit *m, const float *images, const float *targets, int B);
// Accumulates d(mean loss + aux loss)/d(params) into m->grads for the B
// images of the vit_forward just before (the same B, targets (B,K)).
void vit_backward(Vit *m, const float *targets, int B);
void vit_zero_grad(Vit *m);
// Forward FLOPs per image (a multiply-add is 2 FLOPs).
double vit_flops_per_image(const VitDims *d);
