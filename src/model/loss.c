// softmax_xent (mean over batch) and sigmoid_xent (sum over classes, mean
// over batch), on float targets so one-hot and multi-hot labels share a path.
#include <math.h>

#include "layers.h"

static double softplus(double z) { return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)); }

double loss_forward(float *losses, const float *logits, const float *targets,
                    int B, int K, int kind) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K, *t = targets + (size_t)b * K;
        double l = 0.0;
        if (kind == LOSS_SOFTMAX_XENT) {
            double mx = z[0];
            for (int k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
            double s = 0.0;
            for (int k = 0; k < K; k++) s += exp((double)z[k] - mx);
            double lse = mx + log(s);
            for (int k = 0; k < K; k++) l -= (double)t[k] * ((double)z[k] - lse);
        } else {
            // -(t log sig(z) + (1-t) log(1-sig(z))) = softplus(z) - t z
            for (int k = 0; k < K; k++) l += softplus(z[k]) - (double)t[k] * z[k];
        }
        if (losses) losses[b] = (float)l;
        total += l;
    }
    return total / B;
}

void loss_backward(float *dlogits, const float *logits, const float *targets,
                   int B, int K, int kind) {
    #pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K, *t = targets + (size_t)b * K;
        float *d = dlogits + (size_t)b * K;
        if (kind == LOSS_SOFTMAX_XENT) {
            double mx = z[0], s = 0.0, tsum = 0.0;
            for (int k = 1; k < K; k++) mx = z[k] > mx ? z[k] : mx;
            for (int k = 0; k < K; k++) s += exp((double)z[k] - mx);
            for (int k = 0; k < K; k++) tsum += t[k];
            for (int k = 0; k < K; k++)
                d[k] += (float)((exp((double)z[k] - mx) / s * tsum - t[k]) / B);
        } else {
            for (int k = 0; k < K; k++) {
                double sg = 1.0 / (1.0 + exp(-(double)z[k]));
                d[k] += (float)((sg - t[k]) / B);
            }
        }
    }
}
