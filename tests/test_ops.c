// Finite-difference checks of every kernel in src/model/layers.h. Each op's
// scalar is L = <out, R> for a fixed random R, so dL/dout = R feeds backward.
//
// Tolerance: central differences in float32 with step h have truncation
// error O(h^2 f''') and rounding error ~ 6e-8 * |L| / h. With inputs of
// order 1, h = 1e-2 gives both near 1e-4 of the gradient scale; we accept
// 1e-2 relative to the tensor's largest gradient entry, which a wrong
// backward (a missing term, a transposed index) exceeds by orders of
// magnitude — the broken-backward test below proves the check can fail.
#include <string.h>

#include "gradcheck.h"
#include "core/rng.h"
#include "model/gemm.h"
#undef I  // complex.h (through cblas.h); the tests name a dimension I
#include "model/layers.h"
#include "testutil.h"

#define TOL 1e-2
#define H_STEP 1e-2f

typedef struct {
    int kind;        // which op
    float *in[4];    // inputs / weights
    float *out, *sv[4], *R;
    int a, b, c, d, e;   // sizes
} Ctx;

// ---- dense ----
static double dense_loss(void *p) {
    Ctx *c = p;
    dense_forward(c->out, c->in[0], c->in[1], c->in[2], c->a, c->b, c->c, 0);
    return gc_dot(c->out, c->R, (size_t)c->a * c->c);
}

START_TEST(test_dense) {
    int R = 5, I = 7, O = 3;
    float x[35], w[21], b[3], out[15], Rm[15], dx[35] = {0}, dw[21] = {0}, db[3] = {0};
    gc_fill(x, 35, 1, 1); gc_fill(w, 21, 1, 2); gc_fill(b, 3, 1, 3); gc_fill(Rm, 15, 1, 4);
    Ctx c = {.in = {x, w, b}, .out = out, .R = Rm, .a = R, .b = I, .c = O};
    dense_loss(&c);
    dense_backward(dx, dw, db, Rm, x, w, R, I, O, 1);
    ck_assert_double_lt(gc_check(dense_loss, &c, x, dx, 35, H_STEP, 64, 1e-6), TOL);
    ck_assert_double_lt(gc_check(dense_loss, &c, w, dw, 21, H_STEP, 64, 1e-6), TOL);
    ck_assert_double_lt(gc_check(dense_loss, &c, b, db, 3, H_STEP, 64, 1e-6), TOL);
    // acc = 1 adds the input gradient onto what is there, acc = 0 overwrites
    // it (NaN before: beta 0 must not read it); parameter gradients add in both
    float dxa[35], dxo[35], dw2[21], db2[3];
    for (int i = 0; i < 35; i++) dxa[i] = 1.0f, dxo[i] = NAN;
    memcpy(dw2, dw, sizeof dw), memcpy(db2, db, sizeof db);
    dense_backward(dxa, NULL, NULL, Rm, x, w, R, I, O, 1);
    dense_backward(dxo, dw2, db2, Rm, x, w, R, I, O, 0);
    for (int i = 0; i < 35; i++) {
        ck_assert_float_eq_tol(dxa[i], dx[i] + 1.0f, 1e-5f);
        ck_assert_float_eq_tol(dxo[i], dx[i], 1e-6f);
    }
    for (int i = 0; i < 21; i++) ck_assert_float_eq_tol(dw2[i], 2 * dw[i], 1e-5f);
    for (int i = 0; i < 3; i++) ck_assert_float_eq_tol(db2[i], 2 * db[i], 1e-5f);
    // accumulate mode adds onto what is there
    float out2[15];
    dense_loss(&c);  // out from the unperturbed inputs
    for (int i = 0; i < 15; i++) out2[i] = 1.0f;
    dense_forward(out2, x, w, b, R, I, O, 1);
    for (int i = 0; i < 15; i++) ck_assert_float_eq_tol(out2[i], out[i] + 1.0f, 1e-5f);
}
END_TEST

// ---- layernorm ----
static double ln_loss(void *p) {
    Ctx *c = p;
    layernorm_forward(c->out, c->sv[0], c->sv[1], c->in[0], c->in[1], c->in[2], c->a, c->b);
    return gc_dot(c->out, c->R, (size_t)c->a * c->b);
}

static void check_layernorm(int with_bias) {
    enum { R = 4, C = 9 };
    float x[R * C], w[C], b[C], out[R * C], Rm[R * C], mean[R], rstd[R];
    float dx[R * C] = {0}, dw[C] = {0}, db[C] = {0};
    gc_fill(x, R * C, 2, 5); gc_fill(w, C, 1, 6); gc_fill(b, C, 1, 7); gc_fill(Rm, R * C, 1, 8);
    Ctx c = {.in = {x, w, with_bias ? b : NULL}, .out = out, .sv = {mean, rstd}, .R = Rm,
             .a = R, .b = C};
    ln_loss(&c);
    layernorm_backward(dx, dw, with_bias ? db : NULL, Rm, x, w, mean, rstd, R, C);
    ck_assert_double_lt(gc_check(ln_loss, &c, x, dx, R * C, H_STEP, 64, 1e-6), TOL);
    ck_assert_double_lt(gc_check(ln_loss, &c, w, dw, C, H_STEP, 64, 1e-6), TOL);
    if (with_bias) ck_assert_double_lt(gc_check(ln_loss, &c, b, db, C, H_STEP, 64, 1e-6), TOL);
    // normalised rows: mean 0, variance 1 before the affine part
    float ones[C], zeros[C] = {0};
    for (int i = 0; i < C; i++) ones[i] = 1.0f;
    layernorm_forward(out, mean, rstd, x, ones, zeros, R, C);
    for (int r = 0; r < R; r++) {
        double m = 0, v = 0;
        for (int i = 0; i < C; i++) m += out[r * C + i];
        for (int i = 0; i < C; i++) v += out[r * C + i] * out[r * C + i];
        ck_assert_double_lt(fabs(m / C), 1e-5);
        ck_assert_double_lt(fabs(v / C - 1.0), 1e-4);
    }
}

START_TEST(test_layernorm) { check_layernorm(1); }
END_TEST
START_TEST(test_layernorm_nobias) { check_layernorm(0); }
END_TEST

// ---- gelu ----
static double gelu_loss(void *p) {
    Ctx *c = p;
    gelu_forward(c->out, c->in[0], (size_t)c->a);
    return gc_dot(c->out, c->R, (size_t)c->a);
}

START_TEST(test_gelu) {
    float x[40], out[40], Rm[40], dx[40] = {0};
    gc_fill(x, 40, 4, 9); gc_fill(Rm, 40, 1, 10);
    Ctx c = {.in = {x}, .out = out, .R = Rm, .a = 40};
    gelu_loss(&c);
    gelu_backward(dx, Rm, x, 40);
    ck_assert_double_lt(gc_check(gelu_loss, &c, x, dx, 40, 1e-3f, 64, 1e-6), TOL);
    float dxo[40];  // the gradient is written over what was there (NaN)
    for (int i = 0; i < 40; i++) dxo[i] = NAN;
    gelu_backward(dxo, Rm, x, 40);
    for (int i = 0; i < 40; i++) ck_assert_float_eq(dxo[i], dx[i]);
    // hand values: gelu(0) = 0, gelu(1) = 0.5*(1+tanh(0.79788456*1.044715)) = 0.841192
    float v[2] = {0.0f, 1.0f}, o[2];
    gelu_forward(o, v, 2);
    ck_assert_float_eq_tol(o[0], 0.0f, 1e-7f);
    ck_assert_float_eq_tol(o[1], 0.841192f, 1e-5f);
    // the vectorised exp inside must track the tanh formula over the range
    // activations take, to float precision (and saturate without NaN)
    enum { NS = 4001 };
    static float xs[NS], gs[NS];
    for (int i = 0; i < NS; i++) xs[i] = -20.0f + 40.0f * i / (NS - 1);
    gelu_forward(gs, xs, NS);
    for (int i = 0; i < NS; i++) {
        double x = xs[i];
        double ref = 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        ck_assert_msg(fabs(gs[i] - ref) <= 2e-6 * fmax(1.0, fabs(x)), "gelu(%g) = %g, want %g",
                      x, gs[i], ref);
    }
}
END_TEST

// ---- attention ----
static double att_loss(void *p) {
    Ctx *c = p;
    attention_forward(c->out, c->sv[0], c->in[0], c->in[1], c->in[2], c->a, c->b, c->c, c->d,
                      c->e);
    return gc_dot(c->out, c->R, (size_t)c->a * c->b * c->d * c->e);
}

static void check_attention(int Nq, int Nk) {
    enum { B = 2, H = 2, Dh = 3, D = 6 };
    float q[B * 8 * D], k[B * 8 * D], v[B * 8 * D], out[B * 8 * D], Rm[B * 8 * D];
    float att[B * H * 8 * 8], scr[B * H * 8 * 8];
    float dq[B * 8 * D] = {0}, dk[B * 8 * D] = {0}, dv[B * 8 * D] = {0};
    gc_fill(q, B * Nq * D, 1.5f, 11); gc_fill(k, B * Nk * D, 1.5f, 12);
    gc_fill(v, B * Nk * D, 1, 13); gc_fill(Rm, B * Nq * D, 1, 14);
    Ctx c = {.in = {q, k, v}, .out = out, .sv = {att}, .R = Rm, .a = B, .b = Nq, .c = Nk,
             .d = H, .e = Dh};
    att_loss(&c);
    for (int r = 0; r < B * H * Nq; r++) {
        double s = 0;
        for (int j = 0; j < Nk; j++) s += att[r * Nk + j];
        ck_assert_double_lt(fabs(s - 1.0), 1e-5);
    }
    attention_backward(dq, dk, dv, scr, Rm, att, q, k, v, B, Nq, Nk, H, Dh);
    ck_assert_double_lt(gc_check(att_loss, &c, q, dq, B * Nq * D, H_STEP, 96, 1e-6), TOL);
    ck_assert_double_lt(gc_check(att_loss, &c, k, dk, B * Nk * D, H_STEP, 96, 1e-6), TOL);
    ck_assert_double_lt(gc_check(att_loss, &c, v, dv, B * Nk * D, H_STEP, 96, 1e-6), TOL);
    // every slice is written over what was there (NaN before)
    float oq[B * 8 * D], ok_[B * 8 * D], ov[B * 8 * D];
    for (int i = 0; i < B * 8 * D; i++) oq[i] = ok_[i] = ov[i] = NAN;
    att_loss(&c);
    attention_backward(oq, ok_, ov, scr, Rm, att, q, k, v, B, Nq, Nk, H, Dh);
    for (int i = 0; i < B * Nq * D; i++) ck_assert_float_eq_tol(oq[i], dq[i], 1e-6f);
    for (int i = 0; i < B * Nk * D; i++) {
        ck_assert_float_eq_tol(ok_[i], dk[i], 1e-6f);
        ck_assert_float_eq_tol(ov[i], dv[i], 1e-6f);
    }
}

START_TEST(test_attention_self) { check_attention(5, 5); }
END_TEST
START_TEST(test_attention_cross) { check_attention(1, 7); }  // MAP head shape
END_TEST

// ---- patch embedding ----
static double patch_loss(void *p) {
    Ctx *c = p;
    patch_forward(c->out, c->sv[0], c->in[0], c->in[1], c->in[2], c->a, c->b, c->c, c->d, c->e);
    int G = c->b / c->d;
    return gc_dot(c->out, c->R, (size_t)c->a * G * G * c->e);
}

START_TEST(test_patch) {
    enum { B = 2, S = 6, C = 2, P = 3, D = 4, G = 2, PPC = P * P * C };
    float img[B * S * S * C], w[PPC * D], b[D], out[B * G * G * D], Rm[B * G * G * D];
    float patches[B * G * G * PPC], dimg[B * S * S * C] = {0}, dw[PPC * D] = {0}, db[D] = {0};
    gc_fill(img, B * S * S * C, 1, 15); gc_fill(w, PPC * D, 1, 16); gc_fill(b, D, 1, 17);
    gc_fill(Rm, B * G * G * D, 1, 18);
    Ctx c = {.in = {img, w, b}, .out = out, .sv = {patches}, .R = Rm, .a = B, .b = S, .c = C,
             .d = P, .e = D};
    patch_loss(&c);
    // patch (b=1, gi=1, gj=0), element (r=2, col=1, ch=1) comes from pixel (1, 5, 1, 1)
    ck_assert_float_eq(patches[((1 * G + 1) * G + 0) * PPC + (2 * P + 1) * C + 1],
                       img[((1 * S + 5) * S + 1) * C + 1]);
    patch_backward(dimg, dw, db, Rm, patches, w, B, S, C, P, D);
    ck_assert_double_lt(gc_check(patch_loss, &c, img, dimg, B * S * S * C, H_STEP, 96, 1e-6), TOL);
    ck_assert_double_lt(gc_check(patch_loss, &c, w, dw, PPC * D, H_STEP, 96, 1e-6), TOL);
    ck_assert_double_lt(gc_check(patch_loss, &c, b, db, D, H_STEP, 96, 1e-6), TOL);
}
END_TEST

// ---- pooling ----
static double pool_loss(void *p) {
    Ctx *c = p;
    if (c->kind == 0) gap_forward(c->out, c->in[0], c->a, c->b, c->c);
    else tok_forward(c->out, c->in[0], c->a, c->b, c->c);
    return gc_dot(c->out, c->R, (size_t)c->a * c->c);
}

static void check_pool(int kind) {
    enum { B = 3, N = 4, D = 5 };
    float x[B * N * D], out[B * D], Rm[B * D], dx[B * N * D] = {0};
    gc_fill(x, B * N * D, 1, 19); gc_fill(Rm, B * D, 1, 20);
    Ctx c = {.kind = kind, .in = {x}, .out = out, .R = Rm, .a = B, .b = N, .c = D};
    pool_loss(&c);
    if (kind == 0) gap_backward(dx, Rm, B, N, D);
    else tok_backward(dx, Rm, B, N, D);
    ck_assert_double_lt(gc_check(pool_loss, &c, x, dx, B * N * D, H_STEP, 64, 1e-6), TOL);
}

START_TEST(test_gap) { check_pool(0); }
END_TEST
START_TEST(test_tok) { check_pool(1); }
END_TEST

// ---- losses ----
static double loss_fn(void *p) {
    Ctx *c = p;
    return loss_forward(NULL, c->in[0], c->in[1], c->a, c->b, c->kind);
}

static void check_loss(int kind) {
    enum { B = 3, K = 6 };
    float z[B * K], t[B * K] = {0}, dz[B * K] = {0};
    gc_fill(z, B * K, 3, 21);
    t[0 * K + 2] = 1; t[1 * K + 5] = 1; t[2 * K + 0] = 1;
    if (kind == LOSS_SIGMOID_XENT) t[2 * K + 3] = 1;  // multi-label row
    Ctx c = {.kind = kind, .in = {z, t}, .a = B, .b = K};
    loss_backward(dz, z, t, B, K, kind);
    ck_assert_double_lt(gc_check(loss_fn, &c, z, dz, B * K, 1e-3f, 64, 1e-6), TOL);
}

START_TEST(test_softmax_xent) {
    check_loss(LOSS_SOFTMAX_XENT);
    // uniform logits: loss = log K exactly
    float z[4] = {0}, t[4] = {0, 1, 0, 0};
    ck_assert_double_eq_tol(loss_forward(NULL, z, t, 1, 4, LOSS_SOFTMAX_XENT), log(4.0), 1e-9);
}
END_TEST

START_TEST(test_sigmoid_xent) {
    check_loss(LOSS_SIGMOID_XENT);
    // zero logits: each class costs log 2, summed over K classes
    float z[4] = {0}, t[4] = {0, 1, 1, 0};
    ck_assert_double_eq_tol(loss_forward(NULL, z, t, 1, 4, LOSS_SIGMOID_XENT), 4 * log(2.0), 1e-9);
}
END_TEST

// The checker must catch a wrong gradient: drop one term and expect failure.
// The few-row expert kernels (kernels.c) against a double-precision product,
// on shapes with tails in every dimension (register tiles are 48 columns x 8
// or 12 rows, panels 64 rows of w, dy transposed 32 rows at a time) and past
// the 128-row switch to sgemm. Bound: each output is a K-term float sum, so
// its error is at most about K * 2^-24 * sum |terms|; 4e-6 * (K + 1) of that
// sum leaves room for the bias and accumulate additions.
static void check_fewrow(int R, int K, int N, int accumulate, int bias) {
    float *x = malloc((size_t)R * K * sizeof(float)), *w = malloc((size_t)K * N * sizeof(float));
    float *b = malloc((size_t)N * sizeof(float)), *dy = malloc((size_t)R * N * sizeof(float));
    float *out = malloc((size_t)R * N * sizeof(float)), *dx = malloc((size_t)R * K * sizeof(float));
    float *out0 = malloc((size_t)R * N * sizeof(float)), *dx0 = malloc((size_t)R * K * sizeof(float));
    Rng r;
    rng_seed(&r, 11, (uint64_t)(R * 7919 + K * 31 + N));
    for (int i = 0; i < R * K; i++) x[i] = rng_normal(&r), dx0[i] = rng_normal(&r);
    for (int i = 0; i < K * N; i++) w[i] = rng_normal(&r);
    for (int i = 0; i < N; i++) b[i] = rng_normal(&r);
    for (int i = 0; i < R * N; i++) dy[i] = rng_normal(&r), out0[i] = rng_normal(&r);
    memcpy(out, out0, (size_t)R * N * sizeof(float));
    memcpy(dx, dx0, (size_t)R * K * sizeof(float));
    fewrow_nn(out, x, w, bias ? b : NULL, R, K, N, accumulate);
    fewrow_nt(dx, dy, w, R, K, N, accumulate);
    for (int i = 0; i < R; i++)
        for (int j = 0; j < N; j++) {
            double want = (bias ? b[j] : 0) + (accumulate ? out0[(size_t)i * N + j] : 0), mag = fabs(want);
            for (int k = 0; k < K; k++) {
                double t = (double)x[(size_t)i * K + k] * w[(size_t)k * N + j];
                want += t, mag += fabs(t);
            }
            ck_assert_msg(fabs(out[(size_t)i * N + j] - want) <= 4e-6 * (K + 1) * mag,
                          "fewrow_nn R%d K%d N%d acc%d bias%d at (%d,%d): %g vs %g", R, K, N,
                          accumulate, bias, i, j, out[(size_t)i * N + j], want);
        }
    for (int i = 0; i < R; i++)
        for (int k = 0; k < K; k++) {
            double want = accumulate ? dx0[(size_t)i * K + k] : 0, mag = fabs(want);
            for (int j = 0; j < N; j++) {
                double t = (double)dy[(size_t)i * N + j] * w[(size_t)k * N + j];
                want += t, mag += fabs(t);
            }
            ck_assert_msg(fabs(dx[(size_t)i * K + k] - want) <= 4e-6 * (N + 1) * mag,
                          "fewrow_nt R%d K%d N%d acc%d at (%d,%d): %g vs %g", R, K, N, accumulate,
                          i, k, dx[(size_t)i * K + k], want);
        }
    free(x), free(w), free(b), free(dy), free(out), free(dx), free(out0), free(dx0);
}

START_TEST(test_fewrow) {
    const int shapes[][3] = {{1, 7, 5},    {5, 48, 48},   {8, 64, 96},   {12, 65, 97},
                             {17, 130, 50}, {32, 96, 384}, {33, 200, 49}, {64, 31, 130},
                             {128, 40, 60}, {129, 40, 60}, {200, 70, 33}};
    // GEMM_FP32_BLAS: the hand-written kernels; GEMM_FP32: what the step
    // runs (oneDNN's fp32 matmul where its rule picks it, gemm.h)
    const int precs[2] = {GEMM_FP32_BLAS, GEMM_FP32};
    for (int p = 0; p < 2; p++) {
        gemm_set_precision(precs[p]);
        for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
            for (int acc = 0; acc < 2; acc++)
                check_fewrow(shapes[i][0], shapes[i][1], shapes[i][2], acc, acc == 0);
    }
    gemm_set_precision(GEMM_FP32);
}
END_TEST

START_TEST(test_check_can_fail) {
    int R = 5, I = 7, O = 3;
    float x[35], w[21], b[3], out[15], Rm[15], dw[21] = {0};
    gc_fill(x, 35, 1, 1); gc_fill(w, 21, 1, 2); gc_fill(b, 3, 1, 3); gc_fill(Rm, 15, 1, 4);
    Ctx c = {.in = {x, w, b}, .out = out, .R = Rm, .a = R, .b = I, .c = O};
    dense_backward(NULL, dw, NULL, Rm, x, w, R, I, O, 1);
    dw[4] += 0.05f * fabsf(dw[4]) + 0.05f;
    ck_assert_double_gt(gc_check(dense_loss, &c, w, dw, 21, H_STEP, 64, 1e-6), TOL);
}
END_TEST

static Suite *ops_suite(void) {
    Suite *s = suite_create("ops");
    TCase *t = tcase_create("gradcheck");
    tcase_add_test(t, test_dense);
    tcase_add_test(t, test_layernorm);
    tcase_add_test(t, test_layernorm_nobias);
    tcase_add_test(t, test_gelu);
    tcase_add_test(t, test_attention_self);
    tcase_add_test(t, test_attention_cross);
    tcase_add_test(t, test_patch);
    tcase_add_test(t, test_gap);
    tcase_add_test(t, test_tok);
    tcase_add_test(t, test_softmax_xent);
    tcase_add_test(t, test_sigmoid_xent);
    tcase_add_test(t, test_fewrow);
    tcase_add_test(t, test_check_can_fail);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(ops_suite)
