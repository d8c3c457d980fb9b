// The Soft MoE layer: finite differences for the input and every parameter
// (mu, scale, expert kernels and biases) with P > 1 and E = 3 (not a power
// of two); routing properties; batch independence; token permutation
// equivariance; shared expert init; parameter counts of the paper's models.
//
// Tolerance as test_ops: 1e-2 of the tensor's largest gradient for central
// differences in float32 with h = 1e-2 (rounding ~1e-4, truncation ~1e-4).
#include <string.h>

#include "core/config.h"
#include "gradcheck.h"
#include "model/moe.h"
#include "model/vit.h"
#include "testutil.h"

#define TOL 1e-2

typedef struct {
    MoeDims d;
    MoeW w, g;
    MoeActs a;
    MoeScratch s;
    float *abuf, *sbuf, *wbuf, *gbuf;
    float *y, *out, *R;
} Layer;

static size_t wsize(MoeDims d) {
    size_t S = (size_t)d.E * d.P;
    return (size_t)d.D * S + 1 + 2 * (size_t)d.E * d.D * d.M + (size_t)d.E * (d.M + d.D);
}

static void point(MoeW *w, float *p, MoeDims d) {
    size_t S = (size_t)d.E * d.P;
    w->mu = p; p += (size_t)d.D * S;
    w->scale = p; p += 1;
    w->w1 = p; p += (size_t)d.E * d.D * d.M;
    w->b1 = p; p += (size_t)d.E * d.M;
    w->w2 = p; p += (size_t)d.E * d.M * d.D;
    w->b2 = p;
}

static void layer_init(Layer *L, MoeDims d, unsigned seed) {
    memset(L, 0, sizeof *L);
    L->d = d;
    L->abuf = calloc(moe_acts_floats(d), sizeof(float));
    L->sbuf = calloc(moe_scratch_floats(d), sizeof(float));
    moe_acts_carve(&L->a, L->abuf, d);
    moe_scratch_carve(&L->s, L->sbuf, d);
    L->wbuf = calloc(wsize(d), sizeof(float));
    L->gbuf = calloc(wsize(d), sizeof(float));
    point(&L->w, L->wbuf, d);
    point(&L->g, L->gbuf, d);
    gc_fill(L->wbuf, wsize(d), 0.5f, seed);
    L->w.scale[0] = 1.7f;
    size_t n = (size_t)d.B * d.N * d.D;
    L->y = malloc(n * sizeof(float));
    L->out = malloc(n * sizeof(float));
    L->R = malloc(n * sizeof(float));
    gc_fill(L->y, n, 1.0f, seed + 1);
    gc_fill(L->R, n, 1.0f, seed + 2);
}

static void layer_free(Layer *L) {
    free(L->abuf); free(L->sbuf); free(L->wbuf); free(L->gbuf);
    free(L->y); free(L->out); free(L->R);
}

static double layer_loss(void *p) {
    Layer *L = p;
    moe_forward(L->out, &L->a, &L->s, L->y, &L->w, L->d, NULL, 0);
    return gc_dot(L->out, L->R, (size_t)L->d.B * L->d.N * L->d.D);
}

START_TEST(test_fd_layer) {
    MoeDims d = {.B = 2, .N = 5, .D = 6, .M = 7, .E = 3, .P = 2};
    Layer L;
    layer_init(&L, d, 11);
    size_t n = (size_t)d.B * d.N * d.D;
    float *dy = calloc(n, sizeof(float));
    layer_loss(&L);
    moe_backward(dy, &L.g, &L.s, L.R, &L.a, L.y, &L.w, d);
    size_t S = (size_t)d.E * d.P;
    struct { const char *name; float *x, *g; size_t n; } t[] = {
        {"input", L.y, dy, n},
        {"mu", L.w.mu, L.g.mu, (size_t)d.D * S},
        {"scale", L.w.scale, L.g.scale, 1},
        {"Dense_0/kernel", L.w.w1, L.g.w1, (size_t)d.E * d.D * d.M},
        {"Dense_0/bias", L.w.b1, L.g.b1, (size_t)d.E * d.M},
        {"Dense_1/kernel", L.w.w2, L.g.w2, (size_t)d.E * d.M * d.D},
        {"Dense_1/bias", L.w.b2, L.g.b2, (size_t)d.E * d.D},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        double e = gc_check(layer_loss, &L, t[i].x, t[i].g, t[i].n, 1e-2f, 128, 1e-6);
        ck_assert_msg(e < TOL, "%s: rel err %.3g", t[i].name, e);
    }
    free(dy);
    layer_free(&L);
}
END_TEST

START_TEST(test_routing_weights) {
    MoeDims d = {.B = 3, .N = 7, .D = 8, .M = 4, .E = 5, .P = 2};
    Layer L;
    layer_init(&L, d, 21);
    layer_loss(&L);
    const int S = d.E * d.P;
    for (int b = 0; b < d.B; b++) {
        const float *dw0, *cw0;
        moe_soft_weights(&L.a, d, &dw0, &cw0);
        const float *dw = dw0 + (size_t)b * d.N * S, *cw = cw0 + (size_t)b * d.N * S;
        for (int s = 0; s < S; s++) {
            double sum = 0;
            for (int n = 0; n < d.N; n++) {
                ck_assert_float_gt(dw[n * S + s], 0.0f);
                sum += dw[n * S + s];
            }
            ck_assert_double_lt(fabs(sum - 1.0), 1e-5);
        }
        for (int n = 0; n < d.N; n++) {
            double sum = 0;
            for (int s = 0; s < S; s++) {
                ck_assert_float_gt(cw[n * S + s], 0.0f);
                sum += cw[n * S + s];
            }
            ck_assert_double_lt(fabs(sum - 1.0), 1e-5);
        }
    }
    layer_free(&L);
}
END_TEST

// An image's output does not depend on the other images (batch 7 vs 1).
START_TEST(test_batch_independence) {
    MoeDims d7 = {.B = 7, .N = 6, .D = 8, .M = 5, .E = 3, .P = 2}, d1 = d7;
    d1.B = 1;
    Layer L7, L1;
    layer_init(&L7, d7, 31);
    layer_init(&L1, d1, 31);  // same weights: same seed and weight size
    const size_t per = (size_t)d7.N * d7.D;
    memcpy(L1.y, L7.y + 4 * per, per * sizeof(float));
    layer_loss(&L7);
    layer_loss(&L1);
    for (size_t i = 0; i < per; i++) ck_assert_float_eq_tol(L1.out[i], L7.out[4 * per + i], 1e-5f);
    layer_free(&L7);
    layer_free(&L1);
}
END_TEST

// Permuting an image's tokens permutes its outputs the same way.
START_TEST(test_permutation) {
    MoeDims d = {.B = 1, .N = 6, .D = 8, .M = 5, .E = 4, .P = 1};
    Layer L;
    layer_init(&L, d, 41);
    layer_loss(&L);
    float ref[48], yp[48];
    memcpy(ref, L.out, sizeof ref);
    const int perm[6] = {3, 0, 5, 1, 4, 2};
    for (int n = 0; n < 6; n++) memcpy(yp + n * 8, L.y + perm[n] * 8, 8 * sizeof(float));
    memcpy(L.y, yp, sizeof yp);
    layer_loss(&L);
    for (int n = 0; n < 6; n++)
        for (int j = 0; j < 8; j++)
            ck_assert_float_eq_tol(L.out[n * 8 + j], ref[perm[n] * 8 + j], 1e-5f);
    layer_free(&L);
}
END_TEST

static void moe_config(Config *c, const char *extra) {
    char err[512];
    char *ov[] = {"model.width=16", "model.depth=4",  "model.heads=2",   "model.mlp_dim=24",
                  "model.image_size=8", "model.patch=2", "model.channels=1", "model.classes=3",
                  "moe.experts=6", "moe.slots=2", (char *)extra};
    ck_assert_msg(config_load(c, NULL, extra ? 11 : 10, ov, err, sizeof err) == 0, "%s", err);
}

START_TEST(test_shared_init) {
    Config c;
    moe_config(&c, NULL);
    for (int shared = 1; shared >= 0; shared--) {
        c.shared_init = shared;
        Vit m;
        vit_build(&m, &c);
        vit_alloc(&m, 1);
        vit_init(&m, 5);
        ck_assert_int_eq(m.d.n_moe, 2);  // last_half of 4 blocks
        ck_assert_int_eq(m.d.is_moe[2] + m.d.is_moe[3], 2);
        const MoeW *w = &m.w.blk[3].moe;
        size_t per = (size_t)m.d.D * m.d.M;
        int equal = 1;
        for (int e = 1; e < m.d.E; e++)
            equal &= !memcmp(w->w1, w->w1 + e * per, per * sizeof(float));
        ck_assert_int_eq(equal, shared);
        ck_assert_float_eq(w->scale[0], 1.0f);
        vit_free(&m);
    }
}
END_TEST

START_TEST(test_layers_spec) {
    Config c;
    moe_config(&c, "moe.layers=every:2");
    Vit m;
    vit_build(&m, &c);
    ck_assert(!m.d.is_moe[0] && m.d.is_moe[1] && !m.d.is_moe[2] && m.d.is_moe[3]);
    ck_assert_int_ge(ptable_find(&m.pt, "Encoder/encoderblock_1/Moe/Router/mu"), 0);
    ck_assert_int_lt(ptable_find(&m.pt, "Encoder/encoderblock_1/Mlp/Dense_0/kernel"), 0);
    ck_assert_int_ge(ptable_find(&m.pt, "Encoder/encoderblock_2/Mlp/Dense_0/kernel"), 0);
    int i = ptable_find(&m.pt, "Encoder/encoderblock_3/Moe/Mlp/Dense_1/kernel");
    ck_assert_int_eq(m.pt.t[i].shape[0], 6);
    ck_assert_int_eq(m.pt.t[i].shape[1], 24);
    ck_assert_int_eq(m.pt.t[i].shape[2], 16);
    i = ptable_find(&m.pt, "Encoder/encoderblock_3/Moe/Router/scale");
    ck_assert_int_eq(m.pt.t[i].ndim, 0);
    ptable_free(&m.pt);
    moe_config(&c, "moe.layers=0,2");
    vit_build(&m, &c);
    ck_assert(m.d.is_moe[0] && !m.d.is_moe[1] && m.d.is_moe[2] && !m.d.is_moe[3]);
    ptable_free(&m.pt);
    char err[256];
    snprintf(c.layers, sizeof c.layers, "last:9");
    ck_assert_int_ne(vit_check_config(&c, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "moe.layers"));
    snprintf(c.layers, sizeof c.layers, "1,x");
    ck_assert_int_ne(vit_check_config(&c, err, sizeof err), 0);
    // slots = auto: P = round(N * c / E) = round(16 * 1.0 / 6) = 3
    moe_config(&c, "moe.slots=auto");
    vit_build(&m, &c);
    ck_assert_int_eq(m.d.rows, 3);
    ptable_free(&m.pt);
}
END_TEST

static Suite *softmoe_suite(void) {
    Suite *s = suite_create("softmoe");
    TCase *t = tcase_create("layer");
    tcase_add_test(t, test_fd_layer);
    tcase_add_test(t, test_routing_weights);
    tcase_add_test(t, test_batch_independence);
    tcase_add_test(t, test_permutation);
    tcase_add_test(t, test_shared_init);
    tcase_add_test(t, test_layers_spec);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(softmoe_suite)
