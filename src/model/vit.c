// ViT construction: dimensions from the config, the parameter table with
// vmoe/big_vision names, pointer tables, one allocation per tensor family,
// initialisation, and the FLOP count.
#include "vit.h"

#include <math.h>
#include <string.h>

#include "../core/common.h"
#include "../core/rng.h"
#include "gemm.h"
#include "layers.h"

static int add(ParamTable *pt, const char *name, InitKind init, float arg, int fi, int fo,
               int ndim, int s0, int s1, int s2, int s3) {
    int shape[4] = {s0, s1, s2, s3};
    return ptable_add(pt, name, init, arg, fi, fo, ndim, shape);
}

// Attention kernels/biases under `pre`; init as vmoe (lecun-normal) or, for
// the MAP head, big_vision's xavier-uniform.
static void add_attention(ParamTable *pt, const char *pre, const VitDims *d, InitKind kinit,
                          int qk_norm) {
    char n[PARAM_NAME];
    const char *qkv[3] = {"query", "key", "value"};
    for (int i = 0; i < 3; i++) {
        snprintf(n, sizeof n, "%s/%s/kernel", pre, qkv[i]);
        add(pt, n, kinit, 0, d->D, d->D, 3, d->D, d->H, d->Dh, 0);
        snprintf(n, sizeof n, "%s/%s/bias", pre, qkv[i]);
        add(pt, n, INIT_ZEROS, 0, 0, 0, 2, d->H, d->Dh, 0, 0);
    }
    if (qk_norm) {
        snprintf(n, sizeof n, "%s/query_ln/scale", pre);
        add(pt, n, INIT_ONES, 0, 0, 0, 1, d->Dh, 0, 0, 0);
        snprintf(n, sizeof n, "%s/key_ln/scale", pre);
        add(pt, n, INIT_ONES, 0, 0, 0, 1, d->Dh, 0, 0, 0);
    }
    snprintf(n, sizeof n, "%s/out/kernel", pre);
    add(pt, n, kinit, 0, d->D, d->D, 3, d->H, d->Dh, d->D, 0);
    snprintf(n, sizeof n, "%s/out/bias", pre);
    add(pt, n, INIT_ZEROS, 0, 0, 0, 1, d->D, 0, 0, 0);
}

static void add_layernorm(ParamTable *pt, const char *pre, int D) {
    char n[PARAM_NAME];
    snprintf(n, sizeof n, "%s/scale", pre);
    add(pt, n, INIT_ONES, 0, 0, 0, 1, D, 0, 0, 0);
    snprintf(n, sizeof n, "%s/bias", pre);
    add(pt, n, INIT_ZEROS, 0, 0, 0, 1, D, 0, 0, 0);
}

static void add_mlp(ParamTable *pt, const char *pre, int D, int M) {
    char n[PARAM_NAME];
    snprintf(n, sizeof n, "%s/Dense_0/kernel", pre);
    add(pt, n, INIT_XAVIER_UNIFORM, 0, D, M, 2, D, M, 0, 0);
    snprintf(n, sizeof n, "%s/Dense_0/bias", pre);
    add(pt, n, INIT_NORMAL, 1e-6f, 0, 0, 1, M, 0, 0, 0);
    snprintf(n, sizeof n, "%s/Dense_1/kernel", pre);
    add(pt, n, INIT_XAVIER_UNIFORM, 0, M, D, 2, M, D, 0, 0);
    snprintf(n, sizeof n, "%s/Dense_1/bias", pre);
    add(pt, n, INIT_NORMAL, 1e-6f, 0, 0, 1, D, 0, 0, 0);
}

// moe.layers -> mask over the L blocks: last_half, last:K, every:K, or "6,7,8".
static int parse_layers(const char *spec, int L, unsigned char *mask, char *err, size_t n) {
    memset(mask, 0, (size_t)L);
    char *end;
    if (!strcmp(spec, "last_half")) {
        for (int l = L - L / 2; l < L; l++) mask[l] = 1;
        return 0;
    }
    if (!strncmp(spec, "last:", 5) || !strncmp(spec, "every:", 6)) {
        int every = spec[0] == 'e';
        long k = strtol(spec + (every ? 6 : 5), &end, 10);
        if (*end || k < 1 || k > L) {
            snprintf(err, n, "moe.layers = %s: K must be an integer in 1..%d (model.depth)", spec, L);
            return -1;
        }
        for (int l = 0; l < L; l++) mask[l] = every ? (l + 1) % k == 0 : l >= L - k;
        return 0;
    }
    for (const char *p = spec; *p;) {
        long l = strtol(p, &end, 10);
        if (end == p || l < 0 || l >= L || (*end && *end != ',')) {
            snprintf(err, n, "moe.layers = %s: expected last_half, last:K, every:K or a list of "
                     "block indices in 0..%d", spec, L - 1);
            return -1;
        }
        mask[l] = 1;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int vit_check_config(const Config *c, char *err, size_t n) {
    if (c->depth > VIT_MAX_DEPTH) {
        snprintf(err, n, "model.depth = %d exceeds %d", c->depth, VIT_MAX_DEPTH);
        return -1;
    }
    if (c->experts == 0) return 0;
    const MoeRouter *r = moe_router_find(c->router);
    if (!r) {
        snprintf(err, n, "moe.router = %s: unknown router", c->router);
        return -1;
    }
    if (!r->ablations && (strcmp(c->dispatch, "soft") || strcmp(c->combine, "soft"))) {
        snprintf(err, n, "moe.dispatch / moe.combine = uniform are ablations of the soft router, "
                 "not of moe.router = %s", c->router);
        return -1;
    }
    if (!r->grouped && c->group_size != 1) {
        snprintf(err, n, "moe.group_size = %d: moe.router = %s routes each image alone (group "
                 "size 1); groups are for routers that choose within a batch of images",
                 c->group_size, c->router);
        return -1;
    }
    int N = (c->image_size / c->patch) * (c->image_size / c->patch) + !strcmp(c->pool, "tok");
    if (r->rows(c, N, err, n) < 0) return -1;
    unsigned char mask[VIT_MAX_DEPTH];
    return parse_layers(c->layers, c->depth, mask, err, n);
}

MoeDims vit_moe_dims(const VitDims *d, int B) {
    return (MoeDims){.B = B, .N = d->N, .D = d->D, .M = d->M, .E = d->E, .P = d->rows,
                     .El = d->El, .W = d->ep_size, .exchange = d->exchange, .G = d->group,
                     .router = d->router, .k = d->k,
                     .bpr = d->bpr, .noise_std = d->noise_std, .imp_w = d->imp_w,
                     .load_w = d->load_w, .uniform_dispatch = d->uni_dispatch,
                     .uniform_combine = d->uni_combine};
}

// Marks a stacked expert tensor: this rank holds El of the E experts.
static void stacked(ParamTable *pt, int k, const VitDims *d) {
    pt->t[k].n_stack = d->El;
    pt->t[k].stack_total = d->E;
    pt->t[k].stack_first = d->ep_rank * d->El;
}

// MoE parameters of block l (vmoe names; experts stacked on a leading E
// axis, of which this rank holds El), after the router's own (moe.h
// MoeParams: Soft MoE's mu and scale, the sparse routers' bias-free
// Router/dense, identity none).
static void add_moe(ParamTable *pt, int l, const VitDims *d) {
    char n[PARAM_NAME];
    const int E = d->E, El = d->El, D = d->D, M = d->M;
    if (d->router->params == MOE_PARAMS_SLOTS) {
        snprintf(n, sizeof n, "Encoder/encoderblock_%d/Moe/Router/mu", l);
        // flax lecun_normal on (D,E,P): fan_in = D*E
        add(pt, n, INIT_LECUN_NORMAL, 0, D * E, 0, 3, D, E, d->rows, 0);
        snprintf(n, sizeof n, "Encoder/encoderblock_%d/Moe/Router/scale", l);
        add(pt, n, INIT_ONES, 0, 0, 0, 0, 0, 0, 0, 0);
    } else if (d->router->params == MOE_PARAMS_GATE) {
        // flax nn.Dense's default kernel init, lecun_normal, fan_in = D
        snprintf(n, sizeof n, "Encoder/encoderblock_%d/Moe/Router/dense/kernel", l);
        add(pt, n, INIT_LECUN_NORMAL, 0, D, E, 2, D, E, 0, 0);
    }
    int k;
    snprintf(n, sizeof n, "Encoder/encoderblock_%d/Moe/Mlp/Dense_0/kernel", l);
    k = add(pt, n, INIT_XAVIER_UNIFORM, 0, D, M, 3, El, D, M, 0);
    stacked(pt, k, d);
    snprintf(n, sizeof n, "Encoder/encoderblock_%d/Moe/Mlp/Dense_0/bias", l);
    k = add(pt, n, INIT_NORMAL, 1e-6f, 0, 0, 2, El, M, 0, 0);
    stacked(pt, k, d);
    snprintf(n, sizeof n, "Encoder/encoderblock_%d/Moe/Mlp/Dense_1/kernel", l);
    k = add(pt, n, INIT_XAVIER_UNIFORM, 0, M, D, 3, El, M, D, 0);
    stacked(pt, k, d);
    snprintf(n, sizeof n, "Encoder/encoderblock_%d/Moe/Mlp/Dense_1/bias", l);
    k = add(pt, n, INIT_NORMAL, 1e-6f, 0, 0, 2, El, D, 0, 0);
    stacked(pt, k, d);
}

void vit_build(Vit *m, const Config *c) {
    const MoeGroup one = {0, 1, NULL};
    vit_build_group(m, c, &one);
}

void vit_build_group(Vit *m, const Config *c, const MoeGroup *g) {
    char err[512];
    if (vit_check_config(c, err, sizeof err) != 0 || vit_check_sizes(c, 1, err, sizeof err) != 0)
        sm_die("%s", err);
    memset(m, 0, sizeof *m);
    VitDims *d = &m->d;
    d->img = c->image_size, d->C = c->channels, d->patch = c->patch, d->G = d->img / d->patch;
    d->Np = d->G * d->G;
    d->pool = !strcmp(c->pool, "tok") ? POOL_TOK : !strcmp(c->pool, "map") ? POOL_MAP : POOL_GAP;
    d->N = d->Np + (d->pool == POOL_TOK);
    d->D = c->width, d->H = c->heads, d->Dh = c->width / c->heads, d->M = c->mlp_dim;
    d->L = c->depth, d->K = c->classes;
    d->learn_pos = !strcmp(c->posemb, "learn");
    d->qk_norm = c->qk_norm;
    d->loss = !strcmp(c->loss, "sigmoid_xent") ? LOSS_SIGMOID_XENT : LOSS_SOFTMAX_XENT;
    m->precision = gemm_precision_from_name(c->precision);
    if (m->precision == GEMM_FP32 && c->debug_fp32_sgemm) m->precision = GEMM_FP32_BLAS;
    if (c->experts > 0) {
        d->E = c->experts;
        d->router = moe_router_find(c->router);
        d->group = c->group_size, d->k = c->k, d->bpr = c->bpr;
        d->noise_std = (float)c->noise_std;
        d->imp_w = (float)c->importance_weight, d->load_w = (float)c->load_weight;
        d->uni_dispatch = !strcmp(c->dispatch, "uniform");
        d->uni_combine = !strcmp(c->combine, "uniform");
        d->rows = d->router->rows(c, d->N, err, sizeof err);  // checked by vit_check_config
        d->all_rows = d->E * d->rows;
        d->shared_init = c->shared_init;
        d->ep_size = g->size, d->ep_rank = g->rank, d->exchange = g->exchange;
        SM_CHECK(d->E % d->ep_size == 0, "moe.experts = %d cannot be split over %d ranks", d->E, d->ep_size);
        d->El = d->E / d->ep_size;
        parse_layers(c->layers, d->L, d->is_moe, err, sizeof err);
        for (int l = 0; l < d->L; l++) d->n_moe += d->is_moe[l];
    }

    ParamTable *pt = &m->pt;
    ptable_init(pt);
    int ppc = d->patch * d->patch * d->C;
    add(pt, "embedding/kernel", INIT_LECUN_NORMAL, 0, ppc, d->D, 4, d->patch, d->patch, d->C, d->D);
    add(pt, "embedding/bias", INIT_ZEROS, 0, 0, 0, 1, d->D, 0, 0, 0);
    if (d->pool == POOL_TOK) add(pt, "cls", INIT_ZEROS, 0, 0, 0, 3, 1, 1, d->D, 0);
    if (d->learn_pos)
        add(pt, "Encoder/posembed_input/pos_embedding", INIT_NORMAL, 0.02f, 0, 0, 3, 1, d->N,
            d->D, 0);
    char pre[PARAM_NAME];
    for (int l = 0; l < d->L; l++) {
        snprintf(pre, sizeof pre, "Encoder/encoderblock_%d/LayerNorm_0", l);
        add_layernorm(pt, pre, d->D);
        snprintf(pre, sizeof pre, "Encoder/encoderblock_%d/SelfAttention", l);
        add_attention(pt, pre, d, INIT_LECUN_NORMAL, d->qk_norm);
        snprintf(pre, sizeof pre, "Encoder/encoderblock_%d/LayerNorm_1", l);
        add_layernorm(pt, pre, d->D);
        snprintf(pre, sizeof pre, "Encoder/encoderblock_%d/Mlp", l);
        if (d->is_moe[l]) add_moe(pt, l, d);
        else add_mlp(pt, pre, d->D, d->M);
    }
    add_layernorm(pt, "Encoder/encoder_norm", d->D);
    if (d->pool == POOL_MAP) {
        add(pt, "MAPHead_0/probe", INIT_XAVIER_UNIFORM, 0, 1, d->D, 3, 1, 1, d->D, 0);
        add_attention(pt, "MAPHead_0/MultiHeadDotProductAttention_0", d, INIT_XAVIER_UNIFORM, 0);
        add_layernorm(pt, "MAPHead_0/LayerNorm_0", d->D);
        add_mlp(pt, "MAPHead_0/MlpBlock_0", d->D, d->M);
    }
    add(pt, "head/kernel", INIT_ZEROS, 0, 0, 0, 2, d->D, d->K, 0, 0);
    // sigmoid: start every class at prior 1/K (big_vision's -log(K) bias)
    add(pt, "head/bias", INIT_CONST, d->loss == LOSS_SIGMOID_XENT ? -logf((float)d->K) : 0.0f,
        0, 0, 1, d->K, 0, 0, 0);
}

static float *ptr(const Vit *m, float *base, const char *name) {
    int i = ptable_find(&m->pt, name);
    return i < 0 ? NULL : base + m->pt.t[i].offset;
}

static void bind_attention(const Vit *m, float *base, const char *pre, float **wq, float **bq,
                           float **wk, float **bk, float **wv, float **bv, float **wo,
                           float **bo) {
    char n[PARAM_NAME];
    float **outs[8] = {wq, bq, wk, bk, wv, bv, wo, bo};
    const char *names[8] = {"query/kernel", "query/bias", "key/kernel",  "key/bias",
                            "value/kernel", "value/bias", "out/kernel", "out/bias"};
    for (int i = 0; i < 8; i++) {
        snprintf(n, sizeof n, "%s/%s", pre, names[i]);
        *outs[i] = ptr(m, base, n);
    }
}

// Fills a pointer table (weights or gradients) for the block `base`.
static void bind(Vit *m, float *base, VitW *w) {
    const VitDims *d = &m->d;
    char n[PARAM_NAME];
    w->emb_w = ptr(m, base, "embedding/kernel");
    w->emb_b = ptr(m, base, "embedding/bias");
    w->cls = ptr(m, base, "cls");
    w->pos = ptr(m, base, "Encoder/posembed_input/pos_embedding");
    w->blk = sm_calloc((size_t)d->L, sizeof(BlockW));
    for (int l = 0; l < d->L; l++) {
        BlockW *b = &w->blk[l];
#define P_(field, suffix) \
    (snprintf(n, sizeof n, "Encoder/encoderblock_%d/%s", l, suffix), b->field = ptr(m, base, n))
        P_(ln0_s, "LayerNorm_0/scale"); P_(ln0_b, "LayerNorm_0/bias");
        P_(ln1_s, "LayerNorm_1/scale"); P_(ln1_b, "LayerNorm_1/bias");
        P_(qln_s, "SelfAttention/query_ln/scale"); P_(kln_s, "SelfAttention/key_ln/scale");
        P_(w1, "Mlp/Dense_0/kernel"); P_(b1, "Mlp/Dense_0/bias");
        P_(w2, "Mlp/Dense_1/kernel"); P_(b2, "Mlp/Dense_1/bias");
        P_(moe.mu, "Moe/Router/mu"); P_(moe.scale, "Moe/Router/scale");
        P_(moe.wr, "Moe/Router/dense/kernel");
        P_(moe.w1, "Moe/Mlp/Dense_0/kernel"); P_(moe.b1, "Moe/Mlp/Dense_0/bias");
        P_(moe.w2, "Moe/Mlp/Dense_1/kernel"); P_(moe.b2, "Moe/Mlp/Dense_1/bias");
#undef P_
        snprintf(n, sizeof n, "Encoder/encoderblock_%d/SelfAttention", l);
        bind_attention(m, base, n, &b->wq, &b->bq, &b->wk, &b->bk, &b->wv, &b->bv, &b->wo, &b->bo);
    }
    w->enc_s = ptr(m, base, "Encoder/encoder_norm/scale");
    w->enc_b = ptr(m, base, "Encoder/encoder_norm/bias");
    MapW *p = &w->map;
    p->probe = ptr(m, base, "MAPHead_0/probe");
    bind_attention(m, base, "MAPHead_0/MultiHeadDotProductAttention_0", &p->wq, &p->bq, &p->wk,
                   &p->bk, &p->wv, &p->bv, &p->wo, &p->bo);
    p->ln_s = ptr(m, base, "MAPHead_0/LayerNorm_0/scale");
    p->ln_b = ptr(m, base, "MAPHead_0/LayerNorm_0/bias");
    p->w1 = ptr(m, base, "MAPHead_0/MlpBlock_0/Dense_0/kernel");
    p->b1 = ptr(m, base, "MAPHead_0/MlpBlock_0/Dense_0/bias");
    p->w2 = ptr(m, base, "MAPHead_0/MlpBlock_0/Dense_1/kernel");
    p->b2 = ptr(m, base, "MAPHead_0/MlpBlock_0/Dense_1/bias");
    w->head_w = ptr(m, base, "head/kernel");
    w->head_b = ptr(m, base, "head/bias");
}

// Carves the activation block; with base NULL only counts floats.
static size_t carve(Vit *m, float *base, int B) {
    const VitDims *d = &m->d;
    size_t off = 0;
    const size_t BN = (size_t)B * d->N, BND = BN * d->D, BNM = BN * d->M;
#define TAKE(p, n) (p = base ? base + off : NULL, off += ((size_t)(n) + 15) / 16 * 16)
    VitActs *a = &m->a;
    const MoeDims md = vit_moe_dims(d, B);
    TAKE(a->patches, (size_t)B * d->Np * d->patch * d->patch * d->C);
    TAKE(a->emb, (size_t)B * d->Np * d->D);
    for (int l = 0; l < d->L; l++) {
        BlockActs *k = &a->blk[l];
        TAKE(k->x, BND);
        TAKE(k->ln0, BND); TAKE(k->ln0_mean, BN); TAKE(k->ln0_rstd, BN);
        if (d->qk_norm) {
            TAKE(k->qr, BND); TAKE(k->kr, BND);
            TAKE(k->qm, BN * d->H); TAKE(k->qs, BN * d->H);
            TAKE(k->km, BN * d->H); TAKE(k->ks, BN * d->H);
        }
        TAKE(k->q, BND); TAKE(k->k, BND); TAKE(k->v, BND);
        TAKE(k->att, BN * d->H * d->N);
        TAKE(k->ao, BND); TAKE(k->xm, BND);
        TAKE(k->ln1, BND); TAKE(k->ln1_mean, BN); TAKE(k->ln1_rstd, BN);
        if (d->is_moe[l]) {
            size_t nf = moe_acts_floats(md);
            if (base) moe_acts_carve(&k->moe, base + off, md);
            off += nf;
        } else {
            TAKE(k->h, BNM); TAKE(k->hg, BNM);
        }
    }
    TAKE(a->xL, BND);
    TAKE(a->enc, BND); TAKE(a->enc_mean, BN); TAKE(a->enc_rstd, BN);
    if (d->pool == POOL_MAP) {
        MapActs *p = &a->map;
        TAKE(p->qin, (size_t)B * d->D); TAKE(p->q, (size_t)B * d->D);
        TAKE(p->k, BND); TAKE(p->v, BND);
        TAKE(p->att, BN * d->H); TAKE(p->ao, (size_t)B * d->D); TAKE(p->a, (size_t)B * d->D);
        TAKE(p->ln, (size_t)B * d->D); TAKE(p->ln_mean, B); TAKE(p->ln_rstd, B);
        TAKE(p->h, (size_t)B * d->M); TAKE(p->hg, (size_t)B * d->M);
        TAKE(a->dmap_small, (size_t)B * (d->M + 6 * d->D));
    }
    TAKE(a->pooled, (size_t)B * d->D);
    TAKE(a->logits, (size_t)B * d->K);
    TAKE(a->dx, BND); TAKE(a->dln, BND);
    TAKE(a->dq, BND); TAKE(a->dk, BND); TAKE(a->dv, BND);
    if (d->qk_norm) { TAKE(a->dqr, BND); TAKE(a->dkr, BND); }
    TAKE(a->dao, BND);
    TAKE(a->datt, BN * d->H * d->N);
    TAKE(a->dh, BNM); TAKE(a->dhg, BNM);
    TAKE(a->dpooled, (size_t)B * d->D);
    TAKE(a->dlogits, (size_t)B * d->K);
    if (d->n_moe) {
        size_t nf = moe_scratch_floats(md);
        if (base) moe_scratch_carve(&a->moe, base + off, md);
        off += nf;
    }
#undef TAKE
    return off;
}

// One forward and backward of a B-image step with gemm in planning mode:
// every product shape gets its primitive and staging now, none inside a
// step. No arithmetic, no all-to-all; the gradients it touched are zeroed.
static void plan_gemms(Vit *m, int B) {
    const VitDims *d = &m->d;
    float *img = sm_calloc((size_t)B * d->img * d->img * d->C, sizeof(float));
    float *tgt = sm_calloc((size_t)B * d->K, sizeof(float));
    gemm_plan_begin();
    vit_forward(m, img, tgt, B);
    vit_backward(m, tgt, B);
    gemm_plan_end();
    vit_zero_grad(m);
    free(img);
    free(tgt);
}

size_t vit_act_floats(Vit *m, int B) {
    int own = !m->a.blk;
    if (own) m->a.blk = sm_calloc((size_t)m->d.L, sizeof(BlockActs));
    size_t n = carve(m, NULL, B);
    if (own) free(m->a.blk), m->a.blk = NULL;
    return n;
}

void vit_alloc(Vit *m, int B) {
    m->B = B;
    m->params = sm_aligned(m->pt.total * sizeof(float));
    m->grads = sm_aligned(m->pt.total * sizeof(float));
    memset(m->params, 0, m->pt.total * sizeof(float));
    memset(m->grads, 0, m->pt.total * sizeof(float));
    bind(m, m->params, &m->w);
    bind(m, m->grads, &m->g);
    m->a.blk = sm_calloc((size_t)m->d.L, sizeof(BlockActs));
    m->act_floats = carve(m, NULL, B);
    m->act_block = sm_aligned(m->act_floats * sizeof(float));
    memset(m->act_block, 0, m->act_floats * sizeof(float));
    carve(m, m->act_block, B);
    if (!m->d.learn_pos) {
        m->posemb_fixed = sm_malloc((size_t)m->d.Np * m->d.D * sizeof(float));
        posemb_sincos2d(m->posemb_fixed, m->d.G, m->d.D);
    }
    if (gemm_uses_plans(m->precision)) plan_gemms(m, B);
}

void vit_free(Vit *m) {
    gemm_shadow_drop(m->params);
    free(m->wh);
    free(m->params); free(m->grads); free(m->act_block); free(m->posemb_fixed);
    free(m->w.blk); free(m->g.blk); free(m->a.blk);
    ptable_free(&m->pt);
    memset(m, 0, sizeof *m);
}

void vit_zero_grad(Vit *m) { memset(m->grads, 0, m->pt.total * sizeof(float)); }

static void init_values(float *p, size_t n, const ParamSpec *s, Rng *r) {
    for (size_t i = 0; i < n; i++) {
        float v = 0.0f;
        switch (s->init) {
        case INIT_ZEROS: v = 0.0f; break;
        case INIT_ONES: v = 1.0f; break;
        case INIT_CONST: v = s->init_arg; break;
        case INIT_NORMAL: v = s->init_arg * rng_normal(r); break;
        case INIT_XAVIER_UNIFORM: {
            float a = sqrtf(6.0f / (float)(s->fan_in + s->fan_out));
            v = a * (2.0f * rng_uniform(r) - 1.0f);
            break;
        }
        case INIT_LECUN_NORMAL:
            // flax: truncated normal on [-2,2] rescaled to unit variance
            v = sqrtf(1.0f / (float)s->fan_in) / 0.87962566103423978f * rng_truncnormal(r);
            break;
        }
        p[i] = v;
    }
}

void vit_init(Vit *m, uint64_t seed) {
    // One stream per tensor: adding a tensor never changes the others' values.
    // Stacked experts (E, ...): with shared init (vmoe's default) one slice is
    // drawn and copied; otherwise global expert g has its own stream (expert 0
    // the tensor's), so a rank holding experts [first, first + El) draws the
    // same values as a single rank holding all of them.
    for (int i = 0; i < m->pt.n; i++) {
        const ParamSpec *s = &m->pt.t[i];
        float *p = m->params + s->offset;
        Rng r;
        rng_seed(&r, seed, (uint64_t)i + 1);
        if (s->n_stack <= 1 && !ptable_is_expert(s)) {
            init_values(p, s->numel, s, &r);
            continue;
        }
        size_t slice = s->numel / (size_t)s->n_stack;
        for (int j = 0; j < s->n_stack; j++) {
            uint64_t g = (uint64_t)(s->stack_first + j);
            if (m->d.shared_init && j > 0) {
                memcpy(p + j * slice, p, slice * sizeof(float));
                continue;
            }
            rng_seed(&r, seed, ((uint64_t)i + 1) | (m->d.shared_init ? 0 : g << 32));
            init_values(p + j * slice, slice, s, &r);
        }
    }
}

double vit_flops_per_image(const VitDims *d) {
    double N = d->N, D = d->D, M = d->M;
    double f = 2.0 * d->Np * (double)(d->patch * d->patch * d->C) * D;          // patch embedding
    double attn = 2.0 * N * D * D * 4                                   // q k v out
                  + 2.0 * N * N * D * 2;                                // q k^T, att v
    double mlp = 2.0 * N * D * M * 2;
    // MoE: the experts on their E*P buffer rows per group of G images, and
    // the router's own products (its flops()).
    double rows = (double)d->all_rows / (d->group > 0 ? d->group : 1);
    double moe = 2.0 * rows * D * M * 2;
    if (d->n_moe) moe += d->router->flops(vit_moe_dims(d, 1));
    f += d->L * attn + (d->L - d->n_moe) * mlp + d->n_moe * moe;
    if (d->pool == POOL_MAP)
        f += 2.0 * D * D * 2 + 2.0 * N * D * D * 2 + 2.0 * N * D * 2 + 2.0 * D * M * 2;
    f += 2.0 * D * d->K;                                                // head
    return f;
}
