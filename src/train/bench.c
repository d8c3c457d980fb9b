// `softmoe bench`: times the training step (forward, backward, clip, Adam)
// on random data after warm-up, and the sgemm peak of this machine in the
// same run, so MFU is a ratio of two measurements taken side by side.
#include "bench.h"

#include <cblas.h>
#include <string.h>

#include "../core/common.h"
#include "../core/rng.h"
#include "../model/vit.h"
#include "../optim/optim.h"

double bench_sgemm_peak(int n, int reps) {
    float *a = sm_aligned((size_t)n * n * sizeof(float));
    float *b = sm_aligned((size_t)n * n * sizeof(float));
    float *c = sm_aligned((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = 1.0f / (float)(1 + i % 7);
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {
        double t0 = sm_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double gf = 2.0 * n * n * (double)n / (sm_now() - t0) / 1e9;
        if (r > 0 && gf > best) best = gf;  // the first call warms caches and threads
    }
    free(a); free(b); free(c);
    return best;
}

void bench_run(const Config *c, int steps) {
    Vit m;
    vit_build(&m, c);
    const int B = c->batch_size;
    vit_alloc(&m, B);
    vit_init(&m, c->seed);
    const VitDims *d = &m.d;
    const size_t n = m.pt.total;
    // non-zero head so the backward does full work from the first step
    Rng r;
    rng_seed(&r, 1, 2);
    for (size_t i = 0; i < (size_t)d->D * d->K; i++) m.w.head_w[i] = 0.01f * rng_normal(&r);
    float *opt_m = sm_aligned(n * sizeof(float)), *opt_v = sm_aligned(n * sizeof(float));
    memset(opt_m, 0, n * sizeof(float));
    memset(opt_v, 0, n * sizeof(float));
    float *wd = sm_calloc((size_t)m.pt.n, sizeof(float));
    size_t npix = (size_t)B * d->S * d->S * d->C;
    float *img = sm_aligned(npix * sizeof(float));
    float *tgt = sm_calloc((size_t)B * d->K, sizeof(float));
    for (size_t i = 0; i < npix; i++) img[i] = rng_normal(&r);
    for (int b = 0; b < B; b++) tgt[(size_t)b * d->K + (size_t)b % d->K] = 1.0f;

    double tf = 0, tb = 0, tu = 0;
    const int warm = 2;
    for (int s = 0; s < warm + steps; s++) {
        double t0 = sm_now();
        vit_zero_grad(&m);
        vit_forward(&m, img, tgt, B);
        double t1 = sm_now();
        vit_backward(&m, img, tgt, B);
        double t2 = sm_now();
        float gs = clip_factor(l2_norm(m.grads, n), 1.0);
        adam_update(m.params, m.grads, opt_m, opt_v, &m.pt, wd, 1e-4, 0.9, 0.999, 1e-8, s + 1, gs);
        double t3 = sm_now();
        if (s >= warm) tf += t1 - t0, tb += t2 - t1, tu += t3 - t2;
    }
    double step = (tf + tb + tu) / steps;
    double fwd = vit_flops_per_image(d);
    // training FLOPs: forward + backward (2x forward) per image
    double gflops = 3.0 * fwd * B / step / 1e9;
    double peak = bench_sgemm_peak(2048, 3);
    printf("model: D=%d L=%d H=%d M=%d patch=%d image=%d N=%d K=%d pool=%s, %.2fM params\n",
           d->D, d->L, d->H, d->M, d->P, d->S, d->N, d->K, c->pool, (double)n / 1e6);
    printf("batch: %d, steps timed: %d (after %d warm-up)\n", B, steps, warm);
    printf("step: %.3f s (forward %.3f, backward %.3f, clip+adam %.3f)\n", step, tf / steps,
           tb / steps, tu / steps);
    printf("img_per_s: %.2f\n", B / step);
    printf("model_gflops_per_s: %.1f (3 x %.3f GFLOP forward per image)\n", gflops, fwd / 1e9);
    printf("sgemm_peak_gflops_per_s: %.1f (2048^3, best of 3)\n", peak);
    printf("mfu: %.1f%%\n", 100.0 * gflops / peak);
    printf("peak_rss_mb: %.0f\n", (double)sm_peak_rss() / 1048576.0);
    free(opt_m); free(opt_v); free(wd); free(img); free(tgt);
    vit_free(&m);
}
