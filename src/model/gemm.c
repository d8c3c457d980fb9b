// The GEMM entry point (see gemm.h): fp32 straight to sgemm; bf16 through a
// per-shape plan (a oneDNN matmul primitive with its memory objects per
// thread) and per-thread staging buffers that hold the operands converted to
// bfloat16. An operand is converted on each call unless it is already bf16:
// the model's weights (the bf16 copy gemm_shadow registers, written by Adam
// in the pass of its update) and the MLP's GELU output and input gradient (written as
// bf16 by the GELU, gemm_run_h). Before, conversion was 8% of perf's samples
// of a Soft MoE S/16 32x4 bf16 step, most of it the experts' weights
// converted in forward and again in backward.
// oneDNN runs every bf16 shape it supports: `make bench-gemm` measured it
// faster than the only other way to these numerics (rounded inputs through
// sgemm) for every product shape of the S/16 models (table in the README),
// so there is no per-shape switch and no hand-written bf16 kernel.
// fp32 products run as oneDNN fp32 matmuls where gemm_fp32_dnnl() says so,
// straight on the caller's operands and strides (no staging, no conversion).
#include "gemm.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"

#ifdef SM_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define HAVE_CVT_BF16 1
#endif

#define MAX_PLANS 1024
#define MAX_THREADS 256

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc, ref;
    float alpha, beta;
    int f32;                             // fp32 operands in place (no staging)
} Key;

typedef struct {
    Key k;
#ifdef SM_DNNL
    dnnl_primitive_t prim;
    dnnl_memory_t mem[MAX_THREADS][4];   // src, weights, dst, scratchpad, per thread
#endif
    size_t scratch;                      // scratchpad bytes
    int sgemm;                           // rounded inputs through sgemm (no oneDNN primitive)
    long calls;                          // since gemm_reset_calls
    int in_parallel;
} Plan;

// Staging per thread: A and B converted, and oneDNN's scratchpad.
typedef struct {
    void *a, *b, *s;
    size_t acap, bcap, scap;             // bytes
#ifdef SM_DNNL
    dnnl_stream_t stream;
#endif
} Stage;

static struct {
    int precision, planning, nthreads, late, inited;
    const float *sh_base;                // gemm_shadow
    size_t sh_n;
    const uint16_t *sh;
    Plan *plans[MAX_PLANS];
    int nplans;                          // published with release/acquire
    Stage stage[MAX_THREADS];
#ifdef SM_DNNL
    dnnl_engine_t engine;
#endif
} G;

#ifdef SM_DNNL
#define DNNL_OK(call, k)                                                                  \
    do {                                                                                  \
        dnnl_status_t st_ = (call);                                                       \
        if (st_ != dnnl_success)                                                          \
            sm_die("oneDNN: %s failed (status %d) for the %s product M=%d N=%d K=%d",     \
                   #call, (int)st_, (k)->f32 ? "fp32" : "bf16", (k)->M, (k)->N, (k)->K);  \
    } while (0)
#endif

void gemm_set_precision(int p) { G.precision = p; }
int gemm_precision(void) { return G.precision; }
int gemm_planning(void) { return G.planning; }
void gemm_plan_begin(void) { G.planning = 1; }
void gemm_plan_end(void) { G.planning = 0; }

int gemm_precision_from_name(const char *name) {
    return name && !strcmp(name, "bf16") ? GEMM_BF16 : GEMM_FP32;
}

// ---------------------------------------------------------------- bfloat16

#define bf16_of gemm_bf16_of

void gemm_round_bf16(float *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)bf16_of(in[i]) << 16;
        memcpy(out + i, &u, sizeof u);
    }
}

#ifdef SM_DNNL
// dst (rows,cols) contiguous = src (rows,cols) with row stride ld, as bf16.
static void rows_to_bf16(uint16_t *dst, const float *src, int rows, int cols, int ld, int par) {
    #pragma omp parallel for schedule(static) if (par && (size_t)rows * cols > 32768)
    for (int r = 0; r < rows; r++) {
        const float *s = src + (size_t)r * ld;
        uint16_t *d = dst + (size_t)r * cols;
        int j = 0;
#ifdef HAVE_CVT_BF16
        for (; j + 16 <= cols; j += 16)
            _mm256_storeu_si256((__m256i *)(d + j), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + j)));
        if (j < cols) {
            __mmask16 m = (__mmask16)((1u << (cols - j)) - 1);
            __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, s + j));
            _mm256_mask_storeu_epi16(d + j, m, v);
            j = cols;
        }
#endif
        for (; j < cols; j++) d[j] = bf16_of(s[j]);
    }
}
#endif

// bf16 operand (rows,cols) contiguous, widened to floats (exact; the sgemm path).
static void rows_widen(float *dst, const uint16_t *src, int rows, int cols, int par) {
    const long n = (long)rows * cols;
    #pragma omp parallel for simd schedule(static) if (par && n > 32768)
    for (long i = 0; i < n; i++) dst[i] = gemm_bf16_to_float(src[i]);
}

void gemm_shadow(const float *base, size_t n, const uint16_t *copy) {
    G.sh_base = copy ? base : NULL;
    G.sh_n = copy ? n : 0;
    G.sh = copy;
}

void gemm_shadow_drop(const float *base) {
    if (G.sh_base == base) gemm_shadow(NULL, 0, NULL);
}

void gemm_to_bf16(uint16_t *dst, const float *src, size_t n) {
    const size_t chunk = (size_t)1 << 16;
    const long nc = (long)((n + chunk - 1) / chunk);
    #pragma omp parallel for schedule(static)
    for (long c = 0; c < nc; c++) {
        size_t lo = (size_t)c * chunk, len = n - lo < chunk ? n - lo : chunk;
#ifdef SM_DNNL
        rows_to_bf16(dst + lo, src + lo, 1, (int)len, (int)len, 0);
#else
        for (size_t i = lo; i < lo + len; i++) dst[i] = bf16_of(src[i]);
#endif
    }
}

// The shadow of operand X (rows,cols as stored, row stride ld), or NULL.
static const uint16_t *shadow_of(const float *X, int rows, int cols, int ld) {
    if (!G.sh || !X || ld != cols || X < G.sh_base) return NULL;
    size_t off = (size_t)(X - G.sh_base);
    if (off >= G.sh_n || (size_t)rows * cols > G.sh_n - off) return NULL;
    return G.sh + off;
}

// The same, rounded but kept as floats (the sgemm path).
static void rows_round(float *dst, const float *src, int rows, int cols, int ld, int par) {
    #pragma omp parallel for schedule(static) if (par && (size_t)rows * cols > 32768)
    for (int r = 0; r < rows; r++)
        gemm_round_bf16(dst + (size_t)r * cols, src + (size_t)r * ld, (size_t)cols);
}

// ---------------------------------------------------------------- plans

static void init_once(void) {
    if (G.inited) return;
    G.nthreads = omp_get_max_threads();
    SM_CHECK(G.nthreads <= MAX_THREADS, "gemm: %d OpenMP threads, at most %d supported",
             G.nthreads, MAX_THREADS);
#ifdef SM_DNNL
    Key none = {0};
    DNNL_OK(dnnl_engine_create(&G.engine, dnnl_cpu, 0), &none);
    for (int t = 0; t < G.nthreads; t++)
        DNNL_OK(dnnl_stream_create(&G.stage[t].stream, G.engine, dnnl_stream_default_flags), &none);
#endif
    G.inited = 1;
}

static int key_eq(const Key *a, const Key *b) {
    return a->ta == b->ta && a->tb == b->tb && a->M == b->M && a->N == b->N && a->K == b->K &&
           a->lda == b->lda && a->ldb == b->ldb && a->ldc == b->ldc && a->ref == b->ref &&
           a->alpha == b->alpha && a->beta == b->beta && a->f32 == b->f32;
}

static void grow(void **p, size_t *cap, size_t need) {
    if (*cap >= need) return;
    free(*p);
    *p = sm_aligned(need);
    *cap = need;
}

// Bytes of staging a plan needs per thread (A, B, scratchpad).
static void stage_need(const Plan *p, size_t *a, size_t *b, size_t *s) {
    if (p->k.f32) {                      // operands used in place
        *a = *b = 64;
        *s = p->scratch + 64;
        return;
    }
    size_t elt = p->sgemm ? sizeof(float) : sizeof(uint16_t);
    *a = (size_t)p->k.M * p->k.K * elt + 64;
    *b = (size_t)p->k.K * p->k.N * elt + 64;
    *s = p->scratch + 64;
}

#ifdef SM_DNNL
static void dims_md(dnnl_memory_desc_t *md, int rows, int cols, long rs, long cs,
                    dnnl_data_type_t dt, const Key *k) {
    dnnl_dims_t dims = {rows, cols}, strides = {rs, cs};
    DNNL_OK(dnnl_memory_desc_init_by_strides(md, 2, dims, dt, strides), k);
}

// Returns 0, or -1 when oneDNN has no matmul for this CPU and shape (bf16
// before AVX512: then the plan takes the rounded-sgemm path; fp32: sgemm).
static int create_primitive(Plan *p) {
    const Key *k = &p->k;
    dnnl_memory_desc_t src, wei, dst;
    if (k->f32) {
        // fp32: A and B in place with the caller's row strides
        if (k->ta) dims_md(&src, k->M, k->K, 1, k->lda, dnnl_f32, k);
        else dims_md(&src, k->M, k->K, k->lda, 1, dnnl_f32, k);
        if (k->tb) dims_md(&wei, k->K, k->N, 1, k->ldb, dnnl_f32, k);
        else dims_md(&wei, k->K, k->N, k->ldb, 1, dnnl_f32, k);
    } else {
        // bf16: A and B staged contiguous in their given orientation
        if (k->ta) dims_md(&src, k->M, k->K, 1, k->M, dnnl_bf16, k);
        else dims_md(&src, k->M, k->K, k->K, 1, dnnl_bf16, k);
        if (k->tb) dims_md(&wei, k->K, k->N, 1, k->K, dnnl_bf16, k);
        else dims_md(&wei, k->K, k->N, k->N, 1, dnnl_bf16, k);
    }
    dims_md(&dst, k->M, k->N, k->ldc, 1, dnnl_f32, k);
    dnnl_matmul_desc_t desc;
    DNNL_OK(dnnl_matmul_desc_init(&desc, &src, &wei, NULL, &dst), k);
    dnnl_primitive_attr_t attr;
    DNNL_OK(dnnl_primitive_attr_create(&attr), k);
    DNNL_OK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), k);
    if (k->alpha != 1.0f) DNNL_OK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &k->alpha), k);
    dnnl_post_ops_t po = NULL;
    if (k->beta != 0.0f) {
        DNNL_OK(dnnl_post_ops_create(&po), k);
        DNNL_OK(dnnl_post_ops_append_sum(po, k->beta), k);
        DNNL_OK(dnnl_primitive_attr_set_post_ops(attr, po), k);
    }
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, &desc, attr, G.engine, NULL);
    if (st == dnnl_unimplemented) {
        if (po) DNNL_OK(dnnl_post_ops_destroy(po), k);
        DNNL_OK(dnnl_primitive_attr_destroy(attr), k);
        return -1;
    }
    DNNL_OK(st, k);
    DNNL_OK(dnnl_primitive_create(&p->prim, pd), k);
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    p->scratch = smd ? dnnl_memory_desc_get_size(smd) : 0;
    for (int t = 0; t < G.nthreads; t++) {
        DNNL_OK(dnnl_memory_create(&p->mem[t][0], &src, G.engine, DNNL_MEMORY_NONE), k);
        DNNL_OK(dnnl_memory_create(&p->mem[t][1], &wei, G.engine, DNNL_MEMORY_NONE), k);
        DNNL_OK(dnnl_memory_create(&p->mem[t][2], &dst, G.engine, DNNL_MEMORY_NONE), k);
        p->mem[t][3] = NULL;
        if (smd && p->scratch)
            DNNL_OK(dnnl_memory_create(&p->mem[t][3], smd, G.engine, DNNL_MEMORY_NONE), k);
    }
    DNNL_OK(dnnl_primitive_desc_destroy(pd), k);
    if (po) DNNL_OK(dnnl_post_ops_destroy(po), k);
    DNNL_OK(dnnl_primitive_attr_destroy(attr), k);
    return 0;
}
#endif

// The plan for key k, created (and every thread's staging grown, outside a
// parallel region) on first sight.
static Plan *plan_for(const Key *k) {
    int n = __atomic_load_n(&G.nplans, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (key_eq(&G.plans[i]->k, k)) return G.plans[i];
    Plan *found = NULL;
    #pragma omp critical(gemm_plan)
    {
        init_once();
        for (int i = 0; i < G.nplans && !found; i++)
            if (key_eq(&G.plans[i]->k, k)) found = G.plans[i];
        if (!found) {
            SM_CHECK(G.nplans < MAX_PLANS, "gemm: more than %d product shapes", MAX_PLANS);
            Plan *p = sm_calloc(1, sizeof *p);
            p->k = *k;
            p->sgemm = 1;
#ifdef SM_DNNL
            if (!k->ref && create_primitive(p) == 0) p->sgemm = 0;
#endif
            if (!omp_in_parallel()) {
                size_t a, b, s;
                stage_need(p, &a, &b, &s);
                for (int t = 0; t < G.nthreads; t++) {
                    grow(&G.stage[t].a, &G.stage[t].acap, a);
                    grow(&G.stage[t].b, &G.stage[t].bcap, b);
                    grow(&G.stage[t].s, &G.stage[t].scap, s);
                }
            }
            if (!G.planning) G.late++;
            G.plans[G.nplans] = p;
            __atomic_store_n(&G.nplans, G.nplans + 1, __ATOMIC_RELEASE);
            found = p;
        }
    }
    return found;
}

// ---------------------------------------------------------------- products

// oneDNN's fp32 matmul is used only where its AVX-512 kernels run (on an AVX2
// CPU OpenBLAS's own kernels are the better-tested choice).
static int dnnl_avx512(void) {
#ifdef SM_DNNL
    static int have = -1;
    if (have < 0) {
        dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
        int h = ((unsigned)isa & (unsigned)dnnl_cpu_isa_avx512_core) == (unsigned)dnnl_cpu_isa_avx512_core;
        __atomic_store_n(&have, h, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(&have, __ATOMIC_ACQUIRE);
#else
    return 0;
#endif
}

int gemm_fp32_dnnl(void) { return dnnl_avx512(); }

int gemm_uses_plans(int precision) {
    return !(precision == GEMM_FP32_BLAS || (precision == GEMM_FP32 && !gemm_fp32_dnnl()));
}

void gemm_run(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_run_h(ta, tb, M, N, K, alpha, A, NULL, lda, B, NULL, ldb, beta, C, ldc);
}

void gemm_run_h(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                const float *A, const uint16_t *Ah, int lda, const float *B,
                const uint16_t *Bh, int ldb, float beta, float *C, int ldc) {
    const int prec = G.precision;
    const int f32 = gemm_is_fp32(prec);
    if (Ah || Bh) {
        SM_CHECK(!f32, "gemm: bf16 operands for an fp32 product (M=%d N=%d K=%d)", M, N, K);
        // A as stored: (M,K) or, transposed, (K,M); likewise B
        SM_CHECK(!Ah || lda == (ta == CblasTrans ? M : K), "gemm: bf16 A not contiguous (lda %d)", lda);
        SM_CHECK(!Bh || ldb == (tb == CblasTrans ? K : N), "gemm: bf16 B not contiguous (ldb %d)", ldb);
    }
    if (M <= 0 || N <= 0 || K <= 0 || !gemm_uses_plans(prec)) {
        if (!G.planning)
            cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int ref = prec == GEMM_BF16_REF;
#ifndef SM_DNNL
    ref = 1;
#endif
    const Key k = {ta == CblasTrans, tb == CblasTrans, M, N, K, lda, ldb, ldc, ref, alpha, beta, f32};
    Plan *p = plan_for(&k);
    const int inpar = omp_in_parallel();
    if (G.planning) return;
    __atomic_fetch_add(&p->calls, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&p->in_parallel, inpar, __ATOMIC_RELAXED);
    Stage *st = &G.stage[inpar ? omp_get_thread_num() : 0];
    size_t an, bn, sn;
    stage_need(p, &an, &bn, &sn);
    if (st->acap < an || st->bcap < bn || st->scap < sn) {
        // a shape first seen inside a parallel region: this thread's staging
        grow(&st->a, &st->acap, an);
        grow(&st->b, &st->bcap, bn);
        grow(&st->s, &st->scap, sn);
    }
    // A as stored: (M,K) or, transposed, (K,M); B (K,N) or (N,K).
    const int ar = k.ta ? K : M, ac = k.ta ? M : K, br = k.tb ? N : K, bc = k.tb ? K : N;
    if (!f32 && !Ah) Ah = shadow_of(A, ar, ac, lda);
    if (!f32 && !Bh) Bh = shadow_of(B, br, bc, ldb);
    if (p->sgemm && f32) {
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (p->sgemm) {
        if (Ah) rows_widen(st->a, Ah, ar, ac, !inpar);
        else rows_round(st->a, A, ar, ac, lda, !inpar);
        if (Bh) rows_widen(st->b, Bh, br, bc, !inpar);
        else rows_round(st->b, B, br, bc, ldb, !inpar);
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, st->a, ac, st->b, bc, beta, C, ldc);
        return;
    }
#ifdef SM_DNNL
    void *ha = f32 ? (void *)A : Ah ? (void *)Ah : st->a;
    void *hb = f32 ? (void *)B : Bh ? (void *)Bh : st->b;
    if (!f32 && !Ah) rows_to_bf16(st->a, A, ar, ac, lda, !inpar);
    if (!f32 && !Bh) rows_to_bf16(st->b, B, br, bc, ldb, !inpar);
    const int t = inpar ? omp_get_thread_num() : 0;
    dnnl_memory_t *mem = p->mem[t];
    DNNL_OK(dnnl_memory_set_data_handle(mem[0], ha), &k);
    DNNL_OK(dnnl_memory_set_data_handle(mem[1], hb), &k);
    DNNL_OK(dnnl_memory_set_data_handle(mem[2], C), &k);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]},
                               {DNNL_ARG_DST, mem[2]}, {DNNL_ARG_SCRATCHPAD, mem[3]}};
    int nargs = 3;
    if (mem[3]) {
        DNNL_OK(dnnl_memory_set_data_handle(mem[3], st->s), &k);
        nargs = 4;
    }
    DNNL_OK(dnnl_primitive_execute(p->prim, st->stream, nargs, args), &k);
    DNNL_OK(dnnl_stream_wait(st->stream), &k);
#endif
}

// ---------------------------------------------------------------- report

#ifdef SM_DNNL
static void impl_of(const Plan *p, char *out, size_t n) {
    const_dnnl_primitive_desc_t pd;
    const char *impl = NULL;
    out[0] = 0;
    if (p->sgemm || dnnl_primitive_get_primitive_desc(p->prim, &pd) != dnnl_success) return;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
        snprintf(out, n, "%s", impl);
}
#endif

int gemm_shape(int i, GemmShape *s) {
    if (i < 0 || i >= __atomic_load_n(&G.nplans, __ATOMIC_ACQUIRE)) return -1;
    const Plan *p = G.plans[i];
    memset(s, 0, sizeof *s);
    s->ta = p->k.ta, s->tb = p->k.tb, s->M = p->k.M, s->N = p->k.N, s->K = p->k.K;
    s->lda = p->k.lda, s->ldb = p->k.ldb, s->ldc = p->k.ldc;
    s->alpha = p->k.alpha, s->beta = p->k.beta;
    s->calls = p->calls, s->in_parallel = p->in_parallel, s->sgemm = p->sgemm, s->fp32 = p->k.f32;
#ifdef SM_DNNL
    impl_of(p, s->impl, sizeof s->impl);
#endif
    return 0;
}

void gemm_reset_calls(void) {
    for (int i = 0; i < G.nplans; i++) G.plans[i]->calls = 0;
}

double gemm_bf16_peak(int n, int reps) {
#ifdef SM_DNNL
    int save = G.precision;
    int saveplan = G.planning;
    G.precision = GEMM_BF16, G.planning = 1;  // not a late plan: no step is running
    const Key k = {0, 0, n, n, n, n, n, n, 0, 1.0f, 0.0f, 0};
    Plan *p = plan_for(&k);
    G.precision = save, G.planning = saveplan;
    if (p->sgemm) return 0;
    Stage *st = &G.stage[0];
    float *a = sm_aligned((size_t)n * n * sizeof(float)), *c = sm_aligned((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = 1.0f / (float)(1 + i % 7);
    rows_to_bf16(st->a, a, n, n, n, 1);
    rows_to_bf16(st->b, a, n, n, n, 1);
    dnnl_memory_t *mem = p->mem[0];
    DNNL_OK(dnnl_memory_set_data_handle(mem[0], st->a), &k);
    DNNL_OK(dnnl_memory_set_data_handle(mem[1], st->b), &k);
    DNNL_OK(dnnl_memory_set_data_handle(mem[2], c), &k);
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]},
                               {DNNL_ARG_DST, mem[2]}, {DNNL_ARG_SCRATCHPAD, mem[3]}};
    int nargs = 3;
    if (mem[3]) {
        DNNL_OK(dnnl_memory_set_data_handle(mem[3], st->s), &k);
        nargs = 4;
    }
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = sm_now();
        DNNL_OK(dnnl_primitive_execute(p->prim, st->stream, nargs, args), &k);
        DNNL_OK(dnnl_stream_wait(st->stream), &k);
        double gf = 2.0 * n * n * (double)n / (sm_now() - t0) / 1e9;
        if (r > 0 && gf > best) best = gf;  // the first call warms caches and threads
    }
    free(a);
    free(c);
    return best;
#else
    (void)n, (void)reps;
    return 0;
#endif
}

void gemm_info(GemmInfo *g) {
    memset(g, 0, sizeof *g);
    g->plans = __atomic_load_n(&G.nplans, __ATOMIC_ACQUIRE);
    g->late_plans = G.late;
    for (int i = 0; i < g->plans; i++) {
        const Plan *p = G.plans[i];
        g->sgemm_plans += p->sgemm && !p->k.f32;
        g->fp32_plans += p->k.f32;
        g->fp32_dnnl_plans += p->k.f32 && !p->sgemm;
    }
#ifdef SM_DNNL
    g->have_dnnl = 1;
    const dnnl_version_t *v = dnnl_version();
    snprintf(g->version, sizeof g->version, "%d.%d.%d", v->major, v->minor, v->patch);
    static const struct { dnnl_cpu_isa_t isa; const char *name; } ISAS[] = {
        {dnnl_cpu_isa_avx512_core_amx, "avx512_core_amx"},
        {dnnl_cpu_isa_avx512_core_bf16, "avx512_core_bf16"},
        {dnnl_cpu_isa_avx512_core_vnni, "avx512_core_vnni"},
        {dnnl_cpu_isa_avx512_core, "avx512_core"},
        {dnnl_cpu_isa_avx2_vnni, "avx2_vnni"},
        {dnnl_cpu_isa_avx2, "avx2"},
        {dnnl_cpu_isa_avx, "avx"},
        {dnnl_cpu_isa_sse41, "sse41"},
    };
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    snprintf(g->isa, sizeof g->isa, "isa 0x%x", (unsigned)isa);
    for (size_t i = 0; i < sizeof ISAS / sizeof *ISAS; i++)
        if (isa == ISAS[i].isa) {
            snprintf(g->isa, sizeof g->isa, "%s", ISAS[i].name);
            break;
        }
    for (int i = 0; i < g->plans; i++) {
        const Plan *p = G.plans[i];
        char impl[64];
        impl_of(p, impl, sizeof impl);
        if (!impl[0] || strstr(g->impls, impl)) continue;
        size_t len = strlen(g->impls);
        snprintf(g->impls + len, sizeof g->impls - len, "%s%s", len ? ", " : "", impl);
    }
#endif
}
