// The kernels the ViT is built from, each forward beside its backward.
// Letters (docs/maths.md): B images, N tokens, D width, H heads, Dh = D/H,
// M mlp width, K classes, R = rows of a flattened (B*N, ...) activation.
// Signatures follow llm.c: outputs, saved-for-backward, inputs, weights, sizes.
// Rule: every backward ACCUMULATES (+=) into its parameter gradients and
// layernorm_backward into its input gradient too (the residual stream's).
// The other input gradients are WRITTEN (products with beta 0), so the step
// never zeroes a buffer only to add into it; dense_backward, whose input
// gradient the q/k/v products share, takes acc (1 adds, 0 writes). A NULL
// gradient pointer means "not needed" and skips that work.
#pragma once
#include <stddef.h>

// out (R,Dout) = inp (R,Din) @ w (Din,Dout) + b (Dout); if accumulate, out += instead.
void dense_forward(float *out, const float *inp, const float *w, const float *b,
                   int R, int Din, int Dout, int accumulate);
// dinp (R,Din) += dout @ w^T (= with !acc); dw (Din,Dout) += inp^T @ dout; db (Dout) += sum_r dout.
void dense_backward(float *dinp, float *dw, float *db, const float *dout,
                    const float *inp, const float *w, int R, int Din, int Dout, int acc);

// The same products for few rows R (kernels.c, the Soft MoE experts): the
// weights are read once, straight from w, instead of packed by sgemm.
// out (R,N) = x (R,K) @ w (K,N) + b (N) (b may be NULL); if accumulate, out += instead.
void fewrow_nn(float *out, const float *x, const float *w, const float *b, int R, int K,
               int N, int accumulate);
// dx (R,K) += dy (R,N) @ w^T, w (K,N); if !accumulate, dx = instead.
void fewrow_nt(float *dx, const float *dy, const float *w, int R, int K, int N,
               int accumulate);

// out (R,C) = (inp - mean) * rstd * w + b, eps 1e-6; b may be NULL (scale only).
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int R, int C);
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                        const float *inp, const float *w, const float *mean,
                        const float *rstd, int R, int C);

// tanh-approximate GELU, element-wise over n values.
void gelu_forward(float *out, const float *inp, size_t n);
// dinp = gelu'(inp) * dout (written).
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

// The MLP block Dense(D,M) . gelu . Dense(M,D), used by the dense blocks, the
// MAP head and every MoE expert. x (R,D); h, hg (R,M) saved (before / after
// gelu); out (R,D) = mlp(x), or out += with accumulate. fewrow selects the
// few-row kernels above for the product inputs (the experts; the same sgemm
// above 128 rows), else dense_forward/dense_backward. At the bf16 precisions
// hg (and dh in backward) hold bfloat16 values in the first half of their
// float buffers (only bf16 products read them), so forward and backward must
// run at the same precision (vit_forward/vit_backward set the model's).
void mlp_forward(float *out, float *h, float *hg, const float *x, const float *w1,
                 const float *b1, const float *w2, const float *b2, int R, int D, int M,
                 int accumulate, int fewrow);
// dx (R,D) = d/dx (written), parameter gradients += ; dh, dhg (R,M) are
// scratch, overwritten. dx may be NULL.
void mlp_backward(float *dx, float *dw1, float *db1, float *dw2, float *db2, float *dh,
                  float *dhg, const float *dout, const float *x, const float *h,
                  const float *hg, const float *w1, const float *w2, int R, int D, int M,
                  int fewrow);

// Multi-head scaled dot-product attention. q (B,Nq,H*Dh), k and v (B,Nk,H*Dh),
// att (B,H,Nq,Nk) saved probabilities, out (B,Nq,H*Dh).
void attention_forward(float *out, float *att, const float *q, const float *k,
                       const float *v, int B, int Nq, int Nk, int H, int Dh);
// dq, dk, dv written; scratch (B,H,Nq,Nk) is overwritten.
void attention_backward(float *dq, float *dk, float *dv, float *scratch,
                        const float *dout, const float *att, const float *q,
                        const float *k, const float *v, int B, int Nq, int Nk,
                        int H, int Dh);

// Patch embedding as im2col + one GEMM. img (B,S,S,C) NHWC; patches (B,G*G,P*P*C)
// saved, flattened in (row, col, channel) order; w (P,P,C,D); out (B,G*G,D).
void patch_forward(float *out, float *patches, const float *img, const float *w,
                   const float *b, int B, int S, int C, int P, int D);
// dimg (B,S,S,C) may be NULL (the images need no gradient in training).
void patch_backward(float *dimg, float *dw, float *db, const float *dout,
                    const float *patches, const float *w, int B, int S, int C,
                    int P, int D);
// Learned position embedding resized from a Go x Go to a Gn x Gn grid:
// in (Go*Go, D), out (Gn*Gn, D), bilinear (fine-tuning at a new resolution).
void posemb_resize(float *out, int Gn, const float *in, int Go, int D);
// big_vision's posemb_sincos_2d on a G x G grid: out (G*G, D), D % 4 == 0.
void posemb_sincos2d(float *out, int G, int D);

// Pooling: out (B,D) from x (B,N,D). gap = mean over tokens, tok = token 0.
void gap_forward(float *out, const float *x, int B, int N, int D);
void gap_backward(float *dx, const float *dout, int B, int N, int D);
void tok_forward(float *out, const float *x, int B, int N, int D);
void tok_backward(float *dx, const float *dout, int B, int N, int D);

// Losses over logits (B,K) and float targets (B,K) (one-hot or multi-hot).
enum { LOSS_SOFTMAX_XENT = 0, LOSS_SIGMOID_XENT = 1 };
// Returns the mean over the batch; per-image losses into losses (B) if not NULL.
double loss_forward(float *losses, const float *logits, const float *targets,
                    int B, int K, int kind);
// dlogits (B,K) += d(mean loss)/d logits.
void loss_backward(float *dlogits, const float *logits, const float *targets,
                   int B, int K, int kind);
