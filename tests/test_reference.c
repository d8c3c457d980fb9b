// The C ViT against the independent PyTorch float64 reference
// (scripts/make_reference.py -> tests/data/ref_*.bin): same parameters and
// inputs, compare pre-logits, logits, loss and every parameter gradient.
// The sparse-router cases run in training mode with the reference's noise
// draws and also compare the auxiliary loss (included in the gradients) and
// the first MoE block's router logits and gates; their inputs were checked
// by the script to have no top-k / top-C / BPR near-ties (margin 1e-5), so
// float32 selects exactly what float64 does.
//
// Tolerances: we run in float32, the reference in float64 from the same
// float32 values. Forward outputs pass through ~10 float32 reductions of
// length <= 64, so we expect relative errors near 1e-6 and accept 1e-4.
// Gradients are compared as max|diff| / (max|ref| + 1e-3): the 1e-3 absolute
// floor absorbs tensors whose true gradient is exactly 0 (the attention key
// bias without QK-norm, stored as 1e-17 round-off), where our float32
// round-off is ~1e-7. We accept 1e-3; a missing term or wrong index gives
// errors of order 1e-1 or more.
#include <string.h>

#include "core/config.h"
#include "fixture.h"
#include "model/gemm.h"
#include "model/router_gates.h"
#include "model/vit.h"
#include "testutil.h"

#ifndef SM_FIXTURE_DIR
#define SM_FIXTURE_DIR "tests/data"
#endif

static void config_from_fixture(Config *c, const Fixture *f) {
    const FixTensor *t = fixture_need(f, "config", FIX_TEXT);
    char *text = strdup(t->text), *save = NULL;
    char *ov[64];
    int n = 0;
    for (char *line = strtok_r(text, "\n", &save); line && n < 64; line = strtok_r(NULL, "\n", &save))
        if (*line) ov[n++] = line;
    char err[512];
    ck_assert_msg(config_load(c, NULL, n, ov, err, sizeof err) == 0, "%s: %s", f->path, err);
    free(text);
}

static void check_case(const char *name) {
    char path[256];
    snprintf(path, sizeof path, SM_FIXTURE_DIR "/ref_%s.bin", name);
    Fixture *f = fixture_load(path);
    Config c;
    config_from_fixture(&c, f);
    Vit m;
    vit_build(&m, &c);
    const FixTensor *img = fixture_need(f, "input/images", FIX_F32);
    const FixTensor *tgt = fixture_need(f, "input/targets", FIX_F32);
    const int B = (int)img->dims[0];
    vit_alloc(&m, B);
    // every tensor of our table must be in the fixture with the same shape
    int nfix = 0;
    for (int i = 0; i < f->n; i++) nfix += !strncmp(f->t[i].name, "params/", 7);
    ck_assert_int_eq(nfix, m.pt.n);
    char key[PARAM_NAME + 16];
    for (int i = 0; i < m.pt.n; i++) {
        const ParamSpec *s = &m.pt.t[i];
        snprintf(key, sizeof key, "params/%s", s->name);
        const FixTensor *p = fixture_need(f, key, FIX_F32);
        ck_assert_msg(p->ndim == s->ndim, "%s: rank %d vs %d", s->name, p->ndim, s->ndim);
        for (int k = 0; k < s->ndim; k++)
            ck_assert_msg((int)p->dims[k] == s->shape[k], "%s: dim %d is %d, reference %d",
                          s->name, k, s->shape[k], (int)p->dims[k]);
        memcpy(m.params + s->offset, p->data, s->numel * sizeof(float));
    }
    // sparse routers: training mode, with the reference's noise draws
    const FixTensor *noise = fixture_get(f, "input/noise");
    if (noise) {
        ck_assert_uint_eq(noise->numel, (size_t)B * m.d.N * m.d.E);
        m.ctx.train = 1;
        m.test_noise = noise->data;
    }
    vit_zero_grad(&m);
    double loss = vit_forward(&m, img->data, tgt->data, B);
    vit_backward(&m, tgt->data, B);

    const FixTensor *rl = fixture_need(f, "output/loss", FIX_F32);
    const FixTensor *rz = fixture_need(f, "output/logits", FIX_F32);
    const FixTensor *rp = fixture_need(f, "output/prelogits", FIX_F32);
    double el = fabs(loss - rl->data[0]) / fabs(rl->data[0]);
    double ez = sm_rel_err(m.a.logits, rz->data, rz->numel, 0);
    double ep = sm_rel_err(m.a.pooled, rp->data, rp->numel, 0);
    printf("%-14s loss %.2e  logits %.2e  prelogits %.2e\n", name, el, ez, ep);
    ck_assert_msg(el < 1e-4 && ez < 1e-4 && ep < 1e-4, "%s: forward mismatch", name);
    if (m.d.n_moe && m.d.router->has_aux) {
        const FixTensor *ra = fixture_need(f, "output/aux_loss", FIX_F32);
        double ea = fabs(m.aux_loss - ra->data[0]) / fabs(ra->data[0]);
        printf("%-14s aux_loss %.6f (reference %.6f) rel %.2e\n", name, m.aux_loss, ra->data[0], ea);
        ck_assert_msg(ea < 1e-4, "%s: auxiliary loss mismatch", name);
    }
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < m.pt.n; i++) {
        const ParamSpec *s = &m.pt.t[i];
        snprintf(key, sizeof key, "grads/%s", s->name);
        const FixTensor *g = fixture_need(f, key, FIX_F32);
        ck_assert_uint_eq(g->numel, s->numel);
        double e = sm_rel_err(m.grads + s->offset, g->data, s->numel, 1e-3);
        if (e > worst) worst = e, worst_name = s->name;
        ck_assert_msg(e < 1e-3, "%s: gradient of %s off by %.3g (relative)", name, s->name, e);
    }
    printf("%-14s %d gradients, worst %.2e (%s)\n", name, m.pt.n, worst, worst_name);
    // Soft MoE intermediates of the first MoE block: routing weights and slots
    int l = 0;
    while (l < m.d.L && !m.d.is_moe[l]) l++;
    if (l < m.d.L && noise) {
        // the sparse routers' logits and (noisy) gates of the first MoE block
        GateActs ga = gate_acts(m.a.blk[l].moe.r, vit_moe_dims(&m.d, B));
        const FixTensor *rl2 = fixture_need(f, "debug/router_logits", FIX_F32);
        const FixTensor *rg = fixture_need(f, "debug/router_gates", FIX_F32);
        ck_assert_uint_eq(rl2->numel, (size_t)B * m.d.N * m.d.E);
        double e1 = sm_rel_err(ga.logits, rl2->data, rl2->numel, 0);
        double e2 = sm_rel_err(ga.gates, rg->data, rg->numel, 0);
        printf("%-14s block %d router logits %.2e gates %.2e\n", name, l, e1, e2);
        ck_assert_msg(e1 < 1e-4 && e2 < 1e-4, "%s: router logits/gates mismatch", name);
    } else if (l < m.d.L) {
        const MoeActs *ma = &m.a.blk[l].moe;
        const FixTensor *dw = fixture_need(f, "debug/moe_dispatch", FIX_F32);
        const FixTensor *cw = fixture_need(f, "debug/moe_combine", FIX_F32);
        const FixTensor *xs = fixture_need(f, "debug/moe_slots_in", FIX_F32);
        ck_assert_uint_eq(dw->numel, (size_t)B * m.d.N * m.d.all_rows);
        const float *our_dw, *our_cw;
        moe_soft_weights(ma, vit_moe_dims(&m.d, B), &our_dw, &our_cw);
        double e1 = sm_rel_err(our_dw, dw->data, dw->numel, 0);
        double e2 = sm_rel_err(our_cw, cw->data, cw->numel, 0);
        // our slots are expert-major (E,B*P,D); the reference's are (B,S,D)
        double e3 = 0, mx = 0;
        const int P = m.d.rows, D = m.d.D;
        for (int b = 0; b < B; b++)
            for (int s = 0; s < m.d.all_rows; s++)
                for (int j = 0; j < D; j++) {
                    float ours = ma->xs[(((size_t)(s / P) * B + b) * P + s % P) * D + j];
                    float ref = xs->data[((size_t)b * m.d.all_rows + s) * D + j];
                    e3 = fmax(e3, fabs(ours - ref));
                    mx = fmax(mx, fabs(ref));
                }
        e3 /= mx;
        printf("%-14s block %d dispatch %.2e combine %.2e slots %.2e\n", name, l, e1, e2, e3);
        ck_assert_msg(e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4, "%s: Soft MoE routing mismatch", name);
    }
    vit_free(&m);
    fixture_free(f);
}

// train.precision = bf16 on the same fixtures: forward, loss and every
// gradient against the float64 reference, and against our fp32 step.
//
// Tolerance: each product's output is within (2u + u^2) sum|a||b| of the
// fp32 one (u = 2^-9, tests/test_gemm.c), about 2^-8 of the output scale
// when the terms share a sign and far less for random signs (error ~ 2^-8 /
// sqrt(K) relative on average). A gradient is the end of a chain of
// products: forward through L blocks of ~4 products each, then back through
// as many, so these 1-3 block fixtures chain ~10-30 of them. If each added
// its worst case the errors would add to ~30 x 2^-8 ~ 0.1; random signs make
// it ~ sqrt(30) x 2^-8 ~ 2e-2. We accept 5e-2 on gradients and 2e-2 on the
// forward (a chain half as long), relative to the tensor's largest entry
// plus the same 1e-3 floor as above. The bf16 error must also exceed 1e-5,
// ten times the fp32 run's own error, so a bf16 mode that silently ran in
// fp32 fails. The rounding noise a gradient tensor receives scales with the
// gradients flowing through its layer, not with its own size, which can be
// small through cancellation (the attention key bias: exactly zero without
// QK-norm, where softmax ignores a per-query constant, and small with it);
// so the floor added to a tensor's largest entry is 0.1 of the model's
// largest gradient entry, not 1e-3.
#define BF16_FWD_TOL 2e-2
#define BF16_GRAD_TOL 5e-2

static void check_case_bf16(const char *name) {
    char path[256];
    snprintf(path, sizeof path, SM_FIXTURE_DIR "/ref_%s.bin", name);
    Fixture *f = fixture_load(path);
    Config c;
    config_from_fixture(&c, f);
    snprintf(c.precision, sizeof c.precision, "bf16");
    Vit m;
    vit_build(&m, &c);
    ck_assert_int_eq(m.precision, GEMM_BF16);
    const FixTensor *img = fixture_need(f, "input/images", FIX_F32);
    const FixTensor *tgt = fixture_need(f, "input/targets", FIX_F32);
    const int B = (int)img->dims[0];
    vit_alloc(&m, B);
    GemmInfo g0, g1;
    gemm_info(&g0);
    char key[PARAM_NAME + 16];
    for (int i = 0; i < m.pt.n; i++) {
        const ParamSpec *s = &m.pt.t[i];
        snprintf(key, sizeof key, "params/%s", s->name);
        memcpy(m.params + s->offset, fixture_need(f, key, FIX_F32)->data, s->numel * sizeof(float));
    }
    // sparse routers: training mode with the reference's noise draws (the
    // fixtures' top-k margins are wide enough that bf16 rounding of the
    // logits does not change a selection; a changed one fails below)
    const FixTensor *noise = fixture_get(f, "input/noise");
    if (noise) m.ctx.train = 1, m.test_noise = noise->data;
    vit_zero_grad(&m);
    double loss = vit_forward(&m, img->data, tgt->data, B);
    vit_backward(&m, tgt->data, B);
    gemm_info(&g1);
    if (m.d.n_moe && m.d.router->has_aux) {
        const FixTensor *ra = fixture_need(f, "output/aux_loss", FIX_F32);
        double ea = fabs(m.aux_loss - ra->data[0]) / fabs(ra->data[0]);
        printf("%-14s bf16: aux_loss rel %.2e\n", name, ea);
        ck_assert_msg(ea < BF16_FWD_TOL, "%s bf16: auxiliary loss off by %.3g", name, ea);
    }
    // every product of the step was planned at vit_alloc
    ck_assert_int_eq(g1.plans, g0.plans);
    ck_assert_int_eq(g1.late_plans, g0.late_plans);
    const FixTensor *rl = fixture_need(f, "output/loss", FIX_F32);
    const FixTensor *rz = fixture_need(f, "output/logits", FIX_F32);
    double el = fabs(loss - rl->data[0]) / fabs(rl->data[0]);
    double ez = sm_rel_err(m.a.logits, rz->data, rz->numel, 1e-3);
    double worst = 0, sum = 0, gall = 0;
    const char *worst_name = "";
    for (int i = 0; i < m.pt.n; i++) {
        snprintf(key, sizeof key, "grads/%s", m.pt.t[i].name);
        const FixTensor *g = fixture_need(f, key, FIX_F32);
        for (size_t j = 0; j < g->numel; j++) gall = fmax(gall, fabs(g->data[j]));
    }
    for (int i = 0; i < m.pt.n; i++) {
        const ParamSpec *s = &m.pt.t[i];
        snprintf(key, sizeof key, "grads/%s", s->name);
        const FixTensor *g = fixture_need(f, key, FIX_F32);
        double gmax = 0;
        for (size_t j = 0; j < g->numel; j++) gmax = fmax(gmax, fabs(g->data[j]));
        double e = sm_rel_err(m.grads + s->offset, g->data, s->numel, 0.1 * gall);
        sum += e;
        if (e > worst) worst = e, worst_name = s->name;
        if (getenv("SM_VERBOSE")) printf("  %s %.3g (max %.3g)\n", s->name, e, gmax);
        ck_assert_msg(e < BF16_GRAD_TOL, "%s bf16: gradient of %s off by %.3g", name, s->name, e);
    }
    printf("%-14s bf16: loss %.2e logits %.2e; %d gradients, mean %.2e, worst %.2e (%s)\n", name,
           el, ez, m.pt.n, sum / m.pt.n, worst, worst_name);
    ck_assert_msg(el < BF16_FWD_TOL && ez < BF16_FWD_TOL, "%s bf16: forward off", name);
    ck_assert_msg(sum / m.pt.n > 1e-5, "%s bf16: gradients as exact as fp32 (bf16 not used?)", name);
    // the same step in fp32 on the same model: the bf16 gradients are within
    // the tolerance of it too
    float *g32 = sm_malloc(m.pt.total * sizeof(float));
    memcpy(g32, m.grads, m.pt.total * sizeof(float));
    m.precision = GEMM_FP32;
    vit_zero_grad(&m);
    vit_forward(&m, img->data, tgt->data, B);
    vit_backward(&m, tgt->data, B);
    for (int i = 0; i < m.pt.n; i++) {
        const ParamSpec *s = &m.pt.t[i];
        double e = sm_rel_err(g32 + s->offset, m.grads + s->offset, s->numel, 0.1 * gall);
        ck_assert_msg(e < BF16_GRAD_TOL, "%s bf16 vs fp32: gradient of %s off by %.3g", name,
                      s->name, e);
    }
    free(g32);
    vit_free(&m);
    fixture_free(f);
}

START_TEST(test_bf16) {
    const char *cases[] = {"gap_learn",        "tok_sincos_qk",    "map_learn_qk",
                           "softmoe_gap",      "softmoe_every",    "tokens_choice_k1",
                           "tokens_choice_k2", "experts_choice"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_case_bf16(cases[i]);
}
END_TEST

START_TEST(test_gap_learn) { check_case("gap_learn"); }
END_TEST
START_TEST(test_tok_sincos_qk) { check_case("tok_sincos_qk"); }
END_TEST
START_TEST(test_map_learn_qk) { check_case("map_learn_qk"); }
END_TEST
START_TEST(test_softmoe_gap) { check_case("softmoe_gap"); }
END_TEST
START_TEST(test_softmoe_every) { check_case("softmoe_every"); }
END_TEST
START_TEST(test_tokens_choice_k2) { check_case("tokens_choice_k2"); }
END_TEST
START_TEST(test_tokens_choice_k1) { check_case("tokens_choice_k1"); }
END_TEST
START_TEST(test_experts_choice) { check_case("experts_choice"); }
END_TEST

static Suite *reference_suite(void) {
    Suite *s = suite_create("reference");
    TCase *t = tcase_create("pytorch");
    tcase_add_test(t, test_gap_learn);
    tcase_add_test(t, test_tok_sincos_qk);
    tcase_add_test(t, test_map_learn_qk);
    tcase_add_test(t, test_softmoe_gap);
    tcase_add_test(t, test_softmoe_every);
    tcase_add_test(t, test_bf16);
    tcase_add_test(t, test_tokens_choice_k2);
    tcase_add_test(t, test_tokens_choice_k1);
    tcase_add_test(t, test_experts_choice);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(reference_suite)
