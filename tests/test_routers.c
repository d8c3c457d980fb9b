// The sparse routers and the fixed-routing ablations on one MoE layer:
//   - central finite differences of <out, R> + aux for the input, the router
//     kernel and every expert tensor: Tokens Choice (k = 1 with BPR, k = 2
//     without, groups of 2 images, noise on so the load loss is in), Experts
//     Choice (groups, noise), identity, Soft MoE with uniform dispatch and with
//     uniform combine. Away from ties: every probe asserts that x +- h routes
//     exactly as x does, so a test can never pass by differencing across a
//     switch of the selection;
//   - hand-built Tokens Choice capacity/priority examples (BPR on and off,
//     k = 1 and k = 2) and an Experts Choice selection, slot by slot;
//   - what the ablations compute (slot = mean of tokens, token = mean of slots,
//     token i in slot i); the noise is a function of the global token, not
//     of where the token sits in the batch; capacities as vmoe computes them.
//
// Tolerance as test_softmoe: 1e-2 of the tensor's largest gradient for
// float32 central differences; h = 1e-3 here (selections must not flip, so
// the step is smaller; rounding of an O(1) loss is then ~1e-4 of it).
#include <string.h>

#include "core/config.h"
#include "gradcheck.h"
#include "model/moe.h"
#include "model/router_gates.h"
#include "model/vit.h"
#include "testutil.h"

#define TOL 1e-2
#define H 1e-3f

typedef struct {
    MoeDims d;
    MoeCtx c;
    MoeW w, g;
    MoeActs a;
    MoeScratch s;
    float *abuf, *sbuf, *wbuf, *gbuf, *noise;
    float *y, *out, *R;
    int *tok0;                      // slot map of the unperturbed forward (sparse routers)
} Layer;

static size_t wsize(MoeDims d) {
    size_t S = (size_t)d.E * d.P;
    return (size_t)d.D * S + 1 + (size_t)d.D * d.E + 2 * (size_t)d.E * d.D * d.M +
           (size_t)d.E * (d.M + d.D);
}

static void point(MoeW *w, float *p, MoeDims d) {
    size_t S = (size_t)d.E * d.P;
    w->mu = p; p += (size_t)d.D * S;
    w->scale = p; p += 1;
    w->wr = p; p += (size_t)d.D * d.E;
    w->w1 = p; p += (size_t)d.E * d.D * d.M;
    w->b1 = p; p += (size_t)d.E * d.M;
    w->w2 = p; p += (size_t)d.E * d.M * d.D;
    w->b2 = p;
}

static void layer_init(Layer *L, MoeDims d, unsigned seed, int noisy) {
    memset(L, 0, sizeof *L);
    d = moe_dims_local(d);
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
    for (size_t i = 0; i < (size_t)d.D * d.E; i++) L->w.wr[i] *= 3.0f;  // gates away from uniform
    size_t n = (size_t)d.B * d.N * d.D, T = (size_t)d.B * d.N;
    L->y = malloc(n * sizeof(float));
    L->out = malloc(n * sizeof(float));
    L->R = malloc(n * sizeof(float));
    L->noise = malloc(T * d.E * sizeof(float));
    L->tok0 = malloc((size_t)d.E * moe_rows(d) * sizeof(int));
    gc_fill(L->y, n, 1.0f, seed + 1);
    gc_fill(L->R, n, 1.0f, seed + 2);
    gc_fill(L->noise, T * d.E, 1.7f, seed + 3);  // stands in for N(0,1) draws
    L->c = (MoeCtx){.train = noisy, .seed = 9, .noise = L->noise};
}

static void layer_free(Layer *L) {
    free(L->abuf); free(L->sbuf); free(L->wbuf); free(L->gbuf); free(L->noise);
    free(L->y); free(L->out); free(L->R); free(L->tok0);
}

static int sparse(const Layer *L) { return strcmp(L->d.router->name, "soft"); }

static const int *slot_map(const Layer *L) {
    if (!strcmp(L->d.router->name, "identity")) return (const int *)L->a.r;
    GateActs g = gate_acts(L->a.r, L->d);
    return g.tok;
}

static double layer_loss(void *p) {
    Layer *L = p;
    moe_forward(L->out, &L->a, &L->s, L->y, &L->w, L->d, &L->c, 0);
    return gc_dot(L->out, L->R, (size_t)L->d.B * L->d.N * L->d.D) + L->a.aux;
}

// Central differences over up to 96 entries of x; each probe must route
// exactly as the unperturbed forward did.
static double fd_check(Layer *L, float *x, const float *g, size_t n) {
    double gmax = 0, err = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g[i]));
    const size_t rows = (size_t)L->d.E * moe_rows(L->d);
    size_t stride = n <= 96 ? 1 : (n + 95) / 96;
    for (size_t i = 0; i < n; i += stride) {
        float x0 = x[i];
        double f[2];
        for (int k = 0; k < 2; k++) {
            x[i] = x0 + (k ? -H : H);
            f[k] = layer_loss(L);
            if (sparse(L))
                ck_assert_msg(!memcmp(slot_map(L), L->tok0, rows * sizeof(int)),
                              "probe %zu changes the routing (a tie): pick another seed", i);
        }
        x[i] = x0;
        err = fmax(err, fabs((f[0] - f[1]) / (2.0 * H) - g[i]));
    }
    return err / (gmax + 1e-6);
}

static void fd_layer(MoeDims d, unsigned seed, int noisy) {
    Layer L;
    layer_init(&L, d, seed, noisy);
    d = L.d;
    size_t n = (size_t)d.B * d.N * d.D;
    float *dy = calloc(n, sizeof(float));
    layer_loss(&L);
    if (sparse(&L)) memcpy(L.tok0, slot_map(&L), (size_t)d.E * moe_rows(d) * sizeof(int));
    if (d.router->has_aux) ck_assert_double_gt(L.a.aux, 0);
    moe_backward(dy, &L.g, &L.s, L.R, &L.a, L.y, &L.w, d);
    const int soft = !strcmp(d.router->name, "soft"), id = !strcmp(d.router->name, "identity");
    struct { const char *name; float *x, *g; size_t n; } t[] = {
        {"input", L.y, dy, n},
        {"Router/dense/kernel", L.w.wr, L.g.wr, soft || id ? 0 : (size_t)d.D * d.E},
        {"mu", L.w.mu, L.g.mu, soft && !(d.uniform_dispatch && d.uniform_combine) ?
                                   (size_t)d.D * d.E * d.P : 0},
        {"scale", L.w.scale, L.g.scale, soft ? 1 : 0},
        {"Dense_0/kernel", L.w.w1, L.g.w1, (size_t)d.E * d.D * d.M},
        {"Dense_0/bias", L.w.b1, L.g.b1, (size_t)d.E * d.M},
        {"Dense_1/kernel", L.w.w2, L.g.w2, (size_t)d.E * d.M * d.D},
        {"Dense_1/bias", L.w.b2, L.g.b2, (size_t)d.E * d.D},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        if (!t[i].n) continue;
        double e = fd_check(&L, t[i].x, t[i].g, t[i].n);
        ck_assert_msg(e < TOL, "%s %s: rel err %.3g", d.router->name, t[i].name, e);
    }
    free(dy);
    layer_free(&L);
}

#define DIMS(...) ((MoeDims){.B = 4, .N = 6, .D = 8, .M = 5, __VA_ARGS__})

START_TEST(test_fd_tokens_choice_k1_bpr) {
    fd_layer(DIMS(.E = 4, .P = 5, .G = 2, .k = 1, .bpr = 1, .noise_std = 1, .imp_w = 0.3f, .load_w = 0.2f,
                  .router = moe_router_find("tokens_choice")), 5, 1);
}
END_TEST

START_TEST(test_fd_tokens_choice_k2) {
    // capacity 4 of 2 * 6 * 2 / 4 = 6 choices per expert and group: drops
    fd_layer(DIMS(.E = 4, .P = 4, .G = 2, .k = 2, .bpr = 0, .noise_std = 1, .imp_w = 0.3f, .load_w = 0.2f,
                  .router = moe_router_find("tokens_choice")), 7, 1);
}
END_TEST

START_TEST(test_fd_experts_choice) {
    fd_layer(DIMS(.E = 4, .P = 3, .G = 2, .noise_std = 1, .router = moe_router_find("experts_choice")), 8, 1);
}
END_TEST

START_TEST(test_fd_identity) {
    fd_layer(DIMS(.E = 3, .P = 2, .router = moe_router_find("identity")), 9, 0);
}
END_TEST

START_TEST(test_fd_uniform_dispatch) {
    fd_layer(DIMS(.E = 4, .P = 2, .uniform_dispatch = 1), 10, 0);
}
END_TEST

START_TEST(test_fd_uniform_combine) {
    fd_layer(DIMS(.E = 4, .P = 2, .uniform_combine = 1), 11, 0);
}
END_TEST

// ---- hand-built routing: D = E and Wr = I, so the logits are the inputs ----

static void route_by_logits(Layer *L, MoeDims d, const float *logits) {
    layer_init(L, d, 1, 0);
    d = L->d;
    memset(L->w.wr, 0, (size_t)d.D * d.E * sizeof(float));
    for (int e = 0; e < d.E; e++) L->w.wr[e * d.E + e] = 1.0f;
    memcpy(L->y, logits, (size_t)d.B * d.N * d.E * sizeof(float));
    layer_loss(L);
}

// Expert e's buffer for group 0: the tokens in its rows (-1 = empty).
static void expect_buffers(const Layer *L, const int *want) {
    const int *tok = slot_map(L);
    const size_t R = moe_rows(L->d);
    for (int e = 0; e < L->d.E; e++)
        for (int c = 0; c < L->d.P; c++)
            ck_assert_msg(tok[e * R + c] == want[e * L->d.P + c], "expert %d row %d: token %d, "
                          "expected %d", e, c, tok[e * R + c], want[e * L->d.P + c]);
}

START_TEST(test_tokens_choice_capacity_k1) {
    // 4 tokens, 2 experts, C = 2. Top-1: t0 -> e1 (gate .73), t1 -> e0 (.95),
    // t2 -> e1 (.88), t3 -> e1 (.92): three choices for e1's two rows.
    const float lg[] = {0, 1, 3, 0, 0, 2, 0, 2.5f};
    MoeDims d = {.B = 1, .N = 4, .D = 2, .M = 3, .E = 2, .P = 2, .k = 1,
                 .router = moe_router_find("tokens_choice")};
    Layer L;
    // by position: e1 keeps t0 and t2, t3 is dropped
    route_by_logits(&L, d, lg);
    expect_buffers(&L, (int[]){1, -1, 0, 2});
    ck_assert_double_eq_tol(L.a.metrics[0], 0.25, 1e-12);   // dropped fraction
    ck_assert_double_eq_tol(L.a.metrics[1], 0.75, 1e-12);   // buffer rows filled
    for (int j = 0; j < 2; j++) ck_assert_float_eq(L.a.xs[(2 + 1) * 2 + j], lg[2 * 2 + j]);
    for (int j = 0; j < 2; j++) ck_assert_float_eq(L.out[3 * 2 + j], 0.0f);  // t3: output 0
    layer_free(&L);
    // BPR, by top-1 gate: t1 .95, t3 .92, t2 .88, t0 .73: e1 keeps t3 and t2, t0 is dropped
    d.bpr = 1;
    route_by_logits(&L, d, lg);
    expect_buffers(&L, (int[]){1, -1, 3, 2});
    for (int j = 0; j < 2; j++) ck_assert_float_eq(L.out[0 * 2 + j], 0.0f);
    // the combine weight is the gate, not renormalised
    GateActs g = gate_acts(L.a.r, L.d);
    ck_assert_float_eq_tol(g.wt[moe_rows(L.d) * 1 + 0], 1.0f / (1.0f + expf(-2.5f)), 1e-6f);
    layer_free(&L);
}
END_TEST

START_TEST(test_tokens_choice_capacity_k2) {
    // 4 tokens, 3 experts, k = 2, C = 2 (ceil(4*2*0.5/3) with cf 0.5).
    // (1st, 2nd) choices: t0 (e0,e1), t1 (e1,e2), t2 (e2,e0), t3 (e0,e2).
    // k-major: all first choices fit (e0: t0 t3, e1: t1, e2: t2), then the
    // second: t0 -> e1 fits, t1 -> e2 fits, t2 -> e0 full, t3 -> e2 full.
    const float lg[] = {2, 1, 0, 0, 3, 1, 1, 0, 4, 3, 0, 2};
    MoeDims d = {.B = 1, .N = 4, .D = 3, .M = 3, .E = 3, .P = 2, .k = 2,
                 .router = moe_router_find("tokens_choice")};
    Layer L;
    route_by_logits(&L, d, lg);
    expect_buffers(&L, (int[]){0, 3, 1, 0, 2, 1});
    ck_assert_double_eq_tol(L.a.metrics[0], 0.0, 1e-12);  // every token kept one choice
    layer_free(&L);
    // BPR (top-1 gates t2 .94, t1 .84, t3 .71, t0 .67): buffers in that order;
    // t2's second choice (e0) still loses to t3's and t0's first choices.
    d.bpr = 1;
    route_by_logits(&L, d, lg);
    expect_buffers(&L, (int[]){3, 0, 1, 0, 2, 1});
    layer_free(&L);
}
END_TEST

START_TEST(test_experts_choice_selection) {
    // 3 tokens, 3 experts, C = 1: gates t0 (.47,.52,.003), t1 (1/3 each),
    // t2 (.018,.018,.96): e0 and e1 both take t0, e2 takes t2, t1 is unprocessed.
    const float lg[] = {2, 2.1f, -3, 0, 0, 0, -3, -3, 1};
    MoeDims d = {.B = 1, .N = 3, .D = 3, .M = 3, .E = 3, .P = 1,
                 .router = moe_router_find("experts_choice")};
    Layer L;
    route_by_logits(&L, d, lg);
    expect_buffers(&L, (int[]){0, 0, 2});
    ck_assert_double_eq_tol(L.a.metrics[0], 1.0 / 3, 1e-12);  // unprocessed
    ck_assert_double_eq_tol(L.a.metrics[1], 1.0 / 3, 1e-12);  // by >= 2 experts
    for (int j = 0; j < 3; j++) ck_assert_float_eq(L.out[1 * 3 + j], 0.0f);
    layer_free(&L);
    // C = 2: each expert's buffer best first (e0: t0 then t1; e2: t2 then t1)
    d.P = 2;
    route_by_logits(&L, d, lg);
    expect_buffers(&L, (int[]){0, 1, 0, 1, 2, 1});
    layer_free(&L);
}
END_TEST

START_TEST(test_ablations_compute) {
    MoeDims d = {.B = 2, .N = 6, .D = 4, .M = 3, .E = 3, .P = 2, .uniform_dispatch = 1};
    Layer L;
    layer_init(&L, d, 3, 0);
    layer_loss(&L);
    // every slot of image b is the mean of its tokens
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 4; j++) {
            double mean = 0;
            for (int n = 0; n < 6; n++) mean += L.y[(b * 6 + n) * 4 + j] / 6.0;
            for (int e = 0; e < 3; e++)
                for (int p = 0; p < 2; p++)
                    ck_assert_double_eq_tol(L.a.xs[((e * 2 + b) * 2 + p) * 4 + j], mean, 1e-6);
        }
    layer_free(&L);
    d.uniform_dispatch = 0, d.uniform_combine = 1;
    layer_init(&L, d, 3, 0);
    layer_loss(&L);
    // every token of image b gets the mean of its 6 slot outputs
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 4; j++) {
            double mean = 0;
            for (int s = 0; s < 6; s++) mean += L.a.ys[(((s / 2) * 2 + b) * 2 + s % 2) * 4 + j] / 6.0;
            for (int n = 0; n < 6; n++)
                ck_assert_double_eq_tol(L.out[(b * 6 + n) * 4 + j], mean, 1e-5);
        }
    layer_free(&L);
    d.uniform_combine = 0, d.router = moe_router_find("identity");
    layer_init(&L, d, 3, 0);
    layer_loss(&L);
    // token n of image b is slot n = e*P + p: the expert's output on it, weight 1
    for (int b = 0; b < 2; b++)
        for (int n = 0; n < 6; n++)
            for (int j = 0; j < 4; j++) {
                size_t r = ((size_t)(n / 2) * 2 + b) * 2 + n % 2;
                ck_assert_float_eq(L.a.xs[r * 4 + j], L.y[(b * 6 + n) * 4 + j]);
                ck_assert_float_eq(L.out[(b * 6 + n) * 4 + j], L.a.ys[r * 4 + j]);
            }
    layer_free(&L);
}
END_TEST

// Image 1 of a batch of 2 at img0 = 0 draws the noise of image 1 of a batch
// of 1 at img0 = 1; another step draws other noise.
START_TEST(test_noise_global) {
    MoeDims d = {.B = 2, .N = 5, .D = 6, .M = 3, .E = 4, .P = 5, .k = 1, .noise_std = 1,
                 .router = moe_router_find("tokens_choice")};
    Layer L2, L1;
    layer_init(&L2, d, 4, 1);
    d.B = 1;
    layer_init(&L1, d, 4, 1);
    L2.c.noise = L1.c.noise = NULL;  // the rng, not the test's draws
    L2.c.step = L1.c.step = 17, L2.c.layer = L1.c.layer = 3;
    L1.c.img0 = 1;
    memcpy(L1.y, L2.y + 5 * 6, 5 * 6 * sizeof(float));
    layer_loss(&L2);
    layer_loss(&L1);
    GateActs g2 = gate_acts(L2.a.r, L2.d), g1 = gate_acts(L1.a.r, L1.d);
    ck_assert(!memcmp(g1.z, g2.z + 5 * 4, 5 * 4 * sizeof(float)));
    ck_assert(!memcmp(g1.gates, g2.gates + 5 * 4, 5 * 4 * sizeof(float)));
    float z[20];
    memcpy(z, g1.z, sizeof z);
    L1.c.step = 18;
    layer_loss(&L1);
    ck_assert(memcmp(z, g1.z, sizeof z));
    // evaluation: no noise, gates are the clean softmax
    L1.c.train = 0;
    layer_loss(&L1);
    ck_assert(!memcmp(g1.gates, g1.clean, 20 * sizeof(float)));
    layer_free(&L2);
    layer_free(&L1);
}
END_TEST

static void build(Vit *m, const char *router, const char *extra) {
    Config c;
    char err[512];
    char *ov[] = {"model.width=16", "model.depth=2", "model.heads=2", "model.mlp_dim=24",
                  "model.image_size=8", "model.patch=2", "model.channels=1", "model.classes=3",
                  "moe.experts=6", (char *)router, "moe.group_size=2", (char *)extra};
    ck_assert_msg(config_load(&c, NULL, 12, ov, err, sizeof err) == 0, "%s", err);
    vit_build(m, &c);
}

START_TEST(test_capacity) {
    Vit m;
    // Tokens Choice: ceil(2 images * 16 tokens * k 2 * 1.0 / 6) = 11 (multiple of 1)
    build(&m, "moe.router=tokens_choice", "moe.k=2");
    ck_assert_int_eq(m.d.rows, 11);
    ptable_free(&m.pt);
    build(&m, "moe.router=tokens_choice", "moe.capacity_multiple_of=4");
    ck_assert_int_eq(m.d.rows, 8);  // ceil(32 / 6) = 6 -> 8
    ck_assert_int_ge(ptable_find(&m.pt, "Encoder/encoderblock_1/Moe/Router/dense/kernel"), 0);
    ck_assert_int_lt(ptable_find(&m.pt, "Encoder/encoderblock_1/Moe/Router/mu"), 0);
    ptable_free(&m.pt);
    // Experts Choice: round(32 * 1.0 / 6) = 5
    build(&m, "moe.router=experts_choice", "moe.capacity_factor=1.0");
    ck_assert_int_eq(m.d.rows, 5);
    // FLOPs count the capacity: 6 experts x 5 rows per group of 2 images
    double f0 = vit_flops_per_image(&m.d);
    ptable_free(&m.pt);
    build(&m, "moe.router=experts_choice", "moe.capacity_factor=2.0");
    ck_assert_int_eq(m.d.rows, 11);
    double f1 = vit_flops_per_image(&m.d);
    // one MoE block, 18 more rows per image: the experts 2 * 18 * D * M * 2, the combine 2 * 18 * D
    ck_assert_double_eq_tol(f1 - f0, 2.0 * 18 * 16 * 24 * 2 + 2.0 * 18 * 16, 1e-6);
    ptable_free(&m.pt);
}
END_TEST

START_TEST(test_bad_configs) {
    Config c;
    char err[512];
    char *ov[] = {"model.width=16", "model.image_size=8", "model.patch=2", "moe.experts=4"};
    ck_assert(config_load(&c, NULL, 4, ov, err, sizeof err) == 0);
    snprintf(c.router, sizeof c.router, "identity");
    c.slots = 3;  // 4 x 3 != 16 tokens
    ck_assert_int_ne(vit_check_config(&c, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "identity"));
    c.slots = 4;
    ck_assert_int_eq(vit_check_config(&c, err, sizeof err), 0);
    snprintf(c.router, sizeof c.router, "tokens_choice");
    c.k = 3;
    ck_assert_int_ne(vit_check_config(&c, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "moe.k"));
    c.k = 1;
    snprintf(c.dispatch, sizeof c.dispatch, "uniform");
    ck_assert_int_ne(vit_check_config(&c, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "moe.dispatch"));
    snprintf(c.dispatch, sizeof c.dispatch, "soft");
    snprintf(c.router, sizeof c.router, "soft");
    c.group_size = 2;
    ck_assert_int_ne(vit_check_config(&c, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "moe.group_size"));
}
END_TEST

static Suite *routers_suite(void) {
    Suite *s = suite_create("routers");
    TCase *t = tcase_create("routers");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_fd_tokens_choice_k1_bpr);
    tcase_add_test(t, test_fd_tokens_choice_k2);
    tcase_add_test(t, test_fd_experts_choice);
    tcase_add_test(t, test_fd_identity);
    tcase_add_test(t, test_fd_uniform_dispatch);
    tcase_add_test(t, test_fd_uniform_combine);
    tcase_add_test(t, test_tokens_choice_capacity_k1);
    tcase_add_test(t, test_tokens_choice_capacity_k2);
    tcase_add_test(t, test_experts_choice_selection);
    tcase_add_test(t, test_ablations_compute);
    tcase_add_test(t, test_noise_global);
    tcase_add_test(t, test_capacity);
    tcase_add_test(t, test_bad_configs);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(routers_suite)
