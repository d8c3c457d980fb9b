// `softmoe bench`: times the training step (forward, backward, clip, Adam)
// on random data after warm-up, and the sgemm and bf16 GEMM peaks of this
// machine in the same run, so MFU is a ratio of two measurements taken side
// by side, against the peak of the precision the step ran in.
#include "bench.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"
#include "../core/rng.h"
#include "../data/loader.h"
#include "../model/gemm.h"
#include "../model/layers.h"
#include "../model/moe.h"
#include "../model/vit.h"
#include "../optim/optim.h"
#include "train.h"

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
           d->router->name, tm * 1e3, d->E, d->rows, rows, te * 1e3, (tm - te) * 1e3, rows,
           ts * 1e3, tm / ts, B * d->N, tn * 1e3, tm / tn);
}

// One product of shape s at precision prec (few: the few-row fp32 kernels),
// best of reps; a shape the step runs inside a parallel region runs on every
// thread at once, each into its own C, and counts wall time / threads.
static double time_shape(const GemmShape *s, int prec, int few, const float *A, const float *B,
                         float *C, size_t cstride, int reps) {
    CBLAS_TRANSPOSE ta = s->ta ? CblasTrans : CblasNoTrans, tb = s->tb ? CblasTrans : CblasNoTrans;
    gemm_set_precision(prec);
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        int nt = 1;
        double t0 = sm_now();
        #pragma omp parallel if (s->in_parallel)
        {
            #pragma omp single
            nt = omp_get_num_threads();
            float *c = C + (s->in_parallel ? (size_t)omp_get_thread_num() * cstride : 0);
            if (!few)
                gemm_run(ta, tb, s->M, s->N, s->K, s->alpha, A, s->lda, B, s->ldb, s->beta, c,
                         s->ldc);
            else if (!s->tb)
                fewrow_nn(c, A, B, NULL, s->M, s->K, s->N, s->beta != 0.0f);
            else
                fewrow_nt(c, A, B, s->M, s->N, s->K, s->beta != 0.0f);
        }
        double t = (sm_now() - t0) / nt;
        if (r > 0 && t < best) best = t;
    }
    return best;
}

// Every product shape of one bf16 training step (planned at build, calls
// counted over one step): ms per step in fp32 (the best of sgemm, oneDNN's
// fp32 matmul and, for the experts, the few-row kernels) and in bf16 (as the step runs it: operands
// converted, then oneDNN), for the README's comparison.
static void bench_shapes(void) {
    GemmShape s;
    size_t na = 0, nb = 0, nc = 0;
    for (int i = 0; gemm_shape(i, &s) == 0; i++) {
        size_t a = (size_t)(s.ta ? s.K : s.M) * s.lda, b = (size_t)(s.tb ? s.N : s.K) * s.ldb;
        size_t c = (size_t)s.M * s.ldc;
        na = a > na ? a : na, nb = b > nb ? b : nb, nc = c > nc ? c : nc;
    }
    const int nt = omp_get_max_threads();
    Rng r;
    rng_seed(&r, 5, 6);
    float *A = filled(na, &r, 1), *B = filled(nb, &r, 1), *C = filled(nc * nt, &r, 1);
    double t32 = 0, tbf = 0;
    printf("products of one step (ms per step; x = fp32 / bf16):\n");
    for (int i = 0; gemm_shape(i, &s) == 0; i++) {
        if (s.calls == 0 || s.fp32) continue;  // fp32 plans: made by this timing
        // the fp32 step's expert products: few-row kernels (kernels.c)
        int few = s.in_parallel && s.M <= 128 && !s.ta && s.alpha == 1.0f &&
                  s.lda == (s.tb ? s.N : s.K) && s.ldb == (s.tb ? s.K : s.N) && s.ldc == s.N &&
                  (s.tb ? s.beta == 0.0f : 1);
        double fs = time_shape(&s, GEMM_FP32_BLAS, 0, A, B, C, nc, 3) * s.calls;
        double fd = time_shape(&s, GEMM_FP32_DNNL, 0, A, B, C, nc, 3) * s.calls;
        double f = fd < fs ? fd : fs;
        double fw = few ? time_shape(&s, GEMM_FP32_BLAS, 1, A, B, C, nc, 3) * s.calls : 1e30;
        double b = time_shape(&s, GEMM_BF16, 0, A, B, C, nc, 3) * s.calls;
        double best32 = fw < f ? fw : f;
        t32 += best32, tbf += b;
        printf("  %c%c M=%-5d N=%-5d K=%-5d x%-4ld%s sgemm %7.2f oneDNN fp32 %7.2f bf16 %7.2f  "
               "x%.2f  %s\n", "NT"[s.ta], "NT"[s.tb], s.M, s.N, s.K, s.calls,
               s.in_parallel ? " (per thread)" : "", fs * 1e3, fd * 1e3, b * 1e3, best32 / b,
               s.sgemm ? "rounded sgemm" : s.impl);
        if (few) printf("      few-row fp32 kernel %7.2f\n", fw * 1e3);
    }
    printf("products total: fp32 %.1f ms, bf16 %.1f ms per step (x%.2f)\n", t32 * 1e3, tbf * 1e3,
           t32 / tbf);
    gemm_set_precision(GEMM_FP32);
    free(A); free(B); free(C);
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

// The timed step's model, optimiser and inputs.
typedef struct {
    Vit m;
    Optim opt;
    float *img, *tgt;            // (B,S,S,C), (B,K)
    int B, mb, nmicro;           // images per step, per forward/backward, micro-steps
    Loader *ld;                  // data.train on shards (NULL: the random batch)
} Bench;

static void bench_setup(Bench *b, const Config *c) {
    memset(b, 0, sizeof *b);
    vit_build(&b->m, c);
    char err[1024];
    b->B = c->batch_size;
    b->mb = train_micro_batch(c, 1, err, sizeof err);
    if (b->mb < 0) sm_die("%s", err);
    b->nmicro = b->B / b->mb;
    vit_alloc(&b->m, b->mb);
    vit_init(&b->m, c->seed);
    optim_init(&b->opt, &b->m.pt, c);  // the config's weight decay
    const VitDims *d = &b->m.d;
    // non-zero head so the backward does full work from the first step
    Rng r;
    rng_seed(&r, 1, 2);
    for (size_t i = 0; i < (size_t)d->D * d->K; i++) b->m.w.head_w[i] = 0.01f * rng_normal(&r);
    size_t npix = (size_t)b->B * d->img * d->img * d->C;
    b->img = sm_aligned(npix * sizeof(float));
    b->tgt = sm_calloc((size_t)b->B * d->K, sizeof(float));
    for (size_t i = 0; i < npix; i++) b->img[i] = rng_normal(&r);
    for (int i = 0; i < b->B; i++) b->tgt[(size_t)i * d->K + (size_t)i % d->K] = 1.0f;
    if (!strcmp(c->source, "synthetic")) return;
    for (int th = 1; th <= 2; th++)
        printf("loader: %.1f img/s with %d decode thread%s (%s, %s)\n",
               loader_rate(c, th, c->bench_steps < 5 ? 4 * c->bench_steps : 20, b->img, b->tgt),
               th, th > 1 ? "s" : "", c->train, c->pp_train);
    LoaderSpec sp = loader_spec_config(c, 1);
    sp.quiet = 1;
    b->ld = loader_open(&sp, err, sizeof err);
    if (!b->ld) sm_die("%s (data.train)", err);
}

static void bench_free(Bench *b) {
    loader_close(b->ld);
    optim_free(&b->opt);
    free(b->img), free(b->tgt);
    vit_free(&b->m);
}

// Seconds of the phases of the timed steps (sums), the best step, the peaks.
typedef struct {
    double fwd, bwd, upd, wait, best, peak32, peak_lo;
} Times;

// One training step as train.c runs it on one rank: every micro-batch
// forward and backward, then clipping (optim.clip) and Adam with the
// config's weight decay at the schedule's learning rate.
static void timed_step(Bench *b, const Config *c, int s, double *tf, double *tb, double *tu) {
    const VitDims *d = &b->m.d;
    for (int k = 0; k < b->nmicro; k++) {
        const float *img = b->img + (size_t)k * b->mb * d->img * d->img * d->C;
        const float *tgt = b->tgt + (size_t)k * b->mb * d->K;
        double ta = sm_now();
        b->m.ctx = (MoeCtx){.train = 1, .seed = c->seed, .step = s, .img0 = (long)k * b->mb};
        vit_forward(&b->m, img, tgt, b->mb);  // routing noise on, as in training
        double t1 = sm_now();
        *tf += t1 - ta;
        vit_backward(&b->m, tgt, b->mb);
        *tb += sm_now() - t1;
    }
    double t2 = sm_now();
    double gnorm = clip_l2_norm(b->m.grads, b->m.pt.total) / b->nmicro;
    optim_step(&b->opt, b->m.params, b->m.grads, b->m.wh, &b->m.pt, c, sched_lr(c, s), s + 1,
               clip_factor(gnorm, c->clip) / (float)b->nmicro);
    b->m.wh_ready = b->m.wh != NULL;  // as train.c: Adam wrote the bf16 weights too
    *tu += sm_now() - t2;
}

// warm + steps training steps; the sgemm peak measured after each timed one.
static void time_steps(Bench *b, const Config *c, int warm, Times *tm) {
    const int steps = c->bench_steps;
    *tm = (Times){.best = 1e30, .peak_lo = 1e30};
    // The machine is shared: other jobs slow the model and the peak alike,
    // but not always at the same moments. So the sgemm peak is measured
    // between the model steps (one 2048^3 sgemm after each, plus one before),
    // and MFU is the best of those against the mean step.
    Peak pk;
    peak_init(&pk, 2048);
    peak_once(&pk);  // warms caches and threads
    // The gradients start at zero and Adam leaves them zero, so no step
    // needs vit_zero_grad (as in train.c).
    vit_zero_grad(&b->m);
    for (int s = 0; s < warm + steps; s++) {
        double tl = sm_now();
        if (b->ld) loader_next(b->ld, b->img, b->tgt, NULL);
        double t0 = sm_now(), f = 0, bw = 0, u = 0;
        timed_step(b, c, s, &f, &bw, &u);
        if (s >= warm) {
            tm->wait += t0 - tl;
            tm->fwd += f, tm->bwd += bw, tm->upd += u;
            tm->best = sm_now() - t0 < tm->best ? sm_now() - t0 : tm->best;
            double gf = peak_once(&pk);
            tm->peak32 = gf > tm->peak32 ? gf : tm->peak32;
            tm->peak_lo = gf < tm->peak_lo ? gf : tm->peak_lo;
        }
        if (s == warm + steps - 2) gemm_reset_calls();  // count the last step's products
    }
    for (int r = 0; r < 2; r++) {  // at least three peak samples, however few the steps
        double gf = peak_once(&pk);
        tm->peak32 = gf > tm->peak32 ? gf : tm->peak32;
        tm->peak_lo = gf < tm->peak_lo ? gf : tm->peak_lo;
    }
    peak_free(&pk);
}

// Which products the step ran in which precision; g0 before the first step.
static void print_precision(int bf16, const VitDims *d, const GemmInfo *g0, const GemmInfo *gi) {
    if (!bf16 && gi->fp32_dnnl_plans > 0)
        printf("precision: fp32 (oneDNN %s fp32 matmul, isa %s: %s; %d product shapes planned at "
               "build, %d later, %d through sgemm)\n", gi->version, gi->isa, gi->impls, g0->plans,
               gi->late_plans, gi->fp32_plans - gi->fp32_dnnl_plans);
    else if (!bf16)
        printf("precision: fp32 (sgemm%s)\n", d->n_moe ? ", few-row AVX-512 kernels for the experts" : "");
    else if (gi->have_dnnl && gi->sgemm_plans < gi->plans)
        printf("precision: bf16 (oneDNN %s, isa %s: %s; %d product shapes planned at build, %d "
               "later, %d through rounded sgemm)\n", gi->version, gi->isa, gi->impls, g0->plans,
               gi->late_plans, gi->sgemm_plans);
    else
        printf("precision: bf16 (bf16-rounded inputs through sgemm: %s; same numbers, no speed-up; "
               "%d product shapes planned at build, %d later)\n",
               gi->have_dnnl ? "oneDNN has no bf16 matmul for this CPU" : "built without oneDNN",
               g0->plans, gi->late_plans);
}

void bench_run(const Config *c) {
    const int steps = c->bench_steps, warm = 2;
    Bench b;
    bench_setup(&b, c);
    const VitDims *d = &b.m.d;
    const size_t n = b.m.pt.total;
    const int B = b.B;
    GemmInfo g0;
    gemm_info(&g0);
    Times tm;
    time_steps(&b, c, warm, &tm);
    double tf = tm.fwd, tb = tm.bwd, tu = tm.upd, tw = tm.wait, tbest = tm.best;
    double peak32 = tm.peak32, peak_lo = tm.peak_lo;
    GemmInfo gi;
    gemm_info(&gi);
    // Test hook: a peak as a busy machine would measure it, to prove the warning.
    const char *fake = getenv("SOFTMOE_BENCH_PEAK");
    if (fake) peak32 = atof(fake);
    double step = (tf + tb + tu) / steps;
    double fwd = vit_flops_per_image(d);
    // training FLOPs: forward + backward (2x forward) per image
    double gflops = 3.0 * fwd * B / step / 1e9;
    double peak16 = gemm_bf16_peak(2048, 3);
    const int bf16 = !gemm_is_fp32(b.m.precision);
    double peak = bf16 && peak16 > 0 ? peak16 : peak32;
    printf("model: D=%d L=%d H=%d M=%d patch=%d image=%d N=%d K=%d pool=%s, %.2fM params\n",
           d->D, d->L, d->H, d->M, d->patch, d->img, d->N, d->K, c->pool, (double)n / 1e6);
    if (b.nmicro > 1)
        printf("batch: %d in %d micro-steps of %d, steps timed: %d (after %d warm-up)\n", B,
               b.nmicro, b.mb, steps, warm);
    else printf("batch: %d, steps timed: %d (after %d warm-up)\n", B, steps, warm);
    printf("step: %.3f s (forward %.3f, backward %.3f, clip+adam %.3f)\n", step, tf / steps,
           tb / steps, tu / steps);
    printf("img_per_s: %.2f\n", B / step);
    printf("best_step: %.3f s (%.2f img/s, best of %d)\n", tbest, B / tbest, steps);
    if (b.ld) printf("data_wait: %.1f%% of the step (%.4f s per batch)\n",
                   100.0 * tw / steps / (step + tw / steps), tw / steps);
    printf("model_gflops_per_s: %.1f (3 x %.3f GFLOP forward per image)\n", gflops, fwd / 1e9);
    print_precision(bf16, d, &g0, &gi);
    char blas[256];
    sm_blas_describe(blas, sizeof blas);
    printf("blas: %s\n", blas);
    printf("sgemm_peak_gflops_per_s: %.1f (2048^3, best of %d measured between the steps; "
           "lowest %.1f)\n", peak32, steps + 2, peak_lo);
    if (peak16 > 0) printf("bf16_gemm_peak_gflops_per_s: %.1f (oneDNN, 2048^3, best of 3)\n", peak16);
    double mfu = 100.0 * gflops / peak;
    printf("mfu: %.1f%% (against the %s peak)\n", mfu, bf16 && peak16 > 0 ? "bf16" : "sgemm");
    // A step cannot beat the machine's peak: above 100% the peak samples
    // all met a busy machine. Said, not hidden: the number is what was measured.
    if (mfu > 100.0)
        printf("warning: mfu above 100%% means the %s peak was measured while the machine "
               "was busy (other jobs); rerun on a quieter machine or with more steps "
               "(bench.steps)\n", bf16 && peak16 > 0 ? "bf16" : "sgemm");
    printf("best_step_mfu: %.1f%% (at the best step)\n", 100.0 * 3.0 * fwd * B / tbest / 1e9 / peak);
    printf("peak_rss_mb: %.0f\n", (double)sm_peak_rss() / 1048576.0);
    if (d->n_moe) bench_blocks(d, b.mb);
    if (bf16 && getenv("SOFTMOE_BENCH_SHAPES")) bench_shapes();
    bench_free(&b);
}
