// The training loop (see train.h). Everything is allocated before step 0.
#include "train.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/common.h"
#include "../data/loader.h"
#include "../data/synthetic.h"
#include "../model/layers.h"
#include "../model/vit.h"
#include "../optim/optim.h"
#include "../eval/eval.h"
#include "ckpt.h"

// The held-out split of the synthetic task lives far from the train indices.
#define SYN_VAL_OFFSET (1ULL << 40)

typedef struct {
    Vit m;
    float *opt_m, *opt_v, *wd;
    float *images, *targets;
    int B;
    Loader *ld;                  // NULL for data.source = synthetic
    uint64_t skipped_base;       // samples skipped before a resume
} Trainer;

// SIGTERM/SIGINT (preemption): finish the step, checkpoint, exit 0.
static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { g_stop = sig; }

static uint64_t skipped(const Trainer *t) {
    return t->skipped_base + (t->ld ? loader_skipped(t->ld) : 0);
}

static void save(Trainer *t, const Config *c, long step) {
    char cfg[1 << 16], err[1024];
    config_to_ini(c, cfg, sizeof cfg);
    CkptOut o = {.step = step, .world_size = 1, .config = cfg, .pt = &t->m.pt,
                 .params = t->m.params, .m = t->opt_m, .v = t->opt_v,
                 .pos = t->ld ? loader_pos(t->ld) : (LoaderPos){0, 0}, .skipped = skipped(t)};
    if (ckpt_save(c->workdir, &o, err, sizeof err) != 0) sm_die("%s", err);
    ckpt_prune(c->workdir, c->keep_ckpts, c->keep_every);
}

// One tensor of train.init whose shape differs: a classifier head for other
// classes is left at its fresh init (fine-tuning on a new label set); a
// learned position embedding from another resolution is resized on its 2-D
// grid (a cls position, if any, is kept as it is). Anything else is an error.
static void adapt_tensor(Trainer *t, const ParamSpec *s, const float *src, int nd,
                         const long *dims, const char *path, int quiet) {
    const VitDims *d = &t->m.d;
    float *dst = t->m.params + s->offset;
    if (!strncmp(s->name, "head/", 5)) {
        if (!quiet)
            fprintf(stderr, "softmoe: train.init: %s has %ld classes, the config %d: head "
                    "re-initialised\n", s->name, dims[nd - 1], d->K);
        return;
    }
    int cls = d->pool == POOL_TOK;
    long Go2 = nd == 3 ? dims[1] - cls : -1;
    int Go = (int)lround(sqrt((double)(Go2 > 0 ? Go2 : 0)));
    if (!strcmp(s->name, "Encoder/posembed_input/pos_embedding") && nd == 3 &&
        dims[2] == d->D && (long)Go * Go == Go2) {
        if (cls) memcpy(dst, src, (size_t)d->D * sizeof(float));
        posemb_resize(dst + (size_t)cls * d->D, d->G, src + (size_t)cls * d->D, Go, d->D);
        if (!quiet)
            fprintf(stderr, "softmoe: train.init: position embedding resized from %dx%d to %dx%d\n",
                    Go, Go, d->G, d->G);
        return;
    }
    char want[64];
    ptable_shape_str(s, want, sizeof want);
    sm_die("train.init: checkpoint '%s': dataset /params/%s does not fit the config's shape %s",
           path, s->name, want);
}

// train.init: parameters from another checkpoint (no optimiser state, step 0).
static void init_params(Trainer *t, const char *path, int quiet) {
    char name[PARAM_NAME + 16], err[1024];
    for (int i = 0; i < t->m.pt.n; i++) {
        const ParamSpec *s = &t->m.pt.t[i];
        snprintf(name, sizeof name, "/params/%s", s->name);
        float *src;
        int nd;
        long dims[8];
        if (ckpt_read_any(path, name, &src, &nd, dims, err, sizeof err) != 0)
            sm_die("%s (train.init)", err);
        int same = nd == s->ndim;
        for (int k = 0; same && k < nd; k++) same = dims[k] == s->shape[k];
        if (same) memcpy(t->m.params + s->offset, src, s->numel * sizeof(float));
        else adapt_tensor(t, s, src, nd, dims, path, quiet);
        free(src);
    }
    if (!quiet) fprintf(stderr, "softmoe: initialised from %s\n", path);
}

// Resumes from the newest checkpoint in the workdir that loads (train.resume
// = latest: the newest or an error; latest_valid: fall back to older ones),
// else starts from train.init's parameters if given. Returns the step to
// continue from (0 for a fresh start).
static long restore(Trainer *t, const Config *c, int quiet) {
    char **paths, err[1024];
    long *steps;
    int n = strcmp(c->resume, "none") ? ckpt_list(c->workdir, &paths, &steps) : 0;
    for (int i = 0; i < n; i++) {
        CkptInfo info;
        if (ckpt_load(paths[i], &t->m.pt, t->m.params, t->opt_m, t->opt_v, &info, err,
                      sizeof err) == 0) {
            if (!quiet) fprintf(stderr, "softmoe: resuming from %s (step %ld)\n", paths[i], info.step);
            if (t->ld) loader_seek(t->ld, info.pos);
            t->skipped_base = info.skipped;
            long step = info.step;
            ckpt_info_free(&info);
            ckpt_list_free(paths, steps, n);
            return step;
        }
        if (strcmp(c->resume, "latest_valid"))
            sm_die("%s\n  (nothing was changed; set train.resume=latest_valid to fall back to an "
                   "older checkpoint, or train.resume=none to start over)", err);
        fprintf(stderr, "softmoe: warning: skipping unusable checkpoint: %s\n", err);
    }
    if (n) ckpt_list_free(paths, steps, n);
    if (c->init[0]) init_params(t, c->init, quiet);
    return 0;
}

// The next training batch into t->images / t->targets.
static void next_batch(Trainer *t, const Config *c, long step) {
    const VitDims *d = &t->m.d;
    if (!t->ld) {
        synthetic_batch(t->images, t->targets, NULL, t->B, d->S, d->C, d->K, c->seed,
                        (uint64_t)step * (uint64_t)t->B);
        return;
    }
    int got = loader_next(t->ld, t->images, t->targets, NULL);
    SM_CHECK(got == t->B, "data: short training batch (%d of %d)", got, t->B);
}

static void trainer_setup(Trainer *t, const Config *c) {
    memset(t, 0, sizeof *t);
    t->B = c->batch_size;
    vit_build(&t->m, c);
    vit_alloc(&t->m, t->B);
    vit_init(&t->m, c->seed);
    size_t n = t->m.pt.total;
    t->opt_m = sm_aligned(n * sizeof(float));
    t->opt_v = sm_aligned(n * sizeof(float));
    memset(t->opt_m, 0, n * sizeof(float));
    memset(t->opt_v, 0, n * sizeof(float));
    WdRule rules[WD_MAX_RULES];
    char err[512];
    int nr = wd_parse(c->wd, rules, WD_MAX_RULES, err, sizeof err);
    if (nr < 0) sm_die("%s", err);
    t->wd = sm_malloc((size_t)t->m.pt.n * sizeof(float));
    wd_per_tensor(rules, nr, &t->m.pt, t->wd);
    const VitDims *d = &t->m.d;
    t->images = sm_aligned((size_t)t->B * d->S * d->S * d->C * sizeof(float));
    t->targets = sm_aligned((size_t)t->B * d->K * sizeof(float));
}

static void trainer_free(Trainer *t) {
    vit_free(&t->m);
    free(t->opt_m); free(t->opt_v); free(t->wd);
    free(t->images); free(t->targets);
    loader_close(t->ld);
}

static void score(Trainer *t, int B, long *correct, double *lsum) {
    *lsum += vit_forward(&t->m, t->images, t->targets, B) * B;
    *correct += eval_correct(t->m.a.logits, t->targets, B, t->m.d.K);
}

// prec@1 and mean loss over n held-out synthetic images.
static void evaluate(Trainer *t, const Config *c, int n, double *prec1, double *loss) {
    const VitDims *d = &t->m.d;
    long correct = 0, seen = 0;
    double lsum = 0;
    for (int i = 0; i < n; i += t->B) {
        int B = n - i < t->B ? n - i : t->B;
        synthetic_batch(t->images, t->targets, NULL, B, d->S, d->C, d->K, c->seed,
                        SYN_VAL_OFFSET + (uint64_t)i);
        score(t, B, &correct, &lsum);
        seen += B;
    }
    *prec1 = (double)correct / (double)seen;
    *loss = lsum / (double)seen;
}

static void progress(long step, long steps, double loss, double lr, double ips, double wait,
                     double eta, int tty) {
    char e[32];
    sm_fmt_duration(eta, e, sizeof e);
    fprintf(stderr, "%sstep %ld/%ld | loss %.4f | lr %.2e | %.1f img/s | data %.1f%% | ETA %s%s",
            tty ? "\r\033[K" : "", step, steps, loss, lr, ips, 100.0 * wait, e, tty ? "" : "\n");
    fflush(stderr);
}

// Writes one evaluation line to metrics.jsonl (and stderr).
static void log_eval(FILE *mf, Trainer *t, const Config *c, long step, int quiet, double *prec1,
                     double *loss) {
    if (t->ld) {
        if (!eval_val(&t->m, c, prec1, loss)) return;
    } else {
        evaluate(t, c, 1024, prec1, loss);
    }
    fprintf(mf, "{\"step\": %ld, \"val/prec@1\": %.6g, \"val/loss\": %.6g}\n", step, *prec1,
            *loss);
    fflush(mf);
    if (!quiet)
        fprintf(stderr, "softmoe: step %ld: val prec@1 %.4f, val loss %.4f\n", step, *prec1, *loss);
}

void train_run(const Config *c, int quiet, TrainResult *res) {
    memset(res, 0, sizeof *res);
    // From here on a SIGTERM/SIGINT means: checkpoint after the next step, exit 0.
    g_stop = 0;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    // Everything that can fail on bad input (model, data sources) comes
    // before the workdir is touched.
    Trainer t;
    trainer_setup(&t, c);
    if (strcmp(c->source, "synthetic")) {
        LoaderSpec sp = loader_spec_config(c, 1);
        sp.quiet = quiet;
        char err[1024];
        t.ld = loader_open(&sp, err, sizeof err);
        if (!t.ld) sm_die("%s (data.train)", err);
    }
    long start = restore(&t, c, quiet);
    sm_mkdirs(c->workdir);
    char path[CFG_PATH + 64];
    snprintf(path, sizeof path, "%s/config.ini", c->workdir);
    if (config_write(c, path) != 0) sm_die("cannot write the resolved config to '%s'", path);
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->workdir);
    FILE *mf = sm_fopen(path, start ? "a" : "w");

    const size_t n = t.m.pt.total;
    const int tty = isatty(2) && !quiet;
    double t0 = sm_now(), tlog = t0, wait = 0, wait_log = 0, win_loss = 0;
    int win = 0;
    if (!quiet)
        fprintf(stderr, "softmoe: training %s for %ld steps, batch %d, %.2fM params, %s\n",
                c->workdir, c->steps, t.B, (double)n / 1e6, c->source);
    res->steps_done = start;
    // Test hook: behave as if SIGTERM arrived during this step.
    const char *stop_env = getenv("SOFTMOE_STOP_AT_STEP");
    long stop_at = stop_env ? atol(stop_env) : 0;
    // Zero once: adam_update_zero leaves the gradients zero for the next step.
    vit_zero_grad(&t.m);
    for (long step = start; step < c->steps; step++) {
        if (step + 1 == stop_at) g_stop = SIGTERM;
        double td = sm_now();
        next_batch(&t, c, step);
        wait += sm_now() - td;
        double loss = vit_forward(&t.m, t.images, t.targets, t.B);
        if (!isfinite(loss))
            sm_die("loss is %g at step %ld: training diverged (lower optim.lr or check the data)",
                   loss, step + 1);
        vit_backward(&t.m, t.images, t.targets, t.B);
        double gnorm = l2_norm(t.m.grads, n);
        if (!isfinite(gnorm))
            sm_die("gradient norm is %g at step %ld: training diverged", gnorm, step + 1);
        double lr = sched_lr(c, step);
        adam_update_zero(t.m.params, t.m.grads, t.opt_m, t.opt_v, &t.m.pt, t.wd, lr, c->b1,
                         c->b2, c->eps, step + 1, clip_factor(gnorm, c->clip));
        win_loss += loss, win++;
        if (step == start) res->first_loss = loss;
        int last = step + 1 == c->steps;
        if ((step + 1) % c->log_every == 0 || last) {
            double now = sm_now(), dt = now - tlog;
            double ips = win * t.B / dt, wfrac = (wait - wait_log) / dt;
            double mean = win_loss / win;
            double eta = (now - t0) / (step + 1 - start) * (c->steps - step - 1);
            double pnorm = l2_norm(t.m.params, n);
            fprintf(mf,
                    "{\"step\": %ld, \"loss\": %.6g, \"lr\": %.6g, \"img_per_s\": %.4g, "
                    "\"l2_grads\": %.6g, \"l2_params\": %.6g, \"data_wait\": %.4g, "
                    "\"skipped\": %llu}\n",
                    step + 1, mean, lr, ips, gnorm, pnorm, wfrac,
                    (unsigned long long)skipped(&t));
            fflush(mf);
            if (!quiet) progress(step + 1, c->steps, mean, lr, ips, wfrac, eta, tty);
            res->last_loss = mean;
            res->img_per_s = ips;
            tlog = now, wait_log = wait, win_loss = 0, win = 0;
        }
        res->steps_done = step + 1;
        if ((c->ckpt_every > 0 && (step + 1) % c->ckpt_every == 0) || last) save(&t, c, step + 1);
        if (g_stop) {
            if (!((c->ckpt_every > 0 && (step + 1) % c->ckpt_every == 0) || last))
                save(&t, c, step + 1);
            fprintf(stderr, "%ssoftmoe: signal %d: checkpoint at step %ld written to %s; re-run "
                    "the same command to resume\n", tty ? "\n" : "", (int)g_stop, step + 1,
                    c->workdir);
            res->preempted = 1;
            break;
        }
        if (c->eval_every > 0 && (step + 1) % c->eval_every == 0 && !last) {
            double p1, vl;
            if (tty) fputc('\n', stderr);
            log_eval(mf, &t, c, step + 1, quiet, &p1, &vl);
        }
        if (c->fewshot_every > 0 && (step + 1) % c->fewshot_every == 0 && !last) {
            if (tty) fputc('\n', stderr);
            eval_fewshot(&t.m, c, step + 1, mf, quiet);
        }
    }
    if (tty && !res->preempted) fputc('\n', stderr);
    if (!res->preempted) {
        log_eval(mf, &t, c, res->steps_done, 1, &res->val_prec1, &res->val_loss);
        eval_fewshot(&t.m, c, res->steps_done, mf, quiet);
    }
    if (ferror(mf)) sm_die("writing metrics to '%s' failed", path);
    sm_fclose(mf, path);
    if (!quiet && !res->preempted)
        fprintf(stderr, "softmoe: done, %ld steps in %.1fs; val prec@1 %.4f, val loss %.4f\n",
                res->steps_done, sm_now() - t0, res->val_prec1, res->val_loss);
    trainer_free(&t);
}
