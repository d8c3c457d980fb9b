// `make bench-gemm`: the products of a ViT-S/16 / Soft MoE S/16 step at
// batch 8, one shape at a time: fp32 sgemm, oneDNN's fp32 matmul on the
// operands in place, the fp32 few-row expert kernels (kernels.c, for up to
// 128 rows), and bf16 through gemm_run as the step runs
// it (operands converted to bf16, then oneDNN; or rounded inputs through
// sgemm, the path without oneDNN), best of 20 calls each. Run with
// OMP_NUM_THREADS=1 for the products the step runs one per thread (attention
// per image and head, Soft MoE per image, the experts), 2 for the rest.
#include <omp.h>
#include <stdio.h>

#include "core/common.h"
#include "model/gemm.h"
#include "model/layers.h"

static double best_of(int prec, int few, const int *q, const float *A, const float *B, float *C,
                      int reps) {
    const int ta = q[0], tb = q[1], M = q[2], N = q[3], K = q[4];
    CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    gemm_set_precision(prec);
    gemm_plan_begin();
    gemm_run(TA, TB, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C, N);
    gemm_plan_end();
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = sm_now();
        if (!few) gemm_run(TA, TB, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C, N);
        else if (!tb) fewrow_nn(C, A, B, NULL, M, K, N, 0);
        else fewrow_nt(C, A, B, M, N, K, 0);
        double t = sm_now() - t0;
        if (r > 0 && t < best) best = t;
    }
    gemm_set_precision(GEMM_FP32);
    return best;
}

int main(void) {
    // {transA, transB, M, N, K, what}
    static const struct { int q[5]; const char *what; } S[] = {
        {{0, 0, 1568, 384, 768}, "patch embedding"},
        {{0, 0, 1568, 384, 384}, "q/k/v/out"},
        {{0, 1, 1568, 384, 384}, "q/k/v/out dx"},
        {{1, 0, 384, 384, 1568}, "q/k/v/out dw"},
        {{0, 0, 1568, 1536, 384}, "MLP Dense_0"},
        {{0, 0, 1568, 384, 1536}, "MLP Dense_1"},
        {{1, 0, 384, 1536, 1568}, "MLP Dense_0 dw"},
        {{0, 1, 196, 196, 64}, "attention q k^T (per image, head)"},
        {{0, 0, 196, 64, 196}, "attention a v"},
        {{1, 0, 196, 64, 196}, "attention dv, dk"},
        {{0, 0, 1568, 128, 384}, "Soft MoE logits (32x4)"},
        {{1, 0, 384, 128, 1568}, "Soft MoE dmu"},
        {{1, 0, 128, 384, 196}, "dispatch (per image)"},
        {{0, 0, 196, 384, 128}, "combine (per image)"},
        {{0, 0, 32, 1536, 384}, "expert Dense_0, 32 rows (32x4)"},
        {{0, 0, 32, 384, 1536}, "expert Dense_1, 32 rows"},
        {{0, 1, 32, 384, 1536}, "expert dx, 32 rows"},
        {{1, 0, 384, 1536, 32}, "expert dw, 32 rows"},
        {{0, 0, 8, 1536, 384}, "expert Dense_0, 8 rows (128x1)"},
        {{0, 1, 8, 384, 1536}, "expert dx, 8 rows"},
        {{0, 0, 8, 1000, 384}, "head"},
    };
    const size_t n = (size_t)1568 * 1536 + 64;
    float *A = sm_aligned(n * 4), *B = sm_aligned(n * 4), *C = sm_aligned(n * 4);
    for (size_t i = 0; i < n; i++) A[i] = 0.1f * (float)(i % 13) - 0.6f, B[i] = 0.1f * (float)(i % 7) - 0.3f;
    GemmInfo g;
    best_of(GEMM_BF16, 0, S[0].q, A, B, C, 0);
    gemm_info(&g);
    printf("bench-gemm: %d thread(s); bf16 via %s%s %s; the fp32 step uses %s\n",
           omp_get_max_threads(), g.have_dnnl ? "oneDNN " : "rounded sgemm (no oneDNN)",
           g.version, g.isa, gemm_fp32_dnnl() ? "oneDNN" : "sgemm and the few-row kernels");
    printf("| product | shape (M,N,K) | sgemm ms | oneDNN fp32 ms | few-row ms | bf16 ms | impl | best fp32 / bf16 |\n");
    printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (size_t i = 0; i < sizeof S / sizeof *S; i++) {
        const int *q = S[i].q;
        double f = best_of(GEMM_FP32_BLAS, 0, q, A, B, C, 20), b = best_of(GEMM_BF16, 0, q, A, B, C, 20);
        double fd = g.have_dnnl ? best_of(GEMM_FP32_DNNL, 0, q, A, B, C, 20) : 0;
        int few = !q[0] && q[2] <= 128;
        double w = few ? best_of(GEMM_FP32_BLAS, 1, q, A, B, C, 20) : 0;
        GemmShape s;
        const char *impl = "";
        for (int k = 0; gemm_shape(k, &s) == 0; k++)
            if (s.M == q[2] && s.N == q[3] && s.K == q[4] && s.ta == q[0] && s.tb == q[1])
                if (!s.fp32) impl = s.sgemm ? "rounded sgemm" : s.impl;
        char fw[32] = "-";
        if (few) snprintf(fw, sizeof fw, "%.3f", w * 1e3);
        char fdn[32] = "-";
        if (fd > 0) snprintf(fdn, sizeof fdn, "%.3f", fd * 1e3);
        double bf = few && w < f ? w : f;
        if (fd > 0 && fd < bf) bf = fd;
        printf("| %s | %c%c %d,%d,%d | %.3f | %s | %s | %.3f | %s | %.2fx |\n", S[i].what,
               "NT"[q[0]], "NT"[q[1]], q[2], q[3], q[4], f * 1e3, fdn, fw, b * 1e3, impl, bf / b);
    }
    free(A); free(B); free(C);
    return 0;
}
