// Few-shot linear probe as big_vision's evaluators/fewshot_lsr.py: per seed,
// `shots` train images per class, features whitened by that set's own mean
// and std, a constant bias feature 100, targets 2*onehot-1, closed-form ridge
// regression in double precision, accuracy of the argmax on the test split.
// Pure math over feature matrices; extracting the features is done elsewhere.
//
// Letters: n examples, D feature width, K classes, D1 = D+1 (with the bias).
#pragma once
#include <stdint.h>

// Value of the appended bias feature: large, so its weight is barely
// regularised by l2 (big_vision's BIAS_CONSTANT).
#define FEWSHOT_BIAS 100.0

typedef struct {
    int D, K;
    double *mean; // (D) of the few-shot train features
    double *std;  // (D) their std + 1e-5, the divisor of the whitening
    double *W;    // (D1,K) row-major, the last row multiplies FEWSHOT_BIAS
} FewshotModel;

// Picks `shots` examples of each class from labels (n, values in [0,K)):
// a prefix of a per-class permutation seeded by (seed, class), so the 5-shot
// set of a seed contains its 1-shot set, as in big_vision. Writes K*shots
// indices in class-major order to idx. Returns 0, or -1 when some class has
// fewer than `shots` examples (idx is then unspecified).
int fewshot_sample(const int *labels, int n, int K, int shots, uint64_t seed, int *idx);

// Ridge regression of 2*onehot(y)-1 on the whitened, bias-extended X (n,D).
// Fills m (free it with fewshot_free). Returns 0, or -1 when the Cholesky
// factorisation fails (l2 <= 0 or far too small for the data).
int fewshot_fit(const float *X, const int *y, int n, int D, int K, double l2,
                FewshotModel *m);
void fewshot_free(FewshotModel *m);

// Fraction of the n rows of X (n,D) whose argmax class equals y.
double fewshot_accuracy(const FewshotModel *m, const float *X, const int *y, int n);

// For seeds 0..seeds-1: sample `shots` per class from the train split, fit
// for each l2 of the sweep l2s (nl2), measure test accuracy. Returns the
// accuracy at the l2 with the best mean over seeds (first on ties), averaged
// over seeds, and writes that l2 to *best_l2 (if not NULL). Returns -1 when
// a class has fewer than `shots` train examples, -2 when a solve fails.
double fewshot_eval(const float *Xtr, const int *ytr, int ntr, const float *Xte,
                    const int *yte, int nte, int D, int K, int shots, int seeds,
                    const double *l2s, int nl2, double *best_l2);
