// Few-row GEMMs for the Soft MoE experts (see layers.h).
// An expert multiplies only R = B*P rows (32 for S/16 32x4 at batch 8) by
// its (D,M) and (M,D) weights. sgemm packs the whole weight matrix into its
// panel layout on every call, and with so few rows that copy costs about as
// much as the arithmetic. These kernels read the weights straight from the
// parameter block, once per call, into AVX-512 register tiles: 24 zmm
// accumulators, each weight load or broadcast feeding 2 to 8 FMAs. Without
// AVX-512 they are the same cblas_sgemm calls dense.c makes. (The weight
// gradient x^T @ dy stays with sgemm: there the big matrix is the output,
// which sgemm does not pack, and a kernel of this kind gained nothing
// measurable in the training step.)
#include <cblas.h>
#include <stdlib.h>

#include "../core/common.h"
#include "gemm.h"
#include "layers.h"

#ifdef __AVX512F__
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

// Lanes of a 16-float vector that lie before column n (0..16 of them).
INLINE __mmask16 lanes(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

// Repeat M(i) for the rows of a register tile. GCC keeps an array of
// __m512 in memory (a store per FMA), so the accumulators are named
// variables, one per row and vector.
#define REP8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#define REP12(M) REP8(M) M(8) M(9) M(10) M(11)

// ---- out (R,N) = x (R,K) @ w (K,N) (+ b) (+ out) ----
// w is taken in panels of NN_KP whole rows (contiguous, <= 400 KB), each
// swept in strips of 48 columns by register tiles of NN_RB rows x 48
// columns (3 vectors) that add the panel's part into out. A strip's rows lie
// a row of w apart, which no hardware prefetcher follows, so while one panel
// is computed on (from L2) the tiles prefetch the next one into L2 in
// address order, a few lines each.
#define NN_RB 8
#define NN_KP 64

// out (rb,nc) tile (row stride N) = init + x (rb,kc) (row stride ldx) @ w
// (kc,nc) (row stride N), init = b (if not NULL) + out (if accumulate);
// prefetches lines pf[0..npf) into L2.
INLINE void nn_tile(float *out, const float *x, int ldx, const float *w, const float *b, int kc,
                    int N, int rb, int nc, int accumulate, const char *pf, int npf) {
    const __mmask16 m0 = lanes(nc), m1 = lanes(nc - 16), m2 = lanes(nc - 32);
    // All NN_RB rows are always computed, the missing ones as copies of the
    // last real row (never stored), so the tile has a fixed shape.
    __m512 i0 = _mm512_setzero_ps(), i1 = i0, i2 = i0;
    if (b) {
        i0 = _mm512_maskz_loadu_ps(m0, b);
        i1 = _mm512_maskz_loadu_ps(m1, b + 16);
        i2 = _mm512_maskz_loadu_ps(m2, b + 32);
    }
#define NN_INIT(i)                                                          \
    const float *x##i = x + (size_t)(i < rb ? i : rb - 1) * ldx;           \
    __m512 c##i##0 = i0, c##i##1 = i1, c##i##2 = i2;                        \
    if (accumulate) {                                                       \
        const float *o = out + (size_t)(i < rb ? i : rb - 1) * N;          \
        c##i##0 = _mm512_add_ps(c##i##0, _mm512_maskz_loadu_ps(m0, o));    \
        c##i##1 = _mm512_add_ps(c##i##1, _mm512_maskz_loadu_ps(m1, o + 16)); \
        c##i##2 = _mm512_add_ps(c##i##2, _mm512_maskz_loadu_ps(m2, o + 32)); \
    }
    REP8(NN_INIT)
#undef NN_INIT
    for (int k = 0; k < kc; k++) {
        if (k < npf) _mm_prefetch(pf + (size_t)k * 64, _MM_HINT_T1);
        const float *wk = w + (size_t)k * N;
        __m512 w0 = _mm512_maskz_loadu_ps(m0, wk);
        __m512 w1 = _mm512_maskz_loadu_ps(m1, wk + 16);
        __m512 w2 = _mm512_maskz_loadu_ps(m2, wk + 32);
#define NN_FMA(i)                                                           \
        {                                                                   \
            __m512 xv = _mm512_set1_ps(x##i[k]);                            \
            c##i##0 = _mm512_fmadd_ps(xv, w0, c##i##0);                     \
            c##i##1 = _mm512_fmadd_ps(xv, w1, c##i##1);                     \
            c##i##2 = _mm512_fmadd_ps(xv, w2, c##i##2);                     \
        }
        REP8(NN_FMA)
#undef NN_FMA
    }
#define NN_STORE(i)                                                         \
    if (i < rb) {                                                           \
        float *o = out + (size_t)i * N;                                     \
        _mm512_mask_storeu_ps(o, m0, c##i##0);                              \
        _mm512_mask_storeu_ps(o + 16, m1, c##i##1);                         \
        _mm512_mask_storeu_ps(o + 32, m2, c##i##2);                         \
    }
    REP8(NN_STORE)
#undef NN_STORE
}

// Two instances: the common full tile, and any tail of rows, columns or k.
static void nn_block(float *out, const float *x, int ldx, const float *w, const float *b,
                     int kc, int N, int rb, int nc, int accumulate, const char *pf, int npf) {
    if (rb == NN_RB && nc == 48 && kc == NN_KP)
        nn_tile(out, x, ldx, w, b, NN_KP, N, NN_RB, 48, accumulate, pf, npf);
    else
        nn_tile(out, x, ldx, w, b, kc, N, rb, nc, accumulate, pf, npf);
}

static void nn_avx512(float *out, const float *x, const float *w, const float *b, int R, int K,
                      int N, int accumulate) {
    const size_t ntile = (size_t)(N + 47) / 48 * ((R + NN_RB - 1) / NN_RB);
    // The first panel has no panel before it to fetch it: request it into
    // L2 in address order before starting.
    {
        size_t lines = ((size_t)(K < NN_KP ? K : NN_KP) * N * sizeof(float) + 63) / 64;
        for (size_t l = 0; l < lines; l++) _mm_prefetch((const char *)w + l * 64, _MM_HINT_T1);
    }
    for (int k0 = 0; k0 < K; k0 += NN_KP) {
        int kc = K - k0 < NN_KP ? K - k0 : NN_KP;
        // The next panel's lines, shared out evenly over this panel's tiles.
        int knext = K - k0 - kc < NN_KP ? K - k0 - kc : NN_KP;
        size_t lines = ((size_t)knext * N * sizeof(float) + 63) / 64;
        size_t per = (lines + ntile - 1) / ntile;
        const char *next = (const char *)(w + (size_t)(k0 + kc) * N);
        size_t t = 0;
        for (int j0 = 0; j0 < N; j0 += 48) {
            int nc = N - j0 < 48 ? N - j0 : 48;
            for (int r0 = 0; r0 < R; r0 += NN_RB, t++) {
                int rb = R - r0 < NN_RB ? R - r0 : NN_RB;
                size_t l0 = t * per < lines ? t * per : lines;
                int npf = (int)(lines - l0 < per ? lines - l0 : per);
                // the first panel starts from the bias (and out), later
                // ones add onto out
                nn_block(out + (size_t)r0 * N + j0, x + (size_t)r0 * K + k0, K,
                         w + (size_t)k0 * N + j0, k0 == 0 && b ? b + j0 : NULL, kc, N, rb,
                         nc, k0 > 0 || accumulate, next + l0 * 64, npf);
            }
        }
    }
}

// ---- dx (R,K) += dy (R,N) @ w^T, w (K,N) ----
// Vectorised over the rows of dy: dyT (N,32) holds up to 32 rows of dy
// transposed (zero-padded), so each element of w, broadcast once, feeds two
// FMAs (one per 16 rows). The register tile is NT_IB rows of w (columns of
// dx) x 32 rows of dx; w is read once per 32 rows of dx, row after row, and
// each tile prefetches the next NT_IB rows into L2.
#define NT_IB 12

INLINE void nt_tile(float *dx, const float *dyT, const float *w, int K, int N, int ib, int rc,
                    int nv, int accumulate, const char *pf, int npf) {
    // Missing rows of w (ib < NT_IB) repeat the last real one, never stored.
#define NT_INIT(i)                                                          \
    const float *w##i = w + (size_t)(i < ib ? i : ib - 1) * N;             \
    __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = c##i##0;
    REP12(NT_INIT)
#undef NT_INIT
    for (int j = 0; j < N; j++) {
        if (j < npf) _mm_prefetch(pf + (size_t)j * 64, _MM_HINT_T1);
        __m512 t0 = _mm512_loadu_ps(dyT + (size_t)j * 32), t1 = t0;
        if (nv > 1) t1 = _mm512_loadu_ps(dyT + (size_t)j * 32 + 16);
#define NT_FMA(i)                                                           \
        {                                                                   \
            __m512 wv = _mm512_set1_ps(w##i[j]);                            \
            c##i##0 = _mm512_fmadd_ps(wv, t0, c##i##0);                     \
            if (nv > 1) c##i##1 = _mm512_fmadd_ps(wv, t1, c##i##1);         \
        }
        REP12(NT_FMA)
#undef NT_FMA
    }
    // The tile is (column of dx, row of dx): transpose through the stack.
    float t[NT_IB][32];
#define NT_STORE(i)                                                         \
    _mm512_storeu_ps(t[i], c##i##0);                                        \
    if (nv > 1) _mm512_storeu_ps(t[i] + 16, c##i##1);
    REP12(NT_STORE)
#undef NT_STORE
    for (int r = 0; r < rc; r++)
        for (int i = 0; i < ib; i++)
            dx[(size_t)r * K + i] = accumulate ? dx[(size_t)r * K + i] + t[i][r] : t[i][r];
}

// Instances for one or two vectors of rows, full tile or tail of w's rows.
static void nt_block(float *dx, const float *dyT, const float *w, int K, int N, int ib, int rc,
                     int nv, int acc, const char *pf, int npf) {
    if (nv > 1) {
        if (ib == NT_IB) nt_tile(dx, dyT, w, K, N, NT_IB, rc, 2, acc, pf, npf);
        else nt_tile(dx, dyT, w, K, N, ib, rc, 2, acc, pf, npf);
    } else {
        if (ib == NT_IB) nt_tile(dx, dyT, w, K, N, NT_IB, rc, 1, acc, pf, npf);
        else nt_tile(dx, dyT, w, K, N, ib, rc, 1, acc, pf, npf);
    }
}

static void nt_avx512(float *dx, const float *dy, const float *w, int R, int K, int N,
                      int accumulate) {
    // Per-thread staging, grown once: no allocation inside a training step.
    static _Thread_local float *dyT;
    static _Thread_local size_t cap;
    if (cap < (size_t)N * 32) {
        free(dyT);
        cap = (size_t)N * 32;
        dyT = sm_aligned(cap * sizeof(float));
    }
    for (int r0 = 0; r0 < R; r0 += 32) {
        int rc = R - r0 < 32 ? R - r0 : 32;
        for (int j = 0; j < N; j++) {
            float *t = dyT + (size_t)j * 32;
            for (int r = 0; r < rc; r++) t[r] = dy[(size_t)(r0 + r) * N + j];
            for (int r = rc; r < 32; r++) t[r] = 0.0f;
        }
        for (int i0 = 0; i0 < K; i0 += NT_IB) {
            int ib = K - i0 < NT_IB ? K - i0 : NT_IB;
            // prefetch the next NT_IB rows of w (contiguous) into L2
            int inext = K - i0 - ib < NT_IB ? K - i0 - ib : NT_IB;
            int npf = (int)(((size_t)inext * N * sizeof(float) + 63) / 64);
            nt_block(dx + (size_t)r0 * K + i0, dyT, w + (size_t)i0 * N, K, N, ib, rc,
                     rc > 16 ? 2 : 1, accumulate, (const char *)(w + (size_t)(i0 + ib) * N), npf);
        }
    }
}

#endif

// Above FEWROW_MAX rows (experts fed by many ranks, or large batches) the
// weights are reused enough that sgemm's packing pays for itself again.
#define FEWROW_MAX 128

// These kernels are fp32 only: with train.precision = bf16 the expert
// products go through gemm_run (oneDNN) like every other product. They beat
// oneDNN's bf16 only at 8 rows (make bench-gemm), and there in fp32, which
// bf16 mode must not use. In fp32, oneDNN's fp32 matmul beat them at 8 and
// 32 rows too (make bench-gemm), so they run only where fp32 stays with
// sgemm (no oneDNN, no AVX-512, or debug.fp32_sgemm).
static int fewrow_ok(int R) {
    const int p = gemm_precision();
    return R <= FEWROW_MAX && gemm_is_fp32(p) && !gemm_uses_plans(p);
}

void fewrow_nn(float *out, const float *x, const float *w, const float *b, int R, int K,
               int N, int accumulate) {
#ifdef __AVX512F__
    if (fewrow_ok(R)) {
        nn_avx512(out, x, w, b, R, K, N, accumulate);
        return;
    }
#endif
    dense_forward(out, x, w, b, R, K, N, accumulate);
}

void fewrow_nt(float *dx, const float *dy, const float *w, int R, int K, int N,
               int accumulate) {
#ifdef __AVX512F__
    if (fewrow_ok(R)) {
        nt_avx512(dx, dy, w, R, K, N, accumulate);
        return;
    }
#endif
    gemm_run(CblasNoTrans, CblasTrans, R, K, N, 1.0f, dy, N, w, N,
             accumulate ? 1.0f : 0.0f, dx, K);
}
