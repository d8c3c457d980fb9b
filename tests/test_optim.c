// Tests of src/optim: schedule values, weight-decay rules, clipping and Adam
// steps against numbers worked out by hand (never by the code under test).
#include <omp.h>
#include <string.h>

#include "core/common.h"
#include "model/gemm.h"
#include "optim/optim.h"
#include "testutil.h"

// ---------------------------------------------------------------- schedule

// The schedule is computed in double from exact literals, so only the last
// bits of sqrt/cos may differ from the hand values below.
#define LR_TOL 1e-12

static Config sched_cfg(const char *decay, long warmup, long cooldown, double timescale) {
    Config c;
    memset(&c, 0, sizeof c);
    c.lr = 1e-3;
    c.steps = 1000;
    c.warmup_steps = warmup;
    c.cooldown_steps = cooldown;
    c.timescale = timescale;
    snprintf(c.decay, sizeof c.decay, "%s", decay);
    return c;
}

static void check_lr(const Config *c, long step, double want) {
    double got = sched_lr(c, step);
    ck_assert_msg(fabs(got - want) <= LR_TOL * fabs(want) + 1e-18,
                  "%s step %ld: lr %.17g, want %.17g", c->decay, step, got, want);
}

START_TEST(test_sched_warmup) {
    // steps 1000, warmup 100, cooldown 200, lr 1e-3, rsqrt timescale 100.
    Config c = sched_cfg("rsqrt", 100, 200, 100);
    check_lr(&c, 0, 0.0);    // 1e-3 * 0/100
    check_lr(&c, 1, 1e-5);   // 1e-3 * 1/100
    check_lr(&c, 50, 5e-4);  // 1e-3 * 50/100
    check_lr(&c, 100, 1e-3); // warmup done, rsqrt not started (step > warmup is false)
}
END_TEST

START_TEST(test_sched_rsqrt) {
    // timescale 100 = warmup, so shift = 0 and lr = 1e-3 / sqrt(step / 100).
    Config c = sched_cfg("rsqrt", 100, 200, 100);
    check_lr(&c, 500, 4.472135954999579e-4);   // 1e-3 / sqrt(5)
    check_lr(&c, 800, 3.5355339059327376e-4);  // 1e-3 / sqrt(8), cooldown (1000-800)/200 = 1
    check_lr(&c, 900, 1.6666666666666666e-4);  // 1e-3 / sqrt(9) * (100/200)
    check_lr(&c, 999, 1.5819299929208318e-6);  // 1e-3 / sqrt(9.99) * (1/200)
    // timescale 400, warmup 100: shift = 300, lr = 1e-3 / sqrt((500+300)/400).
    Config d = sched_cfg("rsqrt", 100, 0, 400);
    check_lr(&d, 500, 7.071067811865475e-4);   // 1e-3 / sqrt(2)
    check_lr(&d, 101, 1e-3 / sqrt(401.0 / 400.0)); // decay starts right after warmup
}
END_TEST

START_TEST(test_sched_cosine_linear) {
    // warmup 100, steps 1000: progress = (step - 100) / 900.
    Config c = sched_cfg("cosine", 100, 0, 0);
    check_lr(&c, 325, 8.535533905932737e-4); // p = 1/4: 1e-3 * 0.5 * (1 + cos(pi/4))
    check_lr(&c, 550, 5e-4);                 // p = 1/2: 1e-3 * 0.5 * (1 + 0)
    check_lr(&c, 1000, 0.0);                 // p = 1:   1e-3 * 0.5 * (1 - 1)
    Config cc = sched_cfg("cosine", 100, 200, 0);
    // p = 750/900, cooldown (1000-850)/200 = 0.75.
    check_lr(&cc, 850, 5.0240473580835483e-5);
    Config l = sched_cfg("linear", 100, 0, 0);
    check_lr(&l, 400, 6.666666666666668e-4);  // p = 1/3: 1e-3 * 2/3
    check_lr(&l, 1000, 0.0);
    Config lc = sched_cfg("linear", 100, 200, 0);
    check_lr(&lc, 900, 5.555555555555555e-5); // p = 8/9: 1e-3 * 1/9 * (100/200)
}
END_TEST

START_TEST(test_sched_constant_cooldown) {
    Config c = sched_cfg("constant", 100, 200, 0);
    check_lr(&c, 10, 1e-4);    // 1e-3 * 10/100
    check_lr(&c, 700, 1e-3);   // cooldown factor min(1, 300/200) = 1
    check_lr(&c, 800, 1e-3);   // cooldown start: 200/200
    check_lr(&c, 950, 2.5e-4); // 1e-3 * 50/200
    check_lr(&c, 999, 5e-6);   // last step: 1e-3 * 1/200
    Config n = sched_cfg("constant", 0, 0, 0);
    check_lr(&n, 0, 1e-3);     // no warmup: no 0/0 at step 0
    // total == warmup: every step is warmup, no division by zero.
    Config w = sched_cfg("linear", 1000, 0, 0);
    check_lr(&w, 500, 5e-4);   // 1e-3 * (1 - 0) * 500/1000
    ck_assert_int_eq(sched_decay_kind("cosine"), SCHED_COSINE);
    ck_assert_int_eq(sched_decay_kind("rsqrt"), SCHED_RSQRT);
    ck_assert_int_eq(sched_decay_kind("exp"), -1);
}
END_TEST

// ---------------------------------------------------------------- weight decay

START_TEST(test_wd_parse) {
    WdRule r[8];
    char err[256] = "";
    int n = wd_parse("head/kernel:3.0, */kernel:0.03, */Router/scale:0.03", r, 8, err,
                     sizeof err);
    ck_assert_msg(n == 3, "n = %d (%s)", n, err);
    ck_assert_str_eq(r[0].pattern, "head/kernel");
    ck_assert_str_eq(r[1].pattern, "*/kernel");
    ck_assert_str_eq(r[2].pattern, "*/Router/scale");
    ck_assert(r[0].value == 3.0 && r[1].value == 0.03 && r[2].value == 0.03);
    n = wd_parse("  head/kernel : 3.0 ,\t*/bias:1e-4  ", r, 8, err, sizeof err);
    ck_assert_msg(n == 2, "n = %d (%s)", n, err);
    ck_assert_str_eq(r[0].pattern, "head/kernel");
    ck_assert_str_eq(r[1].pattern, "*/bias");
    ck_assert(r[0].value == 3.0 && r[1].value == 1e-4);
    ck_assert_int_eq(wd_parse("", r, 8, err, sizeof err), 0);
    ck_assert_int_eq(wd_parse("  \t", r, 8, err, sizeof err), 0);
}
END_TEST

// The spec must be rejected with a message naming optim.wd and `mention`.
static void check_bad_wd(const char *spec, int max_rules, const char *mention) {
    WdRule r[4];
    char err[256] = "";
    int n = wd_parse(spec, r, max_rules, err, sizeof err);
    ck_assert_msg(n == -1, "'%s' accepted (n = %d)", spec, n);
    ck_assert_msg(strstr(err, "optim.wd") && strstr(err, mention),
                  "'%s': message '%s' lacks optim.wd or '%s'", spec, err, mention);
}

START_TEST(test_wd_malformed) {
    check_bad_wd("head/kernel", 4, "head/kernel");             // no value
    check_bad_wd("*/kernel:0.03, head/kernel", 4, "head/kernel");
    check_bad_wd("head/kernel:abc", 4, "abc");
    check_bad_wd("head/kernel:", 4, "head/kernel");
    check_bad_wd("head/kernel:0.1x", 4, "0.1x");
    check_bad_wd(":0.1", 4, ":0.1");                            // empty pattern
    check_bad_wd("a:1,,b:2", 4, "stray comma");
    check_bad_wd("a:1,", 4, "stray comma");
    check_bad_wd("a:-1", 4, "-1");                              // negative decay
    check_bad_wd("a:1e999", 4, "1e999");                        // not finite
    check_bad_wd("a:1:2", 4, "1:2");
    check_bad_wd("a:1, b:2, c:3", 2, "c:3");                    // too many
}
END_TEST

START_TEST(test_wd_glob) {
    ck_assert(wd_glob_match("*/kernel", "Encoder/encoderblock_0/Mlp/Dense_0/kernel"));
    ck_assert(wd_glob_match("*/kernel", "embedding/kernel"));
    ck_assert(!wd_glob_match("*/kernel", "head/bias"));
    ck_assert(!wd_glob_match("*/kernel", "kernel"));            // needs the '/'
    ck_assert(wd_glob_match("head/kernel", "head/kernel"));
    ck_assert(!wd_glob_match("head/kernel", "head/kernel2"));   // full match only
    ck_assert(!wd_glob_match("head/kernel", "xhead/kernel"));
    ck_assert(!wd_glob_match("head/kernel", "head/kerne"));
    ck_assert(wd_glob_match("*", ""));
    ck_assert(wd_glob_match("*", "a/b/c"));
    ck_assert(wd_glob_match("Encoder/*/Router/scale",
                            "Encoder/encoderblock_3/MoeMlp/Router/scale"));
    ck_assert(wd_glob_match("a*b*c", "aXbYbZc"));               // needs backtracking
    ck_assert(!wd_glob_match("a*b*c", "aXbYcZ"));
    ck_assert(wd_glob_match("*b", "bbb"));
    ck_assert(!wd_glob_match("", "a"));
    ck_assert(!wd_glob_match("head?kernel", "head/kernel")); // only '*' is special
}
END_TEST

START_TEST(test_wd_per_tensor) {
    static const char *names[] = {
        "head/kernel", "head/bias", "embedding/kernel",
        "Encoder/encoderblock_0/Mlp/Dense_0/kernel",
        "Encoder/encoderblock_1/MoeMlp/Router/scale", "Encoder/encoder_norm/scale"};
    const float want[] = {3.0f, 0.0f, 0.03f, 0.03f, 0.03f, 0.0f};
    ParamTable pt;
    ptable_init(&pt);
    int shape[1] = {4};
    for (int i = 0; i < 6; i++) ptable_add(&pt, names[i], INIT_ZEROS, 0, 0, 0, 1, shape);
    WdRule r[8];
    char err[256];
    int n = wd_parse("head/kernel:3.0, */kernel:0.03, */Router/scale:0.03", r, 8, err,
                     sizeof err);
    float out[6];
    wd_per_tensor(r, n, &pt, out);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(out[i] == want[i], "%s: wd %g, want %g", names[i], out[i], want[i]);
    // First match wins: with */kernel listed first, head/kernel gets 0.03.
    n = wd_parse("*/kernel:0.03, head/kernel:3.0", r, 8, err, sizeof err);
    wd_per_tensor(r, n, &pt, out);
    ck_assert_msg(out[0] == 0.03f, "head/kernel: wd %g, want the first rule's 0.03", out[0]);
    wd_per_tensor(r, 0, &pt, out); // no rules: nothing decays
    for (int i = 0; i < 6; i++) ck_assert(out[i] == 0.0f);
    ptable_free(&pt);
}
END_TEST

// ---------------------------------------------------------------- clipping

START_TEST(test_clip_small) {
    float g[2] = {3.0f, 4.0f}; // norm sqrt(9 + 16) = 5
    ck_assert(clip_global_norm(g, 2, 1.0) == 5.0);
    // Scale 1/5 = 0.2f; 3*0.2f and 4*0.2f round to the floats nearest 0.6, 0.8.
    ck_assert_msg(g[0] == 0.6f && g[1] == 0.8f, "clipped to (%.9g, %.9g)", g[0], g[1]);
    float c2[2] = {3.0f, 4.0f}; // clip to 2: scale 2/5 = 0.4f
    ck_assert(clip_global_norm(c2, 2, 2.0) == 5.0);
    ck_assert_msg(c2[0] == 1.2f && c2[1] == 1.6f, "clipped to (%.9g, %.9g)", c2[0], c2[1]);
    float h[2] = {3.0f, 4.0f};
    ck_assert(clip_global_norm(h, 2, 0.0) == 5.0); // clip = 0: off
    ck_assert(h[0] == 3.0f && h[1] == 4.0f);
    float k[2] = {0.375f, 0.5f}; // norm 0.625 < 1: untouched
    ck_assert(clip_global_norm(k, 2, 1.0) == 0.625);
    ck_assert(k[0] == 0.375f && k[1] == 0.5f);
    ck_assert(clip_l2_norm(k, 0) == 0.0);
}
END_TEST

START_TEST(test_clip_large) {
    // 25 * 2^16 entries of 2^-8 (squares 2^-16, sum exactly 25) plus 7 zeros,
    // enough to take the parallel chunked path.
    size_t ones = 25u << 16, n = ones + 7;
    float *g = sm_malloc(n * sizeof *g);
    for (size_t i = 0; i < n; i++) g[i] = i < ones ? 1.0f / 256 : 0.0f;
    ck_assert(clip_l2_norm(g, n) == 5.0);
    ck_assert(clip_global_norm(g, n, 1.0) == 5.0);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += g[i] != (i < ones ? 0.2f / 256 : 0.0f);
    ck_assert_msg(bad == 0, "%zu entries not scaled to 0.2/256", bad);
    free(g);
}
END_TEST

// ---------------------------------------------------------------- Adam

// The implementation works in float32, the references below in double from
// the same float inputs; a handful of float roundings (2^-24 ~ 6e-8 each)
// stay far below 1e-6 relative, while any wrong term (missing bias
// correction, decay not scaled by lr, wrong tensor's decay) is off by >1e-3.
#define ADAM_TOL 1e-6

static void check_close(const char *what, int i, float got, double want) {
    ck_assert_msg(fabs(got - want) <= ADAM_TOL * fabs(want) + 1e-12,
                  "%s[%d] = %.9g, want %.9g", what, i, got, want);
}

// Two tensors: A/kernel (3) with wd 0.5 at offset 0, B/bias (2) with wd 0 at
// offset 16; floats 3..15 and 18..31 are padding.
typedef struct {
    ParamTable pt;
    float p[32], g[32], m[32], v[32];
} TinyModel;

#define PAD 7.0f
static const float P0[5] = {1.0f, -2.0f, 0.5f, 1.0f, -2.0f};  // A then B
static const float G1[5] = {0.5f, -0.25f, 2.0f, 0.5f, -0.25f};
static const float G2[5] = {-1.0f, 0.75f, 2.0f, -1.0f, 0.75f};
static const int IDX[5] = {0, 1, 2, 16, 17}; // block index of each element
static const double WD[5] = {0.5, 0.5, 0.5, 0.0, 0.0};

static void tiny_init(TinyModel *t) {
    ptable_init(&t->pt);
    int a[1] = {3}, b[1] = {2};
    ptable_add(&t->pt, "A/kernel", INIT_ZEROS, 0, 0, 0, 1, a);
    ptable_add(&t->pt, "B/bias", INIT_ZEROS, 0, 0, 0, 1, b);
    ck_assert(t->pt.total == 32 && t->pt.t[1].offset == 16);
    for (int i = 0; i < 32; i++) t->p[i] = t->g[i] = t->m[i] = t->v[i] = PAD;
    for (int j = 0; j < 5; j++) {
        t->p[IDX[j]] = P0[j];
        t->m[IDX[j]] = t->v[IDX[j]] = 0.0f;
    }
}

static void set_grads(TinyModel *t, const float *g) {
    for (int j = 0; j < 5; j++) t->g[IDX[j]] = g[j];
}

static void check_padding(const TinyModel *t) {
    for (int i = 0; i < 32; i++) {
        if (i < 3 || i == 16 || i == 17) continue;
        ck_assert_msg(t->p[i] == PAD && t->m[i] == PAD && t->v[i] == PAD,
                      "padding float %d was written", i);
    }
}

static const double B1 = 0.9, B2 = 0.999, EPS = 1e-8, LR1 = 0.1, LR2 = 0.05;

START_TEST(test_adam_one_step) {
    TinyModel t;
    tiny_init(&t);
    const float wd[2] = {0.5f, 0.0f};
    set_grads(&t, G1);
    adam_update(t.p, t.g, t.m, t.v, &t.pt, wd, LR1, B1, B2, EPS, 1, 1.0f);
    // After one step mhat = g and sqrt(vhat) = |g|, so the Adam direction is
    // g / (|g| + eps) and p1 = p0 - lr (g/(|g|+eps) + wd p0). For A[0]:
    // 1 - 0.1 * (0.5/(0.5+1e-8) + 0.5*1) = 0.850000002.
    check_close("p", 0, t.p[0], 0.850000002);
    for (int j = 0; j < 5; j++) {
        double g = G1[j], p0 = P0[j];
        check_close("m", IDX[j], t.m[IDX[j]], (1 - B1) * g);
        check_close("v", IDX[j], t.v[IDX[j]], (1 - B2) * g * g);
        check_close("p", IDX[j], t.p[IDX[j]], p0 - LR1 * (g / (fabs(g) + EPS) + WD[j] * p0));
    }
    check_padding(&t);
    ptable_free(&t.pt);
}
END_TEST

START_TEST(test_adam_two_steps) {
    TinyModel t;
    tiny_init(&t);
    const float wd[2] = {0.5f, 0.0f};
    set_grads(&t, G1);
    adam_update(t.p, t.g, t.m, t.v, &t.pt, wd, LR1, B1, B2, EPS, 1, 1.0f);
    set_grads(&t, G2);
    adam_update(t.p, t.g, t.m, t.v, &t.pt, wd, LR2, B1, B2, EPS, 2, 1.0f);
    for (int j = 0; j < 5; j++) {
        double g1 = G1[j], g2 = G2[j], p0 = P0[j];
        double p1 = p0 - LR1 * (g1 / (fabs(g1) + EPS) + WD[j] * p0);
        // Moments unrolled over both steps, bias-corrected with t = 2.
        double m2 = B1 * (1 - B1) * g1 + (1 - B1) * g2;
        double v2 = B2 * (1 - B2) * g1 * g1 + (1 - B2) * g2 * g2;
        double mhat = m2 / (1 - B1 * B1), vhat = v2 / (1 - B2 * B2);
        double p2 = p1 - LR2 * (mhat / (sqrt(vhat) + EPS) + WD[j] * p1);
        check_close("m", IDX[j], t.m[IDX[j]], m2);
        check_close("v", IDX[j], t.v[IDX[j]], v2);
        check_close("p", IDX[j], t.p[IDX[j]], p2);
    }
    check_padding(&t);
    ptable_free(&t.pt);
}
END_TEST

START_TEST(test_adam_wd_no_leak) {
    // B's elements equal A's first two; B must come out exactly as if no
    // tensor had any decay, while A must differ from that.
    TinyModel a, z;
    tiny_init(&a);
    tiny_init(&z);
    const float wd[2] = {0.5f, 0.0f}, none[2] = {0.0f, 0.0f};
    set_grads(&a, G1);
    set_grads(&z, G1);
    adam_update(a.p, a.g, a.m, a.v, &a.pt, wd, LR1, B1, B2, EPS, 1, 1.0f);
    adam_update(z.p, z.g, z.m, z.v, &z.pt, none, LR1, B1, B2, EPS, 1, 1.0f);
    ck_assert(memcmp(a.p + 16, z.p + 16, 2 * sizeof(float)) == 0);
    ck_assert(a.p[0] != z.p[0] && a.p[1] != z.p[1]);
    // And B with decay 0 equals A's undecayed value: p0 - lr g/(|g|+eps).
    check_close("p", 16, a.p[16], 1.0 - LR1 * (0.5 / (0.5 + EPS)));
    ptable_free(&a.pt);
    ptable_free(&z.pt);
}
END_TEST

START_TEST(test_adam_eps) {
    // eps matters only for tiny gradients: with g = 0 it keeps 0/0 out, and
    // with g ~ eps it halves the step. One tensor, wd 0, lr 0.1, t = 1, so
    // p1 = p0 - 0.1 * g/(|g| + eps): 1 - 0 = 1 and ~ 1 - 0.1 * 0.5 = 0.95.
    ParamTable pt;
    ptable_init(&pt);
    int shape[1] = {2};
    ptable_add(&pt, "w/kernel", INIT_ZEROS, 0, 0, 0, 1, shape);
    float p[16] = {1.0f, 1.0f}, g[16] = {0.0f, 1e-8f}, m[16] = {0}, v[16] = {0};
    const float wd[1] = {0.0f};
    adam_update(p, g, m, v, &pt, wd, LR1, B1, B2, EPS, 1, 1.0f);
    check_close("p", 0, p[0], 1.0);
    check_close("p", 1, p[1], 1.0 - LR1 * (double)g[1] / ((double)g[1] + EPS));
    ptable_free(&pt);
}
END_TEST

// ---------------------------------------------------------------- threads

typedef struct {
    ParamTable pt;
    float *p, *g, *m, *v, *wd;
} BigModel;

static float lcg_uniform(unsigned *s) { // in [-1, 1)
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 23) - 1.0f;
}

static void big_init(BigModel *b) {
    const int sizes[3] = {100003, 37, 65541};
    ptable_init(&b->pt);
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "t%d/kernel", i);
        ptable_add(&b->pt, name, INIT_ZEROS, 0, 0, 0, 1, &sizes[i]);
    }
    size_t n = b->pt.total;
    b->p = sm_calloc(n, sizeof(float));
    b->g = sm_calloc(n, sizeof(float));
    b->m = sm_calloc(n, sizeof(float));
    b->v = sm_calloc(n, sizeof(float));
    b->wd = sm_calloc(3, sizeof(float));
    b->wd[0] = 0.03f;
    b->wd[2] = 3.0f;
    unsigned s = 12345;
    for (size_t i = 0; i < n; i++) b->p[i] = lcg_uniform(&s);
}

static void big_free(BigModel *b) {
    free(b->p), free(b->g), free(b->m), free(b->v), free(b->wd);
    ptable_free(&b->pt);
}

// Three clipped Adam steps on `threads` threads; returns the first norm.
static double big_run(BigModel *b, int threads) {
    omp_set_num_threads(threads);
    unsigned s = 777;
    double first = 0;
    for (long t = 1; t <= 3; t++) {
        for (size_t i = 0; i < b->pt.total; i++) b->g[i] = lcg_uniform(&s);
        double norm = clip_global_norm(b->g, b->pt.total, 1.0);
        if (t == 1) first = norm;
        adam_update(b->p, b->g, b->m, b->v, &b->pt, b->wd, 1e-3, 0.9, 0.999, 1e-8, t, 1.0f);
    }
    return first;
}

// Clipping folded into Adam (gscale) must equal clipping in place first.
START_TEST(test_fused_clip) {
    BigModel x, y;
    big_init(&x);
    big_init(&y);
    unsigned s = 99;
    for (size_t i = 0; i < x.pt.total; i++) x.g[i] = y.g[i] = 3.0f * lcg_uniform(&s);
    double nx = clip_global_norm(x.g, x.pt.total, 1.0);
    adam_update(x.p, x.g, x.m, x.v, &x.pt, x.wd, 1e-3, 0.9, 0.999, 1e-8, 1, 1.0f);
    double ny = clip_l2_norm(y.g, y.pt.total);
    ck_assert(nx == ny && nx > 1.0);
    adam_update(y.p, y.g, y.m, y.v, &y.pt, y.wd, 1e-3, 0.9, 0.999, 1e-8, 1, clip_factor(ny, 1.0));
    size_t bytes = x.pt.total * sizeof(float);
    ck_assert(memcmp(x.p, y.p, bytes) == 0 && memcmp(x.m, y.m, bytes) == 0 &&
              memcmp(x.v, y.v, bytes) == 0);
    ck_assert(clip_factor(0.5, 1.0) == 1.0f && clip_factor(4.0, 0.0) == 1.0f);
    ck_assert(clip_factor(4.0, 1.0) == 0.25f);
    big_free(&x);
    big_free(&y);
}
END_TEST

// adam_update_zero: the same update as adam_update, and every gradient of
// the table read and set to zero (the padding between tensors untouched).
START_TEST(test_adam_zero_grads) {
    BigModel x, y;
    big_init(&x);
    big_init(&y);
    unsigned s = 7;
    for (size_t i = 0; i < x.pt.total; i++) x.g[i] = y.g[i] = lcg_uniform(&s);
    for (long t = 1; t <= 2; t++) {
        adam_update(x.p, x.g, x.m, x.v, &x.pt, x.wd, 1e-3, 0.9, 0.999, 1e-8, t, 0.5f);
        adam_update_zero(y.p, y.g, y.m, y.v, &y.pt, y.wd, 1e-3, 0.9, 0.999, 1e-8, t, 0.5f);
        if (t == 1) memcpy(y.g, x.g, x.pt.total * sizeof(float)); // same gradients again
    }
    size_t bytes = x.pt.total * sizeof(float), nonzero = 0;
    ck_assert(memcmp(x.p, y.p, bytes) == 0 && memcmp(x.m, y.m, bytes) == 0 &&
              memcmp(x.v, y.v, bytes) == 0);
    for (int i = 0; i < y.pt.n; i++)
        for (size_t j = 0; j < y.pt.t[i].numel; j++) nonzero += y.g[y.pt.t[i].offset + j] != 0.0f;
    ck_assert_msg(nonzero == 0, "%zu gradients left non-zero", nonzero);
    big_free(&x);
    big_free(&y);
}
END_TEST

// optim_step with a bf16 copy: params, m, v and the zeroed gradients as
// adam_update_zero's, and the copy holds the bf16 of every updated parameter,
// the very bits gemm_to_bf16 gives (what a forward would convert), padding
// untouched.
START_TEST(test_adam_writes_bf16) {
    BigModel x, y;
    big_init(&x);
    big_init(&y);
    Config c = {0};
    c.b1 = 0.9, c.b2 = 0.999, c.eps = 1e-8;
    Optim o = {.m = y.m, .v = y.v, .wd = y.wd};
    size_t n = x.pt.total;
    uint16_t *half = sm_malloc(n * sizeof(uint16_t)), *conv = sm_malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) half[i] = 0x7777;
    unsigned s = 5;
    for (long t = 1; t <= 2; t++) {
        for (size_t i = 0; i < n; i++) x.g[i] = y.g[i] = lcg_uniform(&s);
        adam_update_zero(x.p, x.g, x.m, x.v, &x.pt, x.wd, 1e-3, c.b1, c.b2, c.eps, t, 0.5f);
        optim_step(&o, y.p, y.g, half, &y.pt, &c, 1e-3, t, 0.5f);
    }
    size_t bytes = n * sizeof(float), diff = 0, pad = 0;
    ck_assert(memcmp(x.p, y.p, bytes) == 0 && memcmp(x.m, y.m, bytes) == 0 &&
              memcmp(x.v, y.v, bytes) == 0 && memcmp(x.g, y.g, bytes) == 0);
    gemm_to_bf16(conv, y.p, n);
    for (int i = 0; i < y.pt.n; i++)
        for (size_t j = 0; j < y.pt.t[i].numel; j++) {
            size_t k = y.pt.t[i].offset + j;
            diff += half[k] != conv[k];
        }
    for (size_t k = 0; k < n; k++) pad += half[k] == 0x7777;
    ck_assert_msg(diff == 0, "%zu bf16 weights differ from gemm_to_bf16", diff);
    size_t used = 0;
    for (int i = 0; i < y.pt.n; i++) used += y.pt.t[i].numel;
    ck_assert_msg(pad == n - used, "%zu untouched, %zu padding", pad, n - used);
    free(half), free(conv);
    big_free(&x);
    big_free(&y);
}
END_TEST

START_TEST(test_thread_count_invariance) {
    BigModel x, y;
    big_init(&x);
    big_init(&y);
    double nx = big_run(&x, 1), ny = big_run(&y, 4);
    omp_set_num_threads(omp_get_num_procs());
    size_t bytes = x.pt.total * sizeof(float);
    ck_assert_msg(nx == ny, "grad norm %.17g on 1 thread, %.17g on 4", nx, ny);
    ck_assert_msg(memcmp(x.p, y.p, bytes) == 0, "params differ between 1 and 4 threads");
    ck_assert_msg(memcmp(x.m, y.m, bytes) == 0, "m differs between 1 and 4 threads");
    ck_assert_msg(memcmp(x.v, y.v, bytes) == 0, "v differs between 1 and 4 threads");
    big_free(&x);
    big_free(&y);
}
END_TEST

static Suite *optim_suite(void) {
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sched_warmup);
    tcase_add_test(tc, test_fused_clip);
    tcase_add_test(tc, test_sched_rsqrt);
    tcase_add_test(tc, test_sched_cosine_linear);
    tcase_add_test(tc, test_sched_constant_cooldown);
    tcase_add_test(tc, test_wd_parse);
    tcase_add_test(tc, test_wd_malformed);
    tcase_add_test(tc, test_wd_glob);
    tcase_add_test(tc, test_wd_per_tensor);
    tcase_add_test(tc, test_clip_small);
    tcase_add_test(tc, test_clip_large);
    tcase_add_test(tc, test_adam_one_step);
    tcase_add_test(tc, test_adam_two_steps);
    tcase_add_test(tc, test_adam_wd_no_leak);
    tcase_add_test(tc, test_adam_eps);
    tcase_add_test(tc, test_adam_zero_grads);
    tcase_add_test(tc, test_thread_count_invariance);
    tcase_add_test(tc, test_adam_writes_bf16);
    suite_add_tcase(s, tc);
    return s;
}

SM_TEST_MAIN(optim_suite)
