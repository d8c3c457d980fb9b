// Whole-model checks of the ViT: finite differences on every parameter
// tensor for each pooling / qk_norm / loss combination, the parameter table's
// names and shapes, the init rules, and batch independence.
//
// Tolerance: the loss is a float32 forward of a depth-2 model, so a central
// difference with h = 1e-2 carries ~1e-7 * |L| / h ~ 3e-5 absolute rounding
// noise and O(h^2) truncation; we compare against 3e-2 of each tensor's
// largest gradient entry, with an absolute floor of 1e-3 (30x the rounding
// noise) for tensors whose true gradient is 0, such as the key bias, which
// shifts every score of a query by the same amount.
// Wrong backward code fails this by far (see test_ops' can-fail check).
#include <string.h>

#include "core/config.h"
#include "gradcheck.h"
#include "model/layers.h"
#include "model/vit.h"
#include "testutil.h"

static void tiny_config(Config *c, const char *pool, const char *posemb, int qk, const char *loss) {
    config_defaults(c);  // every key has a value, the test sets what it checks
    c->width = 16, c->depth = 2, c->heads = 2, c->mlp_dim = 24;
    c->image_size = 8, c->patch = 4, c->channels = 2, c->classes = 5;
    snprintf(c->pool, sizeof c->pool, "%s", pool);
    snprintf(c->posemb, sizeof c->posemb, "%s", posemb);
    snprintf(c->loss, sizeof c->loss, "%s", loss);
    c->qk_norm = qk;
}

typedef struct {
    Vit *m;
    float *img, *tgt;
    int B;
} Ctx;

static double model_loss(void *p) {
    Ctx *c = p;
    return vit_forward(c->m, c->img, c->tgt, c->B);
}

static void check_model_moe(const char *pool, const char *posemb, int qk, const char *loss,
                            int experts, const char *layers) {
    Config cfg;
    tiny_config(&cfg, pool, posemb, qk, loss);
    cfg.experts = experts, cfg.slots = 2, cfg.shared_init = 0;
    snprintf(cfg.layers, sizeof cfg.layers, "%s", layers);
    snprintf(cfg.router, sizeof cfg.router, "soft");
    Vit m;
    vit_build(&m, &cfg);
    const int B = 3;
    vit_alloc(&m, B);
    // random parameters of moderate scale so every path carries gradient
    gc_fill(m.params, m.pt.total, 0.5f, 99);
    const VitDims *d = &m.d;
    size_t npix = (size_t)B * d->img * d->img * d->C;
    float *img = malloc(npix * sizeof(float)), *tgt = calloc((size_t)B * d->K, sizeof(float));
    gc_fill(img, npix, 1, 7);
    for (int b = 0; b < B; b++) tgt[b * d->K + (b * 2) % d->K] = 1;
    if (d->loss == LOSS_SIGMOID_XENT) tgt[1 * d->K + 4] = 1;
    Ctx c = {&m, img, tgt, B};
    vit_zero_grad(&m);
    vit_forward(&m, img, tgt, B);
    vit_backward(&m, tgt, B);
    for (int i = 0; i < m.pt.n; i++) {
        const ParamSpec *s = &m.pt.t[i];
        double e = gc_check(model_loss, &c, m.params + s->offset, m.grads + s->offset, s->numel,
                            1e-2f, 24, 1e-3);
        ck_assert_msg(e < 3e-2, "%s pool=%s qk=%d %s: %s rel err %.3g", posemb, pool, qk, loss,
                      s->name, e);
    }
    free(img); free(tgt);
    vit_free(&m);
}

static void check_model(const char *pool, const char *posemb, int qk, const char *loss) {
    check_model_moe(pool, posemb, qk, loss, 0, "last_half");
}

START_TEST(test_fd_gap) { check_model("gap", "learn", 0, "softmax_xent"); }
END_TEST
START_TEST(test_fd_moe) { check_model_moe("gap", "learn", 0, "softmax_xent", 3, "last_half"); }
END_TEST
START_TEST(test_fd_moe_all) { check_model_moe("map", "sincos2d", 1, "sigmoid_xent", 5, "every:1"); }
END_TEST
START_TEST(test_fd_tok_qk) { check_model("tok", "sincos2d", 1, "sigmoid_xent"); }
END_TEST
START_TEST(test_fd_map_qk) { check_model("map", "learn", 1, "softmax_xent"); }
END_TEST
START_TEST(test_fd_map) { check_model("map", "sincos2d", 0, "sigmoid_xent"); }
END_TEST

START_TEST(test_table) {
    Config cfg;
    tiny_config(&cfg, "tok", "learn", 1, "sigmoid_xent");
    Vit m;
    vit_build(&m, &cfg);
    int i = ptable_find(&m.pt, "Encoder/encoderblock_1/SelfAttention/query/kernel");
    ck_assert_int_ge(i, 0);
    ck_assert_int_eq(m.pt.t[i].ndim, 3);
    ck_assert_int_eq(m.pt.t[i].shape[0], 16);
    ck_assert_int_eq(m.pt.t[i].shape[1], 2);
    ck_assert_int_eq(m.pt.t[i].shape[2], 8);
    i = ptable_find(&m.pt, "Encoder/posembed_input/pos_embedding");
    ck_assert_int_eq(m.pt.t[i].shape[1], 5);  // 4 patches + cls
    ck_assert_int_ge(ptable_find(&m.pt, "cls"), 0);
    ck_assert_int_ge(ptable_find(&m.pt, "Encoder/encoderblock_0/SelfAttention/key_ln/scale"), 0);
    ck_assert_int_lt(ptable_find(&m.pt, "MAPHead_0/probe"), 0);
    // count by hand: emb 4*4*2*16+16, cls 16, pos 5*16, per block 2*16 + 3*(16*16+16)
    // + 2*8 + 16*16+16 + 2*16 + 16*24+24 + 24*16+16, encoder_norm 32, head 16*5+5
    size_t total = 0;
    for (int k = 0; k < m.pt.n; k++) total += m.pt.t[k].numel;
    size_t blk = 32 + 3 * 272 + 16 + 272 + 32 + 408 + 400;
    ck_assert_uint_eq(total, 528 + 16 + 80 + 2 * blk + 32 + 85);
    vit_alloc(&m, 2);
    vit_init(&m, 0);
    int hb = ptable_find(&m.pt, "head/bias"), hk = ptable_find(&m.pt, "head/kernel");
    ck_assert_float_eq_tol(m.params[m.pt.t[hb].offset], -logf(5.0f), 1e-6f);
    for (size_t k = 0; k < m.pt.t[hk].numel; k++)
        ck_assert_float_eq(m.params[m.pt.t[hk].offset + k], 0.0f);
    // xavier bound for Dense_0 (16 -> 24): sqrt(6/40)
    int w1 = ptable_find(&m.pt, "Encoder/encoderblock_0/Mlp/Dense_0/kernel");
    float mx = 0;
    for (size_t k = 0; k < m.pt.t[w1].numel; k++)
        mx = fmaxf(mx, fabsf(m.params[m.pt.t[w1].offset + k]));
    ck_assert_float_le(mx, sqrtf(6.0f / 40.0f));
    ck_assert_float_gt(mx, 0.5f * sqrtf(6.0f / 40.0f));
    vit_free(&m);
}
END_TEST

// An image's logits must not depend on the other images in its batch.
START_TEST(test_batch_independence) {
    Config cfg;
    tiny_config(&cfg, "map", "learn", 1, "softmax_xent");
    Vit m;
    vit_build(&m, &cfg);
    vit_alloc(&m, 5);
    gc_fill(m.params, m.pt.total, 0.5f, 3);
    size_t per = (size_t)m.d.img * m.d.img * m.d.C;
    float *img = malloc(5 * per * sizeof(float));
    gc_fill(img, 5 * per, 1, 4);
    vit_forward(&m, img, NULL, 5);
    float ref[5];
    memcpy(ref, m.a.logits + 2 * m.d.K, 5 * sizeof(float));
    vit_forward(&m, img + 2 * per, NULL, 1);
    for (int k = 0; k < 5; k++) ck_assert_float_eq_tol(m.a.logits[k], ref[k], 1e-5f);
    free(img);
    vit_free(&m);
}
END_TEST

static Suite *vit_suite(void) {
    Suite *s = suite_create("vit");
    TCase *t = tcase_create("model");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, test_fd_gap);
    tcase_add_test(t, test_fd_moe);
    tcase_add_test(t, test_fd_moe_all);
    tcase_add_test(t, test_fd_tok_qk);
    tcase_add_test(t, test_fd_map_qk);
    tcase_add_test(t, test_fd_map);
    tcase_add_test(t, test_table);
    tcase_add_test(t, test_batch_independence);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(vit_suite)
