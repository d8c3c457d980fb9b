// The GEMM entry point (src/model/gemm.h) in bf16 against fp32, for every
// operand form the model uses (NN, NT, TN; alpha = 1/sqrt(Dh); beta 0 and 1;
// row strides wider than the operand, as attention's per-head views), called
// outside and inside a parallel region, and the kernels built on it.
//
// Tolerance, element-wise and rigorous: rounding an input to bf16 (8-bit
// significand, round to nearest) changes it by at most u = 2^-9 relative,
// so each product a*b by at most (2u + u^2)|a||b|; bf16 x bf16 products are
// exact in fp32 and the sum adds fp32 rounding of at most K * 2^-24 of
// sum |a||b|. Hence |C_bf16 - C_fp32| <= (2u + u^2 + 2 K 2^-24) (|A||B|)_ij
// (both results carry their own fp32 summation error, hence the 2). The
// check is per element against (|A||B|)_ij, computed in double, so it holds
// for any data, and a product that ignored bf16 (error 0) or rounded to
// fewer bits (error > 2^-8) would fail it: the test also requires the bf16
// result to differ from fp32 somewhere, proving the bf16 path ran.
//
// oneDNN against the rounded-sgemm path (same bf16 inputs, both accumulating
// in fp32): only the summation order differs, so the bound is the fp32 part
// alone, 2 K 2^-24 (|A||B|)_ij.
//
// fp32 through oneDNN against fp32 through sgemm (the same fp32 inputs):
// each result is within (K + 2) 2^-24 (|alpha||A||B| + |beta C0|)_ij of the
// exact value (K-term summation, the alpha scale and the beta add), so the
// two within twice that. A product through bf16 (error up to 2^-8) fails it.
#include <math.h>
#include <omp.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/common.h"
#include "core/rng.h"
#include "model/gemm.h"
#include "model/layers.h"
#include "testutil.h"

#define U_BF16 (1.0 / 512.0)   // unit roundoff of bf16, 2^-9
#define U_F32 (1.0 / 16777216.0)

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
} Shape;

static void fill(float *p, size_t n, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed, 7);
    for (size_t i = 0; i < n; i++) p[i] = rng_normal(&r);
}

static float at(const float *X, int trans, int i, int j, int ld) {
    return trans ? X[(size_t)j * ld + i] : X[(size_t)i * ld + j];
}

// Runs shape s at `prec`; C starts from C0 (for beta).
static void run(const Shape *s, int prec, const float *A, const float *B, const float *C0,
                float *C, size_t nc) {
    memcpy(C, C0, nc * sizeof(float));
    gemm_set_precision(prec);
    gemm_run(s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->M, s->N,
             s->K, s->alpha, A, s->lda, B, s->ldb, s->beta, C, s->ldc);
    gemm_set_precision(GEMM_FP32);
}

// Worst |X - Y| / bound_ij over C, bound_ij = (|alpha| |A||B|_ij + |beta C0_ij|) * rel.
static double worst(const Shape *s, const float *A, const float *B, const float *C0,
                    const float *X, const float *Y, double rel, int *differs) {
    double w = 0;
    for (int i = 0; i < s->M; i++)
        for (int j = 0; j < s->N; j++) {
            double abs_ab = 0;
            for (int k = 0; k < s->K; k++)
                abs_ab += fabs((double)at(A, s->ta, i, k, s->lda) * at(B, s->tb, k, j, s->ldb));
            size_t o = (size_t)i * s->ldc + j;
            double bound = rel * (fabs(s->alpha) * abs_ab + fabs(s->beta * C0[o])) + 1e-30;
            double e = fabs((double)X[o] - Y[o]) / bound;
            if (X[o] != Y[o]) *differs = 1;
            if (e > w || e != e) w = e != e ? INFINITY : e;
        }
    return w;
}

static void check_shape(const Shape *s, int inside_parallel) {
    size_t na = (size_t)(s->ta ? s->K : s->M) * s->lda, nb = (size_t)(s->tb ? s->N : s->K) * s->ldb;
    size_t nc = (size_t)s->M * s->ldc;
    float *A = sm_malloc(na * 4), *B = sm_malloc(nb * 4), *C0 = sm_malloc(nc * 4);
    float *c32 = sm_malloc(nc * 4), *cbf = sm_malloc(nc * 4), *cref = sm_malloc(nc * 4);
    fill(A, na, 1 + s->M), fill(B, nb, 2 + s->N), fill(C0, nc, 3 + s->K);
    run(s, GEMM_FP32, A, B, C0, c32, nc);
    if (inside_parallel) {
        // every thread runs the same product on its own output; all must agree
        int nt = omp_get_max_threads();
        float *outs = sm_malloc(nc * 4 * (size_t)nt);
        gemm_set_precision(GEMM_BF16);
        #pragma omp parallel num_threads(nt)
        {
            float *o = outs + nc * (size_t)omp_get_thread_num();
            memcpy(o, C0, nc * 4);
            gemm_run(s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->M,
                     s->N, s->K, s->alpha, A, s->lda, B, s->ldb, s->beta, o, s->ldc);
        }
        gemm_set_precision(GEMM_FP32);
        memcpy(cbf, outs, nc * 4);
        for (int t = 1; t < nt; t++)
            ck_assert_msg(!memcmp(outs, outs + nc * (size_t)t, nc * 4), "thread %d differs", t);
        free(outs);
    } else {
        run(s, GEMM_BF16, A, B, C0, cbf, nc);
    }
    run(s, GEMM_BF16_REF, A, B, C0, cref, nc);
    int d1 = 0, d2 = 0;
    double e_bf = worst(s, A, B, C0, cbf, c32, 2 * U_BF16 + U_BF16 * U_BF16 + 2 * s->K * U_F32, &d1);
    double e_ref = worst(s, A, B, C0, cref, c32, 2 * U_BF16 + U_BF16 * U_BF16 + 2 * s->K * U_F32, &d2);
    int d3 = 0;
    double e_order = worst(s, A, B, C0, cbf, cref, 2 * s->K * U_F32, &d3);
    printf("%c%c M=%d N=%d K=%d alpha=%g beta=%g%s: bf16/fp32 %.3f of bound, ref/fp32 %.3f, "
           "bf16/ref %.3f\n", "NT"[s->ta], "NT"[s->tb], s->M, s->N, s->K, s->alpha, s->beta,
           inside_parallel ? " (in parallel)" : "", e_bf, e_ref, e_order);
    ck_assert_msg(e_bf <= 1.0, "bf16 product beyond the bf16 bound (%.3f)", e_bf);
    ck_assert_msg(e_ref <= 1.0, "rounded-sgemm product beyond the bf16 bound (%.3f)", e_ref);
    ck_assert_msg(e_order <= 1.0, "bf16 paths differ by more than summation order (%.3f)", e_order);
    ck_assert_msg(d1 && d2, "bf16 result identical to fp32: no rounding happened");
    free(A); free(B); free(C0); free(c32); free(cbf); free(cref);
}

static const Shape SHAPES[] = {
        {0, 0, 37, 45, 70, 70, 45, 45, 1.0f, 0.0f},     // dense forward
        {0, 0, 37, 45, 70, 70, 45, 45, 1.0f, 1.0f},     // dense forward onto a bias / residual
        {0, 1, 37, 70, 45, 45, 45, 70, 1.0f, 1.0f},     // dinp += dout @ w^T
        {1, 0, 70, 45, 37, 70, 45, 45, 1.0f, 1.0f},     // dw += inp^T @ dout
        {0, 1, 29, 29, 16, 48, 48, 29, 0.25f, 0.0f},    // attention q k^T on head views
        {0, 0, 29, 16, 29, 29, 48, 48, 1.0f, 0.0f},     // attention a v into a head view
        {1, 0, 29, 16, 29, 29, 48, 48, 1.0f, 1.0f},     // dv += a^T dout
        {0, 0, 8, 300, 33, 33, 300, 300, 1.0f, 0.0f},   // few rows (experts), wide output
        {0, 0, 1, 7, 400, 400, 7, 7, 1.0f, 0.0f},       // one row, long k (MAP query)
};
#define NSHAPES (sizeof SHAPES / sizeof *SHAPES)

START_TEST(test_products) {
    for (size_t i = 0; i < NSHAPES; i++) {
        check_shape(&SHAPES[i], 0);
        check_shape(&SHAPES[i], 1);
    }
}
END_TEST

// Runs s at prec in every thread of a parallel region; all must agree.
static void run_threads(const Shape *s, int prec, const float *A, const float *B,
                        const float *C0, float *C, size_t nc) {
    int nt = omp_get_max_threads();
    float *outs = sm_malloc(nc * 4 * (size_t)nt);
    gemm_set_precision(prec);
    #pragma omp parallel num_threads(nt)
    {
        float *o = outs + nc * (size_t)omp_get_thread_num();
        memcpy(o, C0, nc * 4);
        gemm_run(s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->M,
                 s->N, s->K, s->alpha, A, s->lda, B, s->ldb, s->beta, o, s->ldc);
    }
    gemm_set_precision(GEMM_FP32);
    memcpy(C, outs, nc * 4);
    for (int t = 1; t < nt; t++)
        ck_assert_msg(!memcmp(outs, outs + nc * (size_t)t, nc * 4), "thread %d differs", t);
    free(outs);
}

// fp32: oneDNN's matmul on the operands in place (strided head views, alpha,
// beta) against sgemm, outside and inside a parallel region; GEMM_FP32 gives
// bit for bit what its rule picks; a repeated call is bit-identical.
START_TEST(test_fp32_paths) {
    GemmInfo g1;
    for (size_t i = 0; i < NSHAPES; i++) {
        const Shape *s = &SHAPES[i];
        size_t na = (size_t)(s->ta ? s->K : s->M) * s->lda, nb = (size_t)(s->tb ? s->N : s->K) * s->ldb;
        size_t nc = (size_t)s->M * s->ldc;
        float *A = sm_malloc(na * 4), *B = sm_malloc(nb * 4), *C0 = sm_malloc(nc * 4);
        float *cb = sm_malloc(nc * 4), *cd = sm_malloc(nc * 4), *cd2 = sm_malloc(nc * 4);
        float *cp = sm_malloc(nc * 4), *cdef = sm_malloc(nc * 4);
        fill(A, na, 1 + s->M), fill(B, nb, 2 + s->N), fill(C0, nc, 3 + s->K);
        run(s, GEMM_FP32_BLAS, A, B, C0, cb, nc);
        run(s, GEMM_FP32_DNNL, A, B, C0, cd, nc);
        run(s, GEMM_FP32_DNNL, A, B, C0, cd2, nc);
        run_threads(s, GEMM_FP32_DNNL, A, B, C0, cp, nc);
        run(s, GEMM_FP32, A, B, C0, cdef, nc);
        int d = 0;
        double e = worst(s, A, B, C0, cd, cb, 2 * (s->K + 2) * U_F32, &d);
        double ep = worst(s, A, B, C0, cp, cb, 2 * (s->K + 2) * U_F32, &d);
        int rule = gemm_fp32_dnnl();
        printf("fp32 %c%c M=%d N=%d K=%d: oneDNN/sgemm %.3f of bound (in parallel %.3f); "
               "rule: %s\n", "NT"[s->ta], "NT"[s->tb], s->M, s->N, s->K, e, ep,
               rule ? "oneDNN" : "sgemm");
        ck_assert_msg(e <= 1.0 && ep <= 1.0, "fp32 oneDNN beyond the fp32 bound (%.3f, %.3f)", e, ep);
        ck_assert_msg(!memcmp(cd, cd2, nc * 4), "oneDNN fp32 not repeatable");
        ck_assert_msg(!memcmp(cdef, rule ? cd : cb, nc * 4), "GEMM_FP32 did not follow its rule");
        free(A); free(B); free(C0); free(cb); free(cd); free(cd2); free(cp); free(cdef);
    }
    gemm_info(&g1);
    // (earlier tests of this process planned some of these shapes already)
    printf("fp32 plans: %d, of which oneDNN %d\n", g1.fp32_plans, g1.fp32_dnnl_plans);
    ck_assert_int_ge(g1.fp32_plans, (int)NSHAPES);
    if (g1.have_dnnl) ck_assert_int_ge(g1.fp32_dnnl_plans, (int)NSHAPES);
}
END_TEST

// The fp32 bound can fail: a bf16 product breaks it on the same data.
START_TEST(test_fp32_bound_can_fail) {
    const Shape *s = &SHAPES[0];
    size_t na = (size_t)s->M * s->lda, nb = (size_t)s->K * s->ldb, nc = (size_t)s->M * s->ldc;
    float *A = sm_malloc(na * 4), *B = sm_malloc(nb * 4), *C0 = sm_calloc(nc, 4);
    float *cb = sm_malloc(nc * 4), *c16 = sm_malloc(nc * 4);
    fill(A, na, 8), fill(B, nb, 9);
    run(s, GEMM_FP32_BLAS, A, B, C0, cb, nc);
    run(s, GEMM_BF16_REF, A, B, C0, c16, nc);
    int d = 0;
    double e = worst(s, A, B, C0, c16, cb, 2 * (s->K + 2) * U_F32, &d);
    printf("bf16 against the fp32 bound: %.1f of it\n", e);
    ck_assert_double_gt(e, 1.0);
    free(A); free(B); free(C0); free(cb); free(c16);
}
END_TEST

// A long k: the fp32 part of the bound grows with K, the bf16 part does not.
START_TEST(test_long_k) {
    Shape s = {0, 0, 16, 24, 3000, 3000, 24, 24, 1.0f, 0.0f};
    check_shape(&s, 0);
}
END_TEST

// x rounded to a significand of `bits` bits (bf16 has 8).
static float round_bits(float x, int bits) {
    int e;
    float m = frexpf(x, &e);  // x = m 2^e, 0.5 <= |m| < 1
    return ldexpf(rintf(ldexpf(m, bits)), e - bits);
}

// The bound can fail: a product through fp16-like rounding (fewer bits)
// would exceed it. Rounding the inputs to 6 significand bits does, while
// rounding to bf16's 8 bits by the same helper stays inside.
START_TEST(test_bound_can_fail) {
    Shape s = {0, 0, 20, 20, 64, 64, 20, 20, 1.0f, 0.0f};
    size_t n = 64 * 20;
    float *A = sm_malloc(n * 4), *B = sm_malloc(n * 4), *C0 = sm_calloc(400, 4);
    float *A6 = sm_malloc(n * 4), *B6 = sm_malloc(n * 4), *c32 = sm_malloc(1600), *c6 = sm_malloc(1600);
    fill(A, n, 5), fill(B, n, 6);
    for (size_t i = 0; i < n; i++) A6[i] = round_bits(A[i], 6), B6[i] = round_bits(B[i], 6);
    run(&s, GEMM_FP32, A, B, C0, c32, 400);
    run(&s, GEMM_FP32, A6, B6, C0, c6, 400);
    int d = 0;
    double e = worst(&s, A, B, C0, c6, c32, 2 * U_BF16 + U_BF16 * U_BF16 + 2 * 64 * U_F32, &d);
    printf("6-bit rounding: %.3f of the bf16 bound\n", e);
    ck_assert_double_gt(e, 1.0);
    free(A); free(B); free(C0); free(A6); free(B6); free(c32); free(c6);
}
END_TEST

// gemm_round_bf16: exact halfway cases round to even, NaN stays NaN,
// subnormals become zeros of their sign (as VCVTNEPS2BF16); and the bf16 a
// product reads (gemm_to_bf16, the AVX512-BF16 instruction where the CPU has
// it) is the same bits for all of these.
START_TEST(test_rounding) {
    enum { NR = 9 };
    float in[NR], out[NR];
    uint32_t bits[NR] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7fc00001u, 0x7f7fffffu,
                         0x00000000u, 0x000b1234u, 0x807fffffu, 0x00800000u};
    uint32_t want[NR] = {0x3f800000u, 0x3f820000u, 0x3f810000u, 0, 0x7f800000u, 0,
                         0x00000000u, 0x80000000u, 0x00800000u};
    memcpy(in, bits, sizeof in);
    gemm_round_bf16(out, in, NR);
    uint32_t got[NR];
    memcpy(got, out, sizeof got);
    enum { NV = 64 };  // long enough for the vector conversion
    float vin[NV];
    uint16_t vout[NV];
    for (int i = 0; i < NV; i++) vin[i] = in[i % NR];
    gemm_to_bf16(vout, vin, NV);
    for (int i = 0; i < NV; i++)
        if (i % NR != 3)
            ck_assert_msg(vout[i] == (uint16_t)(want[i % NR] >> 16), "gemm_to_bf16 %08x -> %04x",
                          bits[i % NR], vout[i]);
    for (int i = 0; i < NR; i++) {
        if (i == 3) ck_assert(isnan(out[i]));
        else ck_assert_msg(got[i] == want[i], "%08x -> %08x, want %08x", bits[i], got[i], want[i]);
    }
}
END_TEST

// The kernels on top: dense and attention forward/backward in bf16 within a
// few times the product bound of their output scale (chains of two products).
START_TEST(test_kernels) {
    const int B = 2, N = 13, H = 2, Dh = 8, D = H * Dh, R = B * N;
    size_t nd = (size_t)R * D, na = (size_t)B * H * N * N;
    float *q = sm_malloc(nd * 4), *k = sm_malloc(nd * 4), *v = sm_malloc(nd * 4);
    float *o[2], *att[2], *dq[2], *dk[2], *dv[2], *scr = sm_malloc(na * 4);
    fill(q, nd, 11), fill(k, nd, 12), fill(v, nd, 13);
    for (int p = 0; p < 2; p++) {
        o[p] = sm_malloc(nd * 4), att[p] = sm_malloc(na * 4);
        dq[p] = sm_calloc(nd, 4), dk[p] = sm_calloc(nd, 4), dv[p] = sm_calloc(nd, 4);
        gemm_set_precision(p ? GEMM_BF16 : GEMM_FP32);
        attention_forward(o[p], att[p], q, k, v, B, N, N, H, Dh);
        attention_backward(dq[p], dk[p], dv[p], scr, q, att[p], q, k, v, B, N, N, H, Dh);
        gemm_set_precision(GEMM_FP32);
    }
    // each output is a chain of at most 3 products and a softmax: 3 x 2^-8
    // of its scale, plus slack for the softmax's amplification of logit errors
    double tol = 4 * 2 * U_BF16;
    double eo = sm_rel_err(o[1], o[0], nd, 0), eq = sm_rel_err(dq[1], dq[0], nd, 0);
    double ek = sm_rel_err(dk[1], dk[0], nd, 0), ev = sm_rel_err(dv[1], dv[0], nd, 0);
    printf("attention bf16 vs fp32: out %.2e dq %.2e dk %.2e dv %.2e (tolerance %.2e)\n", eo, eq,
           ek, ev, tol);
    ck_assert(eo < tol && eq < tol && ek < tol && ev < tol);
    ck_assert(eo > 0 && eq > 0);
    for (int p = 0; p < 2; p++) {
        free(o[p]); free(att[p]); free(dq[p]); free(dk[p]); free(dv[p]);
    }
    free(q); free(k); free(v); free(scr);
}
END_TEST

// Planning computes nothing and registers shapes; a later call of a planned
// shape creates nothing new.
// The MLP at bf16 writes the GELU output and its gradient straight as bf16
// (gemm_run_h): the same numbers, bit for bit, as the composition of the
// fp32 kernels whose products convert those operands on each call, on both
// bf16 paths (oneDNN and rounded sgemm), for the dense shape and an expert's
// few rows inside a parallel region; and bf16 operands at fp32 are refused.
static void mlp_both(int prec, int R, int D, int M, int inpar) {
    size_t nx = (size_t)R * D, nh = (size_t)R * M, nw = (size_t)D * M;
    // w1 and w2 in one block, as a model's parameters: the model's run reads
    // them from a registered bf16 copy (gemm_shadow; w2 at an offset)
    float *x = sm_malloc(nx * 4), *wb = sm_malloc(2 * nw * 4), *w1 = wb, *w2 = wb + nw;
    uint16_t *wh = sm_malloc(2 * nw * sizeof(uint16_t));
    float *b1 = sm_malloc(M * 4), *b2 = sm_malloc(D * 4), *dy = sm_malloc(nx * 4);
    fill(x, nx, 21), fill(w1, nw, 22), fill(w2, nw, 23), fill(b1, M, 24), fill(b2, D, 25);
    fill(dy, nx, 26);
    gemm_to_bf16(wh, wb, 2 * nw);
    float *out[2], *dx[2], *g1[2], *g2[2], *gb1[2], *gb2[2];
    for (int p = 0; p < 2; p++) {
        out[p] = sm_malloc(nx * 4), dx[p] = sm_malloc(nx * 4);
        g1[p] = sm_calloc(nw, 4), g2[p] = sm_calloc(nw, 4);
        gb1[p] = sm_calloc(M, 4), gb2[p] = sm_calloc(D, 4);
        for (size_t i = 0; i < nx; i++) out[p][i] = 0.5f, dx[p][i] = 0.25f;
        float *h = sm_malloc(nh * 4), *hg = sm_malloc(nh * 4), *dh = sm_malloc(nh * 4);
        float *dhg = sm_malloc(nh * 4);
        gemm_set_precision(prec);
        #pragma omp parallel if (inpar) num_threads(2)
        {
            #pragma omp single
            {
                if (p == 0) {  // the model's kernel, weights from their bf16 copy
                    gemm_shadow(wb, 2 * nw, wh);
                    mlp_forward(out[p], h, hg, x, w1, b1, w2, b2, R, D, M, 1, 0);
                    mlp_backward(dx[p], g1[p], gb1[p], g2[p], gb2[p], dh, dhg, dy, x, h, hg,
                                 w1, w2, R, D, M, 0);
                    gemm_shadow_drop(wb);
                } else {       // fp32 buffers, converted by each product
                    dense_forward(h, x, w1, b1, R, D, M, 0);
                    gelu_forward(hg, h, nh);
                    dense_forward(out[p], hg, w2, b2, R, M, D, 1);
                    dense_backward(dhg, g2[p], gb2[p], dy, hg, w2, R, M, D, 0);
                    gelu_backward(dh, dhg, h, nh);
                    dense_backward(dx[p], g1[p], gb1[p], dh, x, w1, R, D, M, 0);
                }
            }
        }
        gemm_set_precision(GEMM_FP32);
        free(h), free(hg), free(dh), free(dhg);
    }
    ck_assert_mem_eq(out[0], out[1], nx * 4);
    ck_assert_mem_eq(dx[0], dx[1], nx * 4);
    ck_assert_mem_eq(g1[0], g1[1], nw * 4);
    ck_assert_mem_eq(g2[0], g2[1], nw * 4);
    ck_assert_mem_eq(gb1[0], gb1[1], M * 4);
    ck_assert_mem_eq(gb2[0], gb2[1], D * 4);
    // and the products really read the copy: with it zeroed, out = b2 exactly
    memset(wh, 0, 2 * nw * sizeof(uint16_t));
    float *h = sm_malloc(nh * 4), *hg = sm_malloc(nh * 4), *o2 = sm_malloc(nx * 4);
    memset(o2, 0, nx * 4);
    gemm_set_precision(prec);
    gemm_shadow(wb, 2 * nw, wh);
    mlp_forward(o2, h, hg, x, w1, b1, w2, b2, R, D, M, 0, 0);
    gemm_shadow_drop(wb);
    gemm_set_precision(GEMM_FP32);
    for (size_t i = 0; i < nx; i++) ck_assert_float_eq(o2[i], b2[i % D]);
    free(h), free(hg), free(o2);
    free(wh);
    float *all[] = {x, wb, b1, b2, dy, out[0], out[1], dx[0], dx[1], g1[0], g1[1], g2[0],
                    g2[1], gb1[0], gb1[1], gb2[0], gb2[1]};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
}

START_TEST(test_mlp_bf16_operands) {
    const int precs[] = {GEMM_BF16, GEMM_BF16_REF};
    for (int i = 0; i < 2; i++) {
        mlp_both(precs[i], 40, 24, 96, 0);   // several 64-column blocks of db1
        mlp_both(precs[i], 8, 16, 40, 1);    // an expert's rows, one thread each
    }
}
END_TEST

static void fp32_with_bf16_operand(void) {
    uint16_t h[4] = {0};
    float b[4] = {0}, c[4];
    gemm_set_precision(GEMM_FP32);
    gemm_run_h(CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, NULL, h, 2, b, NULL, 2, 0.0f, c, 2);
}

// Runs f in a child; 1 when it exits non-zero with `msg` on stderr.
static int dies_saying(void (*f)(void), const char *msg) {
    int fd[2];
    ck_assert_int_eq(pipe(fd), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]);
        f();
        _exit(0);
    }
    close(fd[1]);
    char buf[4096] = {0};
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd[0], buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)r;
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) != 0 && strstr(buf, msg) != NULL;
}

static void strided_bf16_operand(void) {
    uint16_t h[8] = {0};
    float b[4] = {0}, c[4];
    gemm_set_precision(GEMM_BF16);
    gemm_run_h(CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, NULL, h, 4, b, NULL, 2, 0.0f, c, 2);
}

START_TEST(test_bf16_operand_at_fp32) {
    ck_assert_msg(dies_saying(fp32_with_bf16_operand, "bf16 operands for an fp32 product"),
                  "gemm_run_h took bf16 operands at fp32");
    // a bf16 operand must be contiguous (lda 4 for a 2x2 A is a strided view)
    ck_assert_msg(dies_saying(strided_bf16_operand, "bf16 A not contiguous (lda 4)"),
                  "gemm_run_h took a strided bf16 operand");
}
END_TEST

START_TEST(test_planning) {
    GemmInfo g0, g1, g2;
    gemm_info(&g0);
    float A[6 * 5], B[5 * 3], C[6 * 3];
    fill(A, 30, 1), fill(B, 15, 2);
    for (int i = 0; i < 18; i++) C[i] = 42.0f;
    gemm_set_precision(GEMM_BF16);
    gemm_plan_begin();
    gemm_run(CblasNoTrans, CblasNoTrans, 6, 3, 5, 1.0f, A, 5, B, 3, 0.0f, C, 3);
    gemm_plan_end();
    for (int i = 0; i < 18; i++) ck_assert_float_eq(C[i], 42.0f);
    gemm_info(&g1);
    ck_assert_int_eq(g1.plans, g0.plans + 1);
    ck_assert_int_eq(g1.late_plans, g0.late_plans);
    gemm_run(CblasNoTrans, CblasNoTrans, 6, 3, 5, 1.0f, A, 5, B, 3, 0.0f, C, 3);
    gemm_info(&g2);
    ck_assert_int_eq(g2.plans, g1.plans);
    ck_assert(C[0] != 42.0f);
    gemm_set_precision(GEMM_FP32);
    printf("oneDNN %s: %s %s; impls: %s; %d of %d shapes through sgemm\n",
           g2.have_dnnl ? "built" : "not built", g2.version, g2.isa, g2.impls, g2.sgemm_plans,
           g2.plans);
}
END_TEST

static Suite *gemm_suite(void) {
    Suite *s = suite_create("gemm");
    TCase *t = tcase_create("bf16");
    tcase_add_test(t, test_rounding);
    tcase_add_test(t, test_products);
    tcase_add_test(t, test_long_k);
    tcase_add_test(t, test_bound_can_fail);
    tcase_add_test(t, test_kernels);
    tcase_add_test(t, test_planning);
    tcase_add_test(t, test_mlp_bf16_operands);
    tcase_add_test(t, test_bf16_operand_at_fp32);
    tcase_add_test(t, test_fp32_paths);
    tcase_add_test(t, test_fp32_bound_can_fail);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(gemm_suite)
