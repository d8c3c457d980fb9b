// Tests of src/eval/fewshot: shot sampling, the ridge solution against an
// independent long-double computation of big_vision's recipe, cases whose
// accuracy is known exactly, and the seeds x l2 sweep on synthetic features.
#include <string.h>

#include "core/common.h"
#include "core/rng.h"
#include "eval/fewshot.h"
#include "testutil.h"

// ---------------------------------------------------------------- helpers

// X (n,D) with labels y[i] = i % K: class means mu (K,D) ~ N(0, sep^2) drawn
// from means_seed, plus unit noise drawn from seed (so a train and a test
// split share means but not rows). sep = 0 gives features that carry no
// label information.
static void make_clusters(float *X, int *y, int n, int D, int K, float sep,
                          uint64_t means_seed, uint64_t seed) {
    Rng r;
    rng_seed(&r, means_seed, 7);
    float *mu = malloc((size_t)K * D * sizeof(float));
    for (int i = 0; i < K * D; i++) mu[i] = sep * rng_normal(&r);
    rng_seed(&r, seed, 8);
    for (int i = 0; i < n; i++) {
        y[i] = i % K;
        for (int d = 0; d < D; d++)
            X[(size_t)i * D + d] = mu[(size_t)y[i] * D + d] + rng_normal(&r);
    }
    free(mu);
}

// Solves A x = b (m,m) in place by Gaussian elimination with partial
// pivoting, for nrhs right-hand sides B (m,nrhs) row-major.
static void gauss_solve(long double *A, long double *B, int m, int nrhs) {
    for (int c = 0; c < m; c++) {
        int p = c;
        for (int r = c + 1; r < m; r++)
            if (fabsl(A[r * m + c]) > fabsl(A[p * m + c])) p = r;
        for (int j = 0; j < m; j++) { long double t = A[c * m + j]; A[c * m + j] = A[p * m + j]; A[p * m + j] = t; }
        for (int j = 0; j < nrhs; j++) { long double t = B[c * nrhs + j]; B[c * nrhs + j] = B[p * nrhs + j]; B[p * nrhs + j] = t; }
        for (int r = c + 1; r < m; r++) {
            long double f = A[r * m + c] / A[c * m + c];
            for (int j = c; j < m; j++) A[r * m + j] -= f * A[c * m + j];
            for (int j = 0; j < nrhs; j++) B[r * nrhs + j] -= f * B[c * nrhs + j];
        }
    }
    for (int c = m - 1; c >= 0; c--)
        for (int j = 0; j < nrhs; j++) {
            long double s = B[c * nrhs + j];
            for (int k = c + 1; k < m; k++) s -= A[c * m + k] * B[k * nrhs + j];
            B[c * nrhs + j] = s / A[c * m + c];
        }
}

// big_vision's recipe written out independently, always in the primal form:
// mean, population std + 1e-5, Z = [(X-mean)/std, 100], Y = 2*onehot-1,
// W = (Z^T Z + l2 I)^-1 Z^T Y. Writes mean, std (D) and W (D+1,K).
static void ref_fit(const float *X, const int *y, int n, int D, int K, double l2,
                    long double *mean, long double *std, long double *W) {
    int D1 = D + 1;
    for (int d = 0; d < D; d++) {
        long double s = 0, v = 0;
        for (int i = 0; i < n; i++) s += X[i * D + d];
        mean[d] = s / n;
        for (int i = 0; i < n; i++) v += (X[i * D + d] - mean[d]) * (X[i * D + d] - mean[d]);
        std[d] = sqrtl(v / n) + 1e-5L;
    }
    long double *Z = malloc((size_t)n * D1 * sizeof(long double));
    for (int i = 0; i < n; i++) {
        for (int d = 0; d < D; d++) Z[i * D1 + d] = (X[i * D + d] - mean[d]) / std[d];
        Z[i * D1 + D] = 100.0L;
    }
    long double *A = calloc((size_t)D1 * D1, sizeof(long double));
    for (int a = 0; a < D1; a++) {
        for (int b = 0; b < D1; b++)
            for (int i = 0; i < n; i++) A[a * D1 + b] += Z[i * D1 + a] * Z[i * D1 + b];
        A[a * D1 + a] += l2;
        for (int k = 0; k < K; k++) {
            long double s = 0;
            for (int i = 0; i < n; i++) s += Z[i * D1 + a] * (y[i] == k ? 1.0L : -1.0L);
            W[a * K + k] = s;
        }
    }
    gauss_solve(A, W, D1, K);
    free(Z); free(A);
}

// Scores (K) of one feature row x (D) under the fitted model, in long double.
static void ref_scores(const FewshotModel *m, const float *x, long double *s) {
    int D = m->D, K = m->K;
    for (int k = 0; k < K; k++) {
        long double t = 100.0L * m->W[(size_t)D * K + k];
        for (int d = 0; d < D; d++) t += (x[d] - m->mean[d]) / m->std[d] * m->W[(size_t)d * K + k];
        s[k] = t;
    }
}

// ---------------------------------------------------------------- ridge

// Fits one problem and compares mean, std and W with ref_fit, and the test
// accuracy with the argmax of the reference model's scores.
static void check_against_ref(int n, int D, int K, double l2) {
    int nte = 60;
    float *X = malloc((size_t)n * D * sizeof(float)), *Xte = malloc((size_t)nte * D * sizeof(float));
    int *y = malloc((size_t)n * sizeof(int)), *yte = malloc((size_t)nte * sizeof(int));
    make_clusters(X, y, n, D, K, 0.7f, 11, 1);
    make_clusters(Xte, yte, nte, D, K, 0.7f, 11, 2); // same means, fresh rows
    for (int i = 0; i < n * D; i++) X[i] = 3.0f * X[i] + 5.0f; // whitening must undo this
    for (int i = 0; i < nte * D; i++) Xte[i] = 3.0f * Xte[i] + 5.0f;

    long double *mean = malloc(D * sizeof(long double)), *std = malloc(D * sizeof(long double));
    long double *W = malloc((size_t)(D + 1) * K * sizeof(long double));
    ref_fit(X, y, n, D, K, l2, mean, std, W);
    FewshotModel m;
    ck_assert_int_eq(fewshot_fit(X, y, n, D, K, l2, &m), 0);
    ck_assert_int_eq(m.D, D);
    ck_assert_int_eq(m.K, K);
    for (int d = 0; d < D; d++) {
        ck_assert_msg(fabsl(m.mean[d] - mean[d]) < 1e-12L * (1 + fabsl(mean[d])), "mean[%d]", d);
        ck_assert_msg(fabsl(m.std[d] - std[d]) < 1e-12L * std[d], "std[%d] %.17g want %.17Lg",
                      d, m.std[d], std[d]);
    }
    long double wmax = 0, err = 0;
    for (int i = 0; i < (D + 1) * K; i++) {
        if (fabsl(W[i]) > wmax) wmax = fabsl(W[i]);
        if (fabsl(m.W[i] - W[i]) > err) err = fabsl(m.W[i] - W[i]);
    }
    ck_assert_msg(err <= 1e-9L * wmax, "n=%d D=%d l2=%g: W max err %Lg (max|W| %Lg)",
                  n, D, l2, err, wmax);

    // Accuracy: argmax of the reference weights on the same whitening.
    int correct = 0;
    long double *s = malloc(K * sizeof(long double));
    for (int i = 0; i < nte; i++) {
        int best = 0;
        for (int k = 0; k < K; k++) {
            long double t = 100.0L * W[D * K + k];
            for (int d = 0; d < D; d++) t += (Xte[i * D + d] - mean[d]) / std[d] * W[d * K + k];
            s[k] = t;
            if (t > s[best]) best = k;
        }
        correct += best == yte[i];
    }
    double acc = fewshot_accuracy(&m, Xte, yte, nte);
    ck_assert_msg(acc == (double)correct / nte, "accuracy %g, reference %g", acc,
                  (double)correct / nte);
    fewshot_free(&m);
    ck_assert_ptr_null(m.W);
    free(X); free(Xte); free(y); free(yte); free(mean); free(std); free(W); free(s);
}

START_TEST(test_ridge_primal) {
    // n = 40 >= D+1 = 7: big_vision's primal system (Z^T Z + l2 I).
    double l2s[] = {1e-2, 1.0, 1024.0};
    for (int i = 0; i < 3; i++) check_against_ref(40, 6, 3, l2s[i]);
}
END_TEST

START_TEST(test_ridge_dual) {
    // n = 9 < D+1 = 21: the dual system (Z Z^T + l2 I) must give the same W.
    double l2s[] = {1e-1, 1.0, 1024.0};
    for (int i = 0; i < 3; i++) check_against_ref(9, 20, 3, l2s[i]);
}
END_TEST

// One-hot features (padded with constant columns, which whiten to 0) are
// separable by a linear map that reproduces 2*onehot-1 exactly, so with a
// tiny l2 the fitted scores equal the targets and accuracy is 1.
static void check_separable(int K, int D, int shots) {
    int n = K * shots;
    float *X = calloc((size_t)n * D, sizeof(float));
    int *y = malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) {
        y[i] = i % K;
        X[(size_t)i * D + y[i]] = 1.0f;
        for (int d = K; d < D; d++) X[(size_t)i * D + d] = 0.25f;
    }
    FewshotModel m;
    ck_assert_int_eq(fewshot_fit(X, y, n, D, K, 1e-6, &m), 0);
    long double *s = malloc(K * sizeof(long double));
    for (int i = 0; i < n; i++) {
        ref_scores(&m, X + (size_t)i * D, s);
        for (int k = 0; k < K; k++)
            ck_assert_msg(fabsl(s[k] - (y[i] == k ? 1.0L : -1.0L)) < 1e-5L,
                          "D=%d row %d class %d: score %Lg", D, i, k, s[k]);
    }
    ck_assert(fewshot_accuracy(&m, X, y, n) == 1.0);
    fewshot_free(&m);
    free(X); free(y); free(s);
}

START_TEST(test_separable_exact) {
    check_separable(4, 4, 3);  // n = 12 >= 5: primal
    check_separable(4, 20, 2); // n = 8 < 21: dual
}
END_TEST

// The same feature row for every example: whitening maps it to 0, only the
// bias is left, and by symmetry of the balanced targets every class gets the
// same score; all test rows then share one prediction, and a balanced test
// split scores exactly 1/K.
START_TEST(test_identical_features_chance) {
    int K = 5, D = 8, ntr = 50, nte = 35;
    float *Xtr = malloc((size_t)ntr * D * sizeof(float)), *Xte = malloc((size_t)nte * D * sizeof(float));
    int *ytr = malloc(ntr * sizeof(int)), *yte = malloc(nte * sizeof(int));
    for (int i = 0; i < ntr; i++) ytr[i] = i % K;
    for (int i = 0; i < nte; i++) yte[i] = i % K;
    for (int i = 0; i < ntr * D; i++) Xtr[i] = 0.1f * (float)(i % D) - 0.3f;
    for (int i = 0; i < nte * D; i++) Xte[i] = 0.1f * (float)(i % D) - 0.3f;
    double l2s[] = {1e-3, 1.0, 1024.0}, best = 0;
    // shots 4: n = 20 >= 9 (primal); shots 1: n = 5 < 9 (dual). The seed
    // mean of three exact 0.2 is 0.2 up to rounding of the sum.
    double acc = fewshot_eval(Xtr, ytr, ntr, Xte, yte, nte, D, K, 4, 3, l2s, 3, &best);
    ck_assert_msg(fabs(acc - 0.2) < 1e-15, "primal: accuracy %.17g, want 0.2", acc);
    acc = fewshot_eval(Xtr, ytr, ntr, Xte, yte, nte, D, K, 1, 3, l2s, 3, &best);
    ck_assert_msg(fabs(acc - 0.2) < 1e-15, "dual: accuracy %.17g, want 0.2", acc);
    FewshotModel m;
    ck_assert_int_eq(fewshot_fit(Xtr, ytr, 20, D, K, 1.0, &m), 0);
    for (int d = 0; d < D * K; d++) ck_assert(m.W[d] == 0.0); // no feature carries weight
    ck_assert(fewshot_accuracy(&m, Xte, yte, nte) == 7.0 / 35.0);
    // In the primal form the K right-hand sides are equal, so the scores tie
    // exactly and the argmax takes the first class, as jnp.argmax does.
    for (int i = 0; i < nte; i++) yte[i] = 0;
    ck_assert(fewshot_accuracy(&m, Xte, yte, nte) == 1.0);
    fewshot_free(&m);
    free(Xtr); free(Xte); free(ytr); free(yte);
}
END_TEST

// ---------------------------------------------------------------- sampling

// Labels with uneven class sizes: class c has 10 + 5c examples, interleaved.
static int uneven_labels(int *labels, int K) {
    int n = 0;
    for (int round = 0; round < 10 + 5 * (K - 1); round++)
        for (int c = 0; c < K; c++)
            if (round < 10 + 5 * c) labels[n++] = c;
    return n;
}

START_TEST(test_sample_per_class) {
    int K = 4, shots = 5, labels[200];
    int n = uneven_labels(labels, K);
    int idx[20], again[20], other[20], fewer[8];
    ck_assert_int_eq(fewshot_sample(labels, n, K, shots, 0, idx), 0);
    char *seen = calloc(n, 1);
    for (int c = 0; c < K; c++)
        for (int i = 0; i < shots; i++) {
            int j = idx[c * shots + i];
            ck_assert_msg(j >= 0 && j < n, "index %d out of range", j);
            ck_assert_msg(labels[j] == c, "slot of class %d holds class %d", c, labels[j]);
            ck_assert_msg(!seen[j], "index %d picked twice", j);
            seen[j] = 1;
        }
    free(seen);
    // Deterministic for a seed, different across seeds.
    ck_assert_int_eq(fewshot_sample(labels, n, K, shots, 0, again), 0);
    ck_assert_mem_eq(idx, again, sizeof idx);
    ck_assert_int_eq(fewshot_sample(labels, n, K, shots, 1, other), 0);
    for (int c = 0; c < K; c++) // every class's draw must change, not only one
        ck_assert_msg(memcmp(idx + c * shots, other + c * shots, shots * sizeof(int)) != 0,
                      "class %d drew the same shots for seeds 0 and 1", c);
    // Classes of equal size must not share one permutation: the positions
    // drawn within class 0 and class 1 (labels alternate) should differ.
    int alt[40], pos[2][5];
    for (int i = 0; i < 40; i++) alt[i] = i % 2;
    ck_assert_int_eq(fewshot_sample(alt, 40, 2, shots, 0, idx), 0);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < shots; i++) pos[c][i] = idx[c * shots + i] / 2;
    ck_assert_msg(memcmp(pos[0], pos[1], sizeof pos[0]) != 0, "classes share a permutation");
    ck_assert_int_eq(fewshot_sample(labels, n, K, shots, 0, idx), 0);
    // Fewer shots of the same seed are a prefix of each class's draw.
    ck_assert_int_eq(fewshot_sample(labels, n, K, 2, 0, fewer), 0);
    for (int c = 0; c < K; c++)
        ck_assert_mem_eq(fewer + c * 2, idx + c * shots, 2 * sizeof(int));
}
END_TEST

START_TEST(test_sample_uniform) {
    // Over many seeds each member of a class is drawn about shots/count of
    // the time; taking the first `shots` (no shuffle) would fail this.
    int K = 2, labels[40], idx[6], hits[40] = {0}, seeds = 3000;
    for (int i = 0; i < 40; i++) labels[i] = i % K; // 20 per class
    for (int s = 0; s < seeds; s++) {
        ck_assert_int_eq(fewshot_sample(labels, 40, K, 3, (uint64_t)s, idx), 0);
        for (int i = 0; i < 6; i++) hits[idx[i]]++;
    }
    for (int j = 0; j < 40; j++) // expected 450, sd ~ 19.6
        ck_assert_msg(abs(hits[j] - 450) < 100, "example %d drawn %d times", j, hits[j]);
}
END_TEST

START_TEST(test_sample_short_class) {
    int labels[] = {0, 1, 0, 1, 2, 0, 1, 2, 0, 1}; // class 2 has 2 examples
    int idx[9];
    ck_assert_int_eq(fewshot_sample(labels, 10, 3, 2, 0, idx), 0);
    ck_assert_int_eq(fewshot_sample(labels, 10, 3, 3, 0, idx), -1);
    ck_assert_int_eq(fewshot_sample(labels, 10, 4, 1, 0, idx), -1); // class 3 empty
    double l2 = 1.0;
    float X[10] = {0};
    ck_assert(fewshot_eval(X, labels, 10, X, labels, 10, 1, 3, 3, 2, &l2, 1, NULL) == -1.0);
}
END_TEST

// ---------------------------------------------------------------- sweep

START_TEST(test_eval_clusters) {
    int K = 5, D = 16, ntr = 200, nte = 500;
    float *Xtr = malloc((size_t)ntr * D * sizeof(float)), *Xte = malloc((size_t)nte * D * sizeof(float));
    int *ytr = malloc(ntr * sizeof(int)), *yte = malloc(nte * sizeof(int));
    double l2s[] = {0.0625, 1.0, 16.0, 1024.0}, best = -1;
    make_clusters(Xtr, ytr, ntr, D, K, 2.0f, 3, 1);
    make_clusters(Xte, yte, nte, D, K, 2.0f, 3, 2);
    double acc = fewshot_eval(Xtr, ytr, ntr, Xte, yte, nte, D, K, 5, 3, l2s, 4, &best);
    ck_assert_msg(acc > 0.9, "5-shot accuracy on separated clusters %g", acc);
    ck_assert(best == 0.0625 || best == 1.0 || best == 16.0 || best == 1024.0);
    acc = fewshot_eval(Xtr, ytr, ntr, Xte, yte, nte, D, K, 2, 3, l2s, 4, &best); // dual
    ck_assert_msg(acc > 0.9, "2-shot accuracy on separated clusters %g", acc);

    // Features independent of the labels: near chance (0.2).
    make_clusters(Xtr, ytr, ntr, D, K, 0.0f, 4, 1);
    make_clusters(Xte, yte, nte, D, K, 0.0f, 4, 2);
    acc = fewshot_eval(Xtr, ytr, ntr, Xte, yte, nte, D, K, 5, 3, l2s, 4, &best);
    ck_assert_msg(acc < 0.5, "accuracy on noise %g", acc);
    free(Xtr); free(Xte); free(ytr); free(yte);
}
END_TEST

START_TEST(test_eval_matches_parts) {
    // The sweep's number is the seed-mean accuracy at the l2 whose seed-mean
    // is highest, recomputed here from sample + fit + accuracy.
    int K = 3, D = 10, ntr = 90, nte = 120, shots = 4, seeds = 3, nl2 = 3;
    float *Xtr = malloc((size_t)ntr * D * sizeof(float)), *Xte = malloc((size_t)nte * D * sizeof(float));
    int *ytr = malloc(ntr * sizeof(int)), *yte = malloc(nte * sizeof(int));
    make_clusters(Xtr, ytr, ntr, D, K, 0.4f, 8, 1); // overlapping: l2 matters
    make_clusters(Xte, yte, nte, D, K, 0.4f, 8, 2);
    double l2s[] = {1e-3, 30.0, 4096.0}, mean[3] = {0};
    int idx[12], ys[12];
    float Xs[12 * 10];
    for (int s = 0; s < seeds; s++) {
        ck_assert_int_eq(fewshot_sample(ytr, ntr, K, shots, (uint64_t)s, idx), 0);
        for (int i = 0; i < K * shots; i++) {
            memcpy(Xs + i * D, Xtr + idx[i] * D, D * sizeof(float));
            ys[i] = ytr[idx[i]];
        }
        for (int l = 0; l < nl2; l++) {
            FewshotModel m;
            ck_assert_int_eq(fewshot_fit(Xs, ys, K * shots, D, K, l2s[l], &m), 0);
            mean[l] += fewshot_accuracy(&m, Xte, yte, nte) / seeds;
            fewshot_free(&m);
        }
    }
    int b = 0;
    for (int l = 1; l < nl2; l++)
        if (mean[l] > mean[b]) b = l;
    double best = -1;
    double acc = fewshot_eval(Xtr, ytr, ntr, Xte, yte, nte, D, K, shots, seeds, l2s, nl2, &best);
    ck_assert_msg(fabs(acc - mean[b]) < 1e-12, "eval %g, parts %g", acc, mean[b]);
    ck_assert(best == l2s[b]);
    ck_assert_msg(mean[0] != mean[1] || mean[1] != mean[2], "l2 sweep had no effect");
    free(Xtr); free(Xte); free(ytr); free(yte);
}
END_TEST

static Suite *fewshot_suite(void) {
    Suite *s = suite_create("fewshot");
    TCase *tc = tcase_create("fewshot");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ridge_primal);
    tcase_add_test(tc, test_ridge_dual);
    tcase_add_test(tc, test_separable_exact);
    tcase_add_test(tc, test_identical_features_chance);
    tcase_add_test(tc, test_sample_per_class);
    tcase_add_test(tc, test_sample_uniform);
    tcase_add_test(tc, test_sample_short_class);
    tcase_add_test(tc, test_eval_clusters);
    tcase_add_test(tc, test_eval_matches_parts);
    suite_add_tcase(s, tc);
    return s;
}

SM_TEST_MAIN(fewshot_suite)
