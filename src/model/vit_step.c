// ViT forward and backward: the step top to bottom, backward in exact reverse.
#include <string.h>

#include "../core/common.h"
#include "gemm.h"
#include "layers.h"
#include "vit.h"

// Both threads: one thread's stores reach about half the write bandwidth,
// and these buffers (up to 10 MB each) add up to ~0.03 s per S/16 step.
#define ZERO_CHUNK ((size_t)1 << 18)  // floats (1 MB) per task
static void zero(float *p, size_t n) {
    const long nc = (long)((n + ZERO_CHUNK - 1) / ZERO_CHUNK);
    #pragma omp parallel for schedule(static) if (nc > 1)
    for (long c = 0; c < nc; c++) {
        size_t lo = (size_t)c * ZERO_CHUNK, len = n - lo < ZERO_CHUNK ? n - lo : ZERO_CHUNK;
        memset(p + lo, 0, len * sizeof(float));
    }
}

// Tokens into the residual stream: [cls] + patch embeddings + position embedding.
static void embed_tokens(Vit *m, float *x0) {
    const VitDims *d = &m->d;
    const int off = d->pool == POOL_TOK;
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < m->B; b++) {
        for (int n = 0; n < d->N; n++) {
            float *x = x0 + ((size_t)b * d->N + n) * d->D;
            const float *src = n < off ? m->w.cls : m->a.emb + ((size_t)b * d->Np + n - off) * d->D;
            const float *pe = d->learn_pos ? m->w.pos + (size_t)n * d->D
                              : n >= off   ? m->posemb_fixed + (size_t)(n - off) * d->D
                                           : NULL;
            for (int j = 0; j < d->D; j++) x[j] = src[j] + (pe ? pe[j] : 0.0f);
        }
    }
}

static void block_forward(Vit *m, int l, int B, float *out) {
    const VitDims *d = &m->d;
    const BlockW *w = &m->w.blk[l];
    BlockActs *k = &m->a.blk[l];
    const int BN = B * d->N, D = d->D;
    layernorm_forward(k->ln0, k->ln0_mean, k->ln0_rstd, k->x, w->ln0_s, w->ln0_b, BN, D);
    if (d->qk_norm) {
        dense_forward(k->qr, k->ln0, w->wq, w->bq, BN, D, D, 0);
        dense_forward(k->kr, k->ln0, w->wk, w->bk, BN, D, D, 0);
        layernorm_forward(k->q, k->qm, k->qs, k->qr, w->qln_s, NULL, BN * d->H, d->Dh);
        layernorm_forward(k->k, k->km, k->ks, k->kr, w->kln_s, NULL, BN * d->H, d->Dh);
    } else {
        dense_forward(k->q, k->ln0, w->wq, w->bq, BN, D, D, 0);
        dense_forward(k->k, k->ln0, w->wk, w->bk, BN, D, D, 0);
    }
    dense_forward(k->v, k->ln0, w->wv, w->bv, BN, D, D, 0);
    attention_forward(k->ao, k->att, k->q, k->k, k->v, B, d->N, d->N, d->H, d->Dh);
    memcpy(k->xm, k->x, (size_t)BN * D * sizeof(float));
    dense_forward(k->xm, k->ao, w->wo, w->bo, BN, D, D, 1);
    layernorm_forward(k->ln1, k->ln1_mean, k->ln1_rstd, k->xm, w->ln1_s, w->ln1_b, BN, D);
    memcpy(out, k->xm, (size_t)BN * D * sizeof(float));
    if (d->is_moe[l]) {
        MoeDims md = vit_moe_dims(d, B);
        MoeCtx c = m->ctx;
        c.layer = l;
        c.noise = m->test_noise;
        moe_forward(out, &k->moe, &m->a.moe, k->ln1, &w->moe, md, &c, 1);
        m->aux_loss += k->moe.aux;
        return;
    }
    mlp_forward(out, k->h, k->hg, k->ln1, w->w1, w->b1, w->w2, w->b2, BN, D, d->M, 1, 0);
}

static void map_forward(Vit *m, int B) {
    const VitDims *d = &m->d;
    const MapW *w = &m->w.map;
    MapActs *p = &m->a.map;
    const int D = d->D;
    for (int b = 0; b < B; b++) memcpy(p->qin + (size_t)b * D, w->probe, D * sizeof(float));
    dense_forward(p->q, p->qin, w->wq, w->bq, B, D, D, 0);
    dense_forward(p->k, m->a.enc, w->wk, w->bk, B * d->N, D, D, 0);
    dense_forward(p->v, m->a.enc, w->wv, w->bv, B * d->N, D, D, 0);
    attention_forward(p->ao, p->att, p->q, p->k, p->v, B, 1, d->N, d->H, d->Dh);
    dense_forward(p->a, p->ao, w->wo, w->bo, B, D, D, 0);
    layernorm_forward(p->ln, p->ln_mean, p->ln_rstd, p->a, w->ln_s, w->ln_b, B, D);
    memcpy(m->a.pooled, p->a, (size_t)B * D * sizeof(float));
    mlp_forward(m->a.pooled, p->h, p->hg, p->ln, w->w1, w->b1, w->w2, w->b2, B, D, d->M, 1, 0);
}

double vit_forward(Vit *m, const float *images, const float *targets, int B) {
    const VitDims *d = &m->d;
    VitActs *a = &m->a;
    const int BN = B * d->N;
    SM_CHECK(B >= 1 && B <= m->B, "vit_forward: batch %d, but the activations hold %d images "
             "(vit_alloc)", B, m->B);
    int saveB = m->B;
    m->B = B;
    m->fwd_B = B;
    gemm_set_precision(m->precision);
    if (!gemm_is_fp32(m->precision)) {
        // the weights in bf16 once for the forward and the backward after it
        // (the products read them in place of converting on every call)
        if (!m->wh) m->wh = sm_aligned(m->pt.total * sizeof(uint16_t));
        if (!m->wh_ready) gemm_to_bf16(m->wh, m->params, m->pt.total);
        m->wh_ready = 0;  // one forward's: the params may change after it
        gemm_shadow(m->params, m->pt.total, m->wh);
    }
    m->aux_loss = 0;
    patch_forward(a->emb, a->patches, images, m->w.emb_w, m->w.emb_b, B, d->img, d->C, d->patch, d->D);
    embed_tokens(m, a->blk[0].x);
    for (int l = 0; l < d->L; l++)
        block_forward(m, l, B, l + 1 < d->L ? a->blk[l + 1].x : a->xL);
    layernorm_forward(a->enc, a->enc_mean, a->enc_rstd, a->xL, m->w.enc_s, m->w.enc_b, BN, d->D);
    if (d->pool == POOL_GAP) gap_forward(a->pooled, a->enc, B, d->N, d->D);
    else if (d->pool == POOL_TOK) tok_forward(a->pooled, a->enc, B, d->N, d->D);
    else map_forward(m, B);
    dense_forward(a->logits, a->pooled, m->w.head_w, m->w.head_b, B, d->D, d->K, 0);
    m->B = saveB;
    return targets ? loss_forward(NULL, a->logits, targets, B, d->K, d->loss) : 0.0;
}

// denc (B,N,D) += d(loss)/d(enc) through the MAP head, given dpooled.
static void map_backward(Vit *m, float *denc, int B) {
    const VitDims *d = &m->d;
    const MapW *w = &m->w.map;
    MapW *g = &m->g.map;
    MapActs *p = &m->a.map;
    VitActs *a = &m->a;
    const int D = d->D, M = d->M, BN = B * d->N;
    float *da = a->dmap_small, *dhg = da + (size_t)B * D, *dln = dhg + (size_t)B * M;
    float *dao = dln + (size_t)B * D, *dq = dao + (size_t)B * D, *dqin = dq + (size_t)B * D;
    memcpy(da, a->dpooled, (size_t)B * D * sizeof(float));
    mlp_backward(dln, g->w1, g->b1, g->w2, g->b2, a->dh, dhg, a->dpooled, p->ln, p->h, p->hg,
                 w->w1, w->w2, B, D, M, 0);
    layernorm_backward(da, g->ln_s, g->ln_b, dln, p->a, w->ln_s, p->ln_mean, p->ln_rstd, B, D);
    dense_backward(dao, g->wo, g->bo, da, p->ao, w->wo, B, D, D, 0);
    attention_backward(dq, a->dk, a->dv, a->datt, dao, p->att, p->q, p->k, p->v, B, 1, d->N,
                       d->H, d->Dh);
    dense_backward(denc, g->wk, g->bk, a->dk, a->enc, w->wk, BN, D, D, 1);
    dense_backward(denc, g->wv, g->bv, a->dv, a->enc, w->wv, BN, D, D, 1);
    dense_backward(dqin, g->wq, g->bq, dq, p->qin, w->wq, B, D, D, 0);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < D; j++) g->probe[j] += dqin[(size_t)b * D + j];
}

// On entry a->dx = d(loss)/d(block output); on exit d(loss)/d(block input).
static void block_backward(Vit *m, int l, int B) {
    const VitDims *d = &m->d;
    const BlockW *w = &m->w.blk[l];
    BlockW *g = &m->g.blk[l];
    BlockActs *k = &m->a.blk[l];
    VitActs *a = &m->a;
    const int BN = B * d->N, D = d->D, M = d->M;
    const size_t BND = (size_t)BN * D;
    if (d->is_moe[l]) {
        // MoE branch: out = xm + MoE(ln1), plus its auxiliary loss
        MoeDims md = vit_moe_dims(d, B);
        zero(a->dln, BND);
        moe_backward(a->dln, &g->moe, &a->moe, a->dx, &k->moe, k->ln1, &w->moe, md);
    } else {
        // MLP branch: out = xm + gelu(ln1 @ w1 + b1) @ w2 + b2
        mlp_backward(a->dln, g->w1, g->b1, g->w2, g->b2, a->dh, a->dhg, a->dx, k->ln1, k->h,
                     k->hg, w->w1, w->w2, BN, D, M, 0);
    }
    layernorm_backward(a->dx, g->ln1_s, g->ln1_b, a->dln, k->xm, w->ln1_s, k->ln1_mean,
                       k->ln1_rstd, BN, D);
    // attention branch: xm = x + attention(ln0) @ wo + bo
    dense_backward(a->dao, g->wo, g->bo, a->dx, k->ao, w->wo, BN, D, D, 0);
    attention_backward(a->dq, a->dk, a->dv, a->datt, a->dao, k->att, k->q, k->k, k->v, B, d->N,
                       d->N, d->H, d->Dh);
    float *dq = a->dq, *dk = a->dk;
    if (d->qk_norm) {
        zero(a->dqr, BND); zero(a->dkr, BND);
        layernorm_backward(a->dqr, g->qln_s, NULL, a->dq, k->qr, w->qln_s, k->qm, k->qs,
                           BN * d->H, d->Dh);
        layernorm_backward(a->dkr, g->kln_s, NULL, a->dk, k->kr, w->kln_s, k->km, k->ks,
                           BN * d->H, d->Dh);
        dq = a->dqr, dk = a->dkr;
    }
    dense_backward(a->dln, g->wq, g->bq, dq, k->ln0, w->wq, BN, D, D, 0);
    dense_backward(a->dln, g->wk, g->bk, dk, k->ln0, w->wk, BN, D, D, 1);
    dense_backward(a->dln, g->wv, g->bv, a->dv, k->ln0, w->wv, BN, D, D, 1);
    layernorm_backward(a->dx, g->ln0_s, g->ln0_b, a->dln, k->x, w->ln0_s, k->ln0_mean,
                       k->ln0_rstd, BN, D);
}

// dx (B,N,D) = d(loss)/d(tokens): into cls, position embedding and patches.
static void embed_backward(Vit *m, int B) {
    const VitDims *d = &m->d;
    VitActs *a = &m->a;
    const int off = d->pool == POOL_TOK, D = d->D;
    if (d->learn_pos) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < d->N; n++)
            for (int b = 0; b < B; b++)
                for (int j = 0; j < D; j++)
                    m->g.pos[(size_t)n * D + j] += a->dx[((size_t)b * d->N + n) * D + j];
    }
    const float *demb = a->dx;
    if (off) {
        for (int b = 0; b < B; b++) {
            for (int j = 0; j < D; j++) m->g.cls[j] += a->dx[(size_t)b * d->N * D + j];
            memcpy(a->dln + (size_t)b * d->Np * D, a->dx + ((size_t)b * d->N + 1) * D,
                   (size_t)d->Np * D * sizeof(float));
        }
        demb = a->dln;
    }
    patch_backward(NULL, m->g.emb_w, m->g.emb_b, demb, a->patches, m->w.emb_w, B, d->img, d->C,
                   d->patch, D);
}

void vit_backward(Vit *m, const float *targets, int B) {
    SM_CHECK(B == m->fwd_B, "vit_backward: batch %d, but the forward before ran %d images", B,
             m->fwd_B);
    const VitDims *d = &m->d;
    VitActs *a = &m->a;
    gemm_set_precision(m->precision);
    const int BN = B * d->N, D = d->D;
    zero(a->dlogits, (size_t)B * d->K);
    loss_backward(a->dlogits, a->logits, targets, B, d->K, d->loss);
    dense_backward(a->dpooled, m->g.head_w, m->g.head_b, a->dlogits, a->pooled, m->w.head_w, B,
                   D, d->K, 0);
    zero(a->dln, (size_t)BN * D);  // d(enc)
    if (d->pool == POOL_GAP) gap_backward(a->dln, a->dpooled, B, d->N, D);
    else if (d->pool == POOL_TOK) tok_backward(a->dln, a->dpooled, B, d->N, D);
    else map_backward(m, a->dln, B);
    zero(a->dx, (size_t)BN * D);
    layernorm_backward(a->dx, m->g.enc_s, m->g.enc_b, a->dln, a->xL, m->w.enc_s, a->enc_mean,
                       a->enc_rstd, BN, D);
    for (int l = d->L - 1; l >= 0; l--) block_backward(m, l, B);
    embed_backward(m, B);
    gemm_shadow_drop(m->params);
}
