// Few-shot linear probe (big_vision evaluators/fewshot_lsr.py): shot sampling,
// whitening, closed-form ridge regression through LAPACK's Cholesky solver,
// argmax accuracy, and the seeds x l2 sweep.
#include "eval/fewshot.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "core/common.h"
#include "core/rng.h"

// OpenBLAS exports LAPACK's Fortran symbols but Debian's openblas dev package
// ships no lapack.h/lapacke.h, so declare the one routine we need. The last
// argument is the hidden length of `uplo` that gfortran-built LAPACK expects.
extern void dposv_(const char *uplo, const int *n, const int *nrhs, double *a,
                   const int *lda, double *b, const int *ldb, int *info,
                   size_t uplo_len);

// Rows of test features whitened at a time, so the double copy stays small.
#define FEWSHOT_CHUNK 256

// ---------------------------------------------------------------- sampling

int fewshot_sample(const int *labels, int n, int K, int shots, uint64_t seed, int *idx) {
    SM_CHECK(n > 0 && K > 0 && shots > 0, "fewshot: n=%d K=%d shots=%d must be > 0",
             n, K, shots);
    // Counting sort by class: order[start[c] .. start[c]+cnt[c]) are the
    // examples of class c in their original order, the permutation's input.
    int *cnt = sm_calloc((size_t)K, sizeof(int));
    int *start = sm_malloc((size_t)K * sizeof(int));
    int *order = sm_malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        SM_CHECK(labels[i] >= 0 && labels[i] < K,
                 "fewshot: label %d of train example %d outside [0,%d); "
                 "check the dataset's class count", labels[i], i, K);
        cnt[labels[i]]++;
    }
    for (int c = 0, s = 0; c < K; s += cnt[c], c++) start[c] = s;
    int *fill = memcpy(sm_malloc((size_t)K * sizeof(int)), start, (size_t)K * sizeof(int));
    for (int i = 0; i < n; i++) order[fill[labels[i]]++] = i;
    free(fill);
    int rc = 0;
    for (int c = 0; c < K; c++) {
        if (cnt[c] < shots) { rc = -1; break; }
        // Forward Fisher-Yates stopped after `shots` swaps: the prefix of a
        // uniform permutation, so fewer shots give a subset of more shots.
        Rng r;
        rng_seed(&r, seed, (uint64_t)c);
        int *list = order + start[c];
        for (int i = 0; i < shots; i++) {
            int j = i + (int)rng_below(&r, (uint32_t)(cnt[c] - i));
            int t = list[i]; list[i] = list[j]; list[j] = t;
            idx[(size_t)c * shots + i] = list[i];
        }
    }
    free(cnt); free(start); free(order);
    return rc;
}

// ---------------------------------------------------------------- ridge

// The linear system of one few-shot set, built once and solved per l2.
// big_vision solves (A) W = (Z^T Z + l2 I)^-1 Z^T Y when n >= D1 and
// (B) W = Z^T (Z Z^T + l2 I)^-1 Y otherwise (the same W, a smaller system);
// it diagonalises the Gram with eigh to reuse it across l2, we refactor it
// by Cholesky per l2, which is cheaper for a sweep of a few values.
typedef struct {
    int n, D1, K, m, primal; // m = D1 (primal) or n (dual), the system size
    double *Z;               // (n,D1) whitened features with the bias column
    double *G;               // (m,m) Z^T Z or Z Z^T, both triangles filled
    double *Rt;              // (K,m) right-hand sides, column-major (m,K)
    double *A, *B;           // (m,m), (K,m) scratch that dposv overwrites
} Ridge;

static void model_init(FewshotModel *m, int D, int K) {
    m->D = D;
    m->K = K;
    m->mean = sm_malloc((size_t)D * sizeof(double));
    m->std = sm_malloc((size_t)D * sizeof(double));
    m->W = sm_calloc((size_t)(D + 1) * K, sizeof(double));
}

void fewshot_free(FewshotModel *m) {
    free(m->mean); free(m->std); free(m->W);
    memset(m, 0, sizeof *m);
}

// mean and std over the rows of X (n,D), in double. big_vision:
//   mean = jnp.mean(x, axis=0); std = jnp.std(x, axis=0) + 1e-5
// jnp.std is the population std (ddof=0); the 1e-5 is added to the std (not
// the variance) so a constant feature whitens to 0 rather than NaN.
static void whiten_stats(const float *X, int n, int D, double *mean, double *std) {
    memset(mean, 0, (size_t)D * sizeof(double));
    memset(std, 0, (size_t)D * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int d = 0; d < D; d++) mean[d] += X[(size_t)i * D + d];
    for (int d = 0; d < D; d++) mean[d] /= n;
    for (int i = 0; i < n; i++)
        for (int d = 0; d < D; d++) {
            double c = X[(size_t)i * D + d] - mean[d];
            std[d] += c * c;
        }
    for (int d = 0; d < D; d++) std[d] = sqrt(std[d] / n) + 1e-5;
}

// Z (rows,D1) = [(X - mean) / std, FEWSHOT_BIAS].
static void whiten_rows(const float *X, int rows, int D, const double *mean,
                        const double *std, double *Z) {
    for (int i = 0; i < rows; i++) {
        double *z = Z + (size_t)i * (D + 1);
        for (int d = 0; d < D; d++) z[d] = (X[(size_t)i * D + d] - mean[d]) / std[d];
        z[D] = FEWSHOT_BIAS;
    }
}

// Rt (K,D1) = (Z^T Y)^T for targets Y = 2*onehot(y)-1 without the (n,K)
// matrix: column k of Z^T Y is 2 * (sum of class k's rows) - (sum of all
// rows), O(n D1) instead of a gemm's O(n D1 K), which at K = 1000 dominated.
static void primal_rhs(const double *Z, const int *y, int n, int D1, int K, double *Rt) {
    double *total = sm_calloc((size_t)D1, sizeof(double));
    memset(Rt, 0, (size_t)K * D1 * sizeof(double));
    for (int i = 0; i < n; i++) {
        const double *z = Z + (size_t)i * D1;
        double *rk = Rt + (size_t)y[i] * D1;
        for (int j = 0; j < D1; j++) { rk[j] += z[j]; total[j] += z[j]; }
    }
    for (size_t e = 0; e < (size_t)K * D1; e++) Rt[e] = 2.0 * Rt[e] - total[e % D1];
    free(total);
}

// Builds the system for X (n,D), y (n) with the whitening already in m.
static void ridge_prepare(Ridge *r, const float *X, const int *y, int n,
                          const FewshotModel *m) {
    int D = m->D, K = m->K, D1 = D + 1;
    r->n = n; r->D1 = D1; r->K = K;
    r->primal = n >= D1; // big_vision: `if num_points >= dim` with dim = D+1
    r->m = r->primal ? D1 : n;
    size_t mm = (size_t)r->m;
    r->Z = sm_malloc((size_t)n * D1 * sizeof(double));
    r->G = sm_malloc(mm * mm * sizeof(double));
    r->Rt = sm_malloc((size_t)K * mm * sizeof(double));
    r->A = sm_malloc(mm * mm * sizeof(double));
    r->B = sm_malloc((size_t)K * mm * sizeof(double));
    whiten_rows(X, n, D, m->mean, m->std, r->Z);

    for (int i = 0; i < n; i++)
        SM_CHECK(y[i] >= 0 && y[i] < K, "fewshot: label %d of example %d outside [0,%d)",
                 y[i], i, K);
    if (r->primal) {
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, D1, n, 1.0, r->Z, D1,
                    0.0, r->G, D1);
        primal_rhs(r->Z, y, n, D1, K, r->Rt);
    } else { // the targets 2*onehot-1 themselves, column-major (n,K)
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, n, D1, 1.0, r->Z, D1,
                    0.0, r->G, n);
        for (int k = 0; k < K; k++)
            for (int i = 0; i < n; i++) r->Rt[(size_t)k * n + i] = y[i] == k ? 1.0 : -1.0;
    }
    // dsyrk wrote one triangle; fill the other so the layout (row- vs
    // column-major) cannot matter to dposv.
    for (size_t i = 0; i < mm; i++)
        for (size_t j = i + 1; j < mm; j++) r->G[j * mm + i] = r->G[i * mm + j];
}

// W (D1,K) for one l2. Returns dposv's info: 0, or >0 when G + l2 I is not
// numerically positive definite.
static int ridge_solve(Ridge *r, double l2, double *W) {
    int m = r->m, K = r->K, info = 0;
    size_t mm = (size_t)m;
    memcpy(r->A, r->G, mm * mm * sizeof(double));
    for (size_t i = 0; i < mm; i++) r->A[i * mm + i] += l2;
    memcpy(r->B, r->Rt, (size_t)K * mm * sizeof(double));
    dposv_("U", &m, &K, r->A, &m, r->B, &m, &info, 1);
    if (info != 0) return info;
    if (r->primal) {
        for (int j = 0; j < m; j++)
            for (int k = 0; k < K; k++) W[(size_t)j * K + k] = r->B[(size_t)k * m + j];
    } else { // W = Z^T alpha, alpha (n,K) column-major in B
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasTrans, r->D1, K, r->n, 1.0, r->Z,
                    r->D1, r->B, r->n, 0.0, W, K);
    }
    return 0;
}

static void ridge_free(Ridge *r) {
    free(r->Z); free(r->G); free(r->Rt); free(r->A); free(r->B);
    memset(r, 0, sizeof *r);
}

// Whitening statistics into m and the system of the few-shot set into r.
static void fit_prepare(const float *X, const int *y, int n, int D, int K,
                        FewshotModel *m, Ridge *r) {
    SM_CHECK(n > 0 && D > 0 && K > 0, "fewshot: n=%d D=%d K=%d must be > 0", n, D, K);
    model_init(m, D, K);
    whiten_stats(X, n, D, m->mean, m->std);
    ridge_prepare(r, X, y, n, m);
}

int fewshot_fit(const float *X, const int *y, int n, int D, int K, double l2,
                FewshotModel *m) {
    Ridge r;
    fit_prepare(X, y, n, D, K, m, &r);
    int info = ridge_solve(&r, l2, m->W);
    ridge_free(&r);
    if (info != 0) fewshot_free(m);
    return info == 0 ? 0 : -1;
}

// ---------------------------------------------------------------- accuracy

// Index of the largest of s (K), the first on ties (as jnp.argmax).
static int argmax(const double *s, int K) {
    int best = 0;
    for (int k = 1; k < K; k++)
        if (s[k] > s[best]) best = k;
    return best;
}

double fewshot_accuracy(const FewshotModel *m, const float *X, const int *y, int n) {
    SM_CHECK(n > 0, "fewshot: empty test split");
    int D = m->D, K = m->K, D1 = D + 1;
    double *Z = sm_malloc((size_t)FEWSHOT_CHUNK * D1 * sizeof(double));
    double *S = sm_malloc((size_t)FEWSHOT_CHUNK * K * sizeof(double));
    long correct = 0;
    for (int i0 = 0; i0 < n; i0 += FEWSHOT_CHUNK) {
        int rows = n - i0 < FEWSHOT_CHUNK ? n - i0 : FEWSHOT_CHUNK;
        whiten_rows(X + (size_t)i0 * D, rows, D, m->mean, m->std, Z);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, K, D1, 1.0, Z, D1,
                    m->W, K, 0.0, S, K);
        for (int i = 0; i < rows; i++)
            correct += argmax(S + (size_t)i * K, K) == y[i0 + i];
    }
    free(Z); free(S);
    return (double)correct / n;
}

// ---------------------------------------------------------------- sweep

// acc (nl2) for one seed: sample, build the system once, solve per l2.
// Returns 0, -1 (a class is short of shots) or -2 (a solve failed).
static int eval_seed(const float *Xtr, const int *ytr, int ntr, const float *Xte,
                     const int *yte, int nte, int D, int K, int shots, uint64_t seed,
                     const double *l2s, int nl2, double *acc) {
    int n = K * shots;
    int *idx = sm_malloc((size_t)n * sizeof(int));
    if (fewshot_sample(ytr, ntr, K, shots, seed, idx) != 0) { free(idx); return -1; }
    float *Xs = sm_malloc((size_t)n * D * sizeof(float));
    int *ys = sm_malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        memcpy(Xs + (size_t)i * D, Xtr + (size_t)idx[i] * D, (size_t)D * sizeof(float));
        ys[i] = ytr[idx[i]];
    }
    FewshotModel m;
    Ridge r;
    fit_prepare(Xs, ys, n, D, K, &m, &r);
    int rc = 0;
    for (int l = 0; l < nl2 && rc == 0; l++) {
        if (ridge_solve(&r, l2s[l], m.W) != 0) {
            fprintf(stderr, "softmoe: fewshot: ridge system with l2=%g is not positive "
                    "definite (%d-shot, seed %llu); use a larger l2\n", l2s[l], shots,
                    (unsigned long long)seed);
            rc = -2;
        } else {
            acc[l] = fewshot_accuracy(&m, Xte, yte, nte);
        }
    }
    ridge_free(&r);
    fewshot_free(&m);
    free(idx); free(Xs); free(ys);
    return rc;
}

double fewshot_eval(const float *Xtr, const int *ytr, int ntr, const float *Xte,
                    const int *yte, int nte, int D, int K, int shots, int seeds,
                    const double *l2s, int nl2, double *best_l2) {
    SM_CHECK(seeds > 0 && nl2 > 0, "fewshot: seeds=%d and l2 count=%d must be > 0",
             seeds, nl2);
    double *acc = sm_malloc((size_t)seeds * nl2 * sizeof(double)); // (seeds,nl2)
    for (int s = 0; s < seeds; s++) {
        int rc = eval_seed(Xtr, ytr, ntr, Xte, yte, nte, D, K, shots, (uint64_t)s,
                           l2s, nl2, acc + (size_t)s * nl2);
        if (rc != 0) { free(acc); return rc; }
    }
    // The l2 is chosen on the mean over seeds, not per seed, so the reported
    // number is one setting's average rather than a max over noise.
    int best = 0;
    double best_mean = -1;
    for (int l = 0; l < nl2; l++) {
        double mean = 0;
        for (int s = 0; s < seeds; s++) mean += acc[(size_t)s * nl2 + l];
        mean /= seeds;
        if (mean > best_mean) { best_mean = mean; best = l; }
    }
    if (best_l2) *best_l2 = l2s[best];
    free(acc);
    return best_mean;
}
