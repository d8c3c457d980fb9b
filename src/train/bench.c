// `softmoe bench`: times the training step (forward, backward, clip, Adam)
// on random data after warm-up, and the sgemm peak of this machine in the
// same run, so MFU is a ratio of two measurements taken side by side.
#include "bench.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"
#include "../core/rng.h"
#include "../data/loader.h"
#include "../model/layers.h"
#include "../model/moe.h"
#include "../model/vit.h"
#include "../optim/optim.h"

// Operands of the sgemm peak measurement, allocated once.
typedef struct { float *a, *b, *c; int n; } Peak;

static void peak_init(Peak *p, int n) {
    p->n = n;
    p->a = sm_aligned((size_t)n * n * sizeof(float));
    p->b = sm_aligned((size_t)n * n * sizeof(float));
    p->c = sm_aligned((size_t)n * n * sizeof(float));
    for (size_t i = 0; i < (size_t)n * n; i++) p->a[i] = p->b[i] = 1.0f / (float)(1 + i % 7);
}

// GFLOP/s of one n x n x n sgemm.
static double peak_once(Peak *p) {
    const int n = p->n;
    double t0 = sm_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, p->a, n, p->b, n,
                0.0f, p->c, n);
    return 2.0 * n * n * (double)n / (sm_now() - t0) / 1e9;
}

static void peak_free(Peak *p) { free(p->a); free(p->b); free(p->c); }

double bench_sgemm_peak(int n, int reps) {
    Peak p;
    peak_init(&p, n);
    double best = 0;
    for (int r = 0; r < reps + 1; r++) {
        double gf = peak_once(&p);
        if (r > 0 && gf > best) best = gf;  // the first call warms caches and threads
    }
    peak_free(&p);
    return best;
}

static float *filled(size_t n, Rng *r, float a) {
    float *p = sm_aligned(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = a * rng_normal(r);
    return p;
}

// Seconds for forward + backward of a dense MLP block (gelu MLP) on R rows.
static double time_mlp(int R, int D, int M, int reps, Rng *r) {
    float *x = filled((size_t)R * D, r, 1), *w1 = filled((size_t)D * M, r, 0.05f);
    float *w2 = filled((size_t)M * D, r, 0.05f), *b1 = filled(M, r, 0), *b2 = filled(D, r, 0);
    float *h = filled((size_t)R * M, r, 0), *hg = filled((size_t)R * M, r, 0);
    float *y = filled((size_t)R * D, r, 0), *dh = filled((size_t)R * M, r, 0);
    float *dhg = filled((size_t)R * M, r, 0), *dx = filled((size_t)R * D, r, 0);
    float *g1 = filled((size_t)D * M, r, 0), *g2 = filled((size_t)M * D, r, 0);
    float *gb1 = filled(M, r, 0), *gb2 = filled(D, r, 0);
    double best = 1e30;
    for (int i = 0; i < reps + 1; i++) {
        double t0 = sm_now();
        mlp_forward(y, h, hg, x, w1, b1, w2, b2, R, D, M, 0, 0);
        mlp_backward(dx, g1, gb1, g2, gb2, dh, dhg, y, x, h, hg, w1, w2, R, D, M, 0);
        double t = sm_now() - t0;
        if (i > 0 && t < best) best = t;
    }
    float *all[] = {x, w1, w2, b1, b2, h, hg, y, dh, dhg, dx, g1, g2, gb1, gb2};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) free(all[i]);
    return best;
}

// Seconds for forward + backward of one MoE layer on (B,N,D) tokens (*block),
// and of its experts alone on the same rows (*experts), as moe.c runs them.
static void time_moe(MoeDims d, int reps, Rng *r, double *block, double *experts) {
    const size_t S = (size_t)d.E * d.P, BND = (size_t)d.B * d.N * d.D;
    const size_t R = moe_rows(d), xd = d.E * R * d.D, xm = d.E * R * d.M;
    float *abuf = filled(moe_acts_floats(d), r, 0), *sbuf = filled(moe_scratch_floats(d), r, 0);
    MoeActs a;
    MoeScratch sc;
    moe_acts_carve(&a, abuf, d);
    moe_scratch_carve(&sc, sbuf, d);
    size_t nw = (size_t)d.D * S + 1 + (size_t)d.D * d.E + 2 * (size_t)d.E * d.D * d.M +
                (size_t)d.E * (d.M + d.D);
    float *wb = filled(nw, r, 0.05f), *gb = filled(nw, r, 0);
    MoeW w, g;
    MoeW *both[2] = {&w, &g};
    float *base[2] = {wb, gb};
    for (int k = 0; k < 2; k++) {
        float *p = base[k];
        both[k]->mu = p, p += (size_t)d.D * S;
        both[k]->scale = p, p += 1;
        both[k]->wr = p, p += (size_t)d.D * d.E;
        both[k]->w1 = p, p += (size_t)d.E * d.D * d.M;
        both[k]->b1 = p, p += (size_t)d.E * d.M;
        both[k]->w2 = p, p += (size_t)d.E * d.M * d.D;
        both[k]->b2 = p;
    }
    w.scale[0] = 1.0f;
    float *y = filled(BND, r, 1), *out = filled(BND, r, 0), *dy = filled(BND, r, 0);
    MoeCtx ctx = {.train = 1, .seed = 1};
    double best = 1e30, best_e = 1e30;
    for (int i = 0; i < reps + 1; i++) {
        ctx.step = i;
        double t0 = sm_now();
        moe_forward(out, &a, &sc, y, &w, d, &ctx, 0);
        moe_backward(dy, &g, &sc, out, &a, y, &w, d);
        double t1 = sm_now();
        #pragma omp parallel for schedule(dynamic)
        for (int e = 0; e < d.E; e++) {
            size_t rd = e * R * d.D, rm = e * R * d.M, wo = (size_t)e * d.D * d.M;
            mlp_forward(a.ye + rd, a.h + rm, a.hg + rm, a.xe + rd, w.w1 + wo, w.b1 + e * d.M,
                        w.w2 + wo, w.b2 + e * d.D, (int)R, d.D, d.M, 0, 1);
            memset(sc.dxe + rd, 0, R * d.D * sizeof(float));
            mlp_backward(sc.dxe + rd, g.w1 + wo, g.b1 + e * d.M, g.w2 + wo, g.b2 + e * d.D,
                         sc.dh + rm, sc.dhg + rm, sc.dye + rd, a.xe + rd, a.h + rm, a.hg + rm,
                         w.w1 + wo, w.w2 + wo, (int)R, d.D, d.M, 1);
        }
        double t2 = sm_now();
        if (i > 0 && t1 - t0 < best) best = t1 - t0;
        if (i > 0 && t2 - t1 < best_e) best_e = t2 - t1;
    }
    (void)xd, (void)xm;
    free(abuf); free(sbuf); free(wb); free(gb); free(y); free(out); free(dy);
    *block = best, *experts = best_e;
}

// The MoE block against the dense MLP it replaces (paper, Section 3: about
// the same cost at equal slot count), and its routing overhead (the block
// minus its experts: routing, dispatch, combine and their backward).
static void bench_blocks(const VitDims *d, int B) {
    Rng r;
    rng_seed(&r, 3, 4);
    MoeDims md = vit_moe_dims(d, B);
    md.El = d->E, md.W = 1;  // one process holding every expert
    double tm, te;
    time_moe(md, 5, &r, &tm, &te);
    const int rows = (int)moe_rows(md) * d->E;
    double ts = time_mlp(rows, d->D, d->M, 5, &r);
    double tn = time_mlp(B * d->N, d->D, d->M, 5, &r);
    printf("block fwd+bwd: %s %.2f ms (E=%d P=%d, %d expert rows) | experts %.2f ms | routing "
           "overhead %.2f ms | dense mlp on %d rows %.2f ms (ratio %.2f) | dense mlp on %d "
           "tokens %.2f ms (ratio %.2f)\n",
           d->router->name, tm * 1e3, d->E, d->EP, rows, te * 1e3, (tm - te) * 1e3, rows,
           ts * 1e3, tm / ts, B * d->N, tn * 1e3, tm / tn);
}

// Images/s the loader alone delivers with `threads` decode threads over nb
// batches (20 normally; fewer for a bench of very few steps).
static double loader_rate(const Config *c, int threads, int nb, float *img, float *tgt) {
    LoaderSpec sp = loader_spec_config(c, 1);
    sp.threads = threads, sp.quiet = 1;
    char err[1024];
    Loader *l = loader_open(&sp, err, sizeof err);
    if (!l) sm_die("%s (data.train)", err);
    loader_next(l, img, tgt, NULL);  // the first batch pays for thread start and file opening
    double t0 = sm_now();
    for (int i = 0; i < nb; i++) loader_next(l, img, tgt, NULL);
    double rate = nb * sp.B / (sm_now() - t0);
    loader_close(l);
    return rate;
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

    Loader *ld = NULL;
    if (strcmp(c->source, "synthetic")) {
        for (int th = 1; th <= 2; th++)
            printf("loader: %.1f img/s with %d decode thread%s (%s, %s)\n",
                   loader_rate(c, th, steps < 5 ? 4 * steps : 20, img, tgt), th, th > 1 ? "s" : "", c->train, c->pp_train);
        LoaderSpec sp = loader_spec_config(c, 1);
        sp.quiet = 1;
        char err[1024];
        ld = loader_open(&sp, err, sizeof err);
        if (!ld) sm_die("%s (data.train)", err);
    }
    double tf = 0, tb = 0, tu = 0, tw = 0, peak = 0, peak_lo = 1e30, best_step = 1e30;
    const int warm = 2;
    // The machine is shared: other jobs slow the model and the peak alike,
    // but not always at the same moments. So the peak is measured between
    // the model steps (one 2048^3 sgemm after each, plus one before), and
    // MFU is the best of those against the mean step.
    Peak pk;
    peak_init(&pk, 2048);
    peak_once(&pk);  // warms caches and threads
    // The gradients start at zero and adam_update_zero leaves them zero, so
    // no step needs vit_zero_grad (as in train.c).
    vit_zero_grad(&m);
    for (int s = 0; s < warm + steps; s++) {
        double tl = sm_now();
        if (ld) loader_next(ld, img, tgt, NULL);
        if (s >= warm) tw += sm_now() - tl;
        double t0 = sm_now();
        m.ctx = (MoeCtx){.train = 1, .seed = c->seed, .step = s};  // routing noise on, as in training
        vit_forward(&m, img, tgt, B);
        double t1 = sm_now();
        vit_backward(&m, img, tgt, B);
        double t2 = sm_now();
        float gs = clip_factor(l2_norm(m.grads, n), 1.0);
        adam_update_zero(m.params, m.grads, opt_m, opt_v, &m.pt, wd, 1e-4, 0.9, 0.999, 1e-8, s + 1,
                         gs);
        double t3 = sm_now();
        if (s >= warm) {
            tf += t1 - t0, tb += t2 - t1, tu += t3 - t2;
            best_step = t3 - t0 < best_step ? t3 - t0 : best_step;
            double gf = peak_once(&pk);
            peak = gf > peak ? gf : peak;
            peak_lo = gf < peak_lo ? gf : peak_lo;
        }
    }
    for (int r = 0; r < 2; r++) {  // at least three peak samples, however few the steps
        double gf = peak_once(&pk);
        peak = gf > peak ? gf : peak;
        peak_lo = gf < peak_lo ? gf : peak_lo;
    }
    peak_free(&pk);
    // Test hook: a peak as a busy machine would measure it, to prove the warning.
    const char *fake = getenv("SOFTMOE_BENCH_PEAK");
    if (fake) peak = atof(fake);
    loader_close(ld);
    double step = (tf + tb + tu) / steps;
    double fwd = vit_flops_per_image(d);
    // training FLOPs: forward + backward (2x forward) per image
    double gflops = 3.0 * fwd * B / step / 1e9;
    printf("model: D=%d L=%d H=%d M=%d patch=%d image=%d N=%d K=%d pool=%s, %.2fM params\n",
           d->D, d->L, d->H, d->M, d->P, d->S, d->N, d->K, c->pool, (double)n / 1e6);
    printf("batch: %d, steps timed: %d (after %d warm-up)\n", B, steps, warm);
    printf("step: %.3f s (forward %.3f, backward %.3f, clip+adam %.3f)\n", step, tf / steps,
           tb / steps, tu / steps);
    printf("img_per_s: %.2f\n", B / step);
    if (ld) printf("data_wait: %.1f%% of the step (%.4f s per batch)\n",
                   100.0 * tw / steps / (step + tw / steps), tw / steps);
    printf("model_gflops_per_s: %.1f (3 x %.3f GFLOP forward per image)\n", gflops, fwd / 1e9);
    printf("sgemm_peak_gflops_per_s: %.1f (2048^3, best of %d measured between the steps; "
           "lowest %.1f)\n", peak, steps + 2, peak_lo);
    double mfu = 100.0 * gflops / peak;
    printf("mfu: %.1f%%\n", mfu);
    // A step cannot beat the machine's sgemm: above 100% the peak samples
    // all met a busy machine. Said, not hidden: the number is what was measured.
    if (mfu > 100.0)
        printf("warning: mfu above 100%% means the sgemm peak was measured while the machine "
               "was busy (other jobs); rerun on a quieter machine or with more steps "
               "(SOFTMOE_BENCH_STEPS)\n");
    printf("best_step: %.3f s (mfu %.1f%% at the best step)\n", best_step,
           100.0 * 3.0 * fwd * B / best_step / 1e9 / peak);
    printf("peak_rss_mb: %.0f\n", (double)sm_peak_rss() / 1048576.0);
    if (d->n_moe) bench_blocks(d, B);
    free(opt_m); free(opt_v); free(wd); free(img); free(tgt);
    vit_free(&m);
}
