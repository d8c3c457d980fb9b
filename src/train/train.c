// The training loop (see train.h). train_run sets the run up (trainer.c),
// resumes it (ckpt_dist.c), then runs each step as train_step, log_step,
// maybe_checkpoint and maybe_evaluate, and ends with the final evaluation.
// Everything is allocated before step 0.
#include "train.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/common.h"
#include "../core/jsonl.h"
#include "../data/synthetic.h"
#include "../dist/dist.h"
#include "../eval/eval.h"
#include "../model/layers.h"
#include "trainer.h"

// The held-out split of the synthetic task lives far from the train indices.
#define SYN_VAL_OFFSET (1ULL << 40)

// SIGTERM/SIGINT (preemption): finish the step, checkpoint, exit 0.
static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { g_stop = sig; }

static void catch_signals(void) {
    g_stop = 0;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

// What the loop carries from step to step besides the Trainer.
typedef struct {
    FILE *mf;                    // metrics.jsonl (rank 0; NULL elsewhere)
    char path[CFG_PATH + 64];    // its path
    int quiet, tty;              // rank 0 speaks for the job; progress on a terminal
    long start;                  // the step the run (re)started from
    double t0, tlog, t_steps;    // start, last log, time in training steps (s)
    double wait, wait_log;       // time waiting for data: total, at the last log (s)
    double win_loss, win_aux;    // sums over the steps since the last log
    int win;                     // those steps
    DistStats st, st_log;        // communication of the training steps alone
    long stop_at, fail_at, poison_at;  // [debug] hooks as they apply to this rank
} Loop;

// What one step produced (this rank's loss and aux, means over its micro-steps).
typedef struct {
    double loss, aux, gnorm, lr;
} StepOut;

// The next training batch into t->images / t->targets.
static void next_batch(Trainer *t, const Config *c, long step) {
    const VitDims *d = &t->m.d;
    if (!t->ld) {
        // rank r takes images [r*B, (r+1)*B) of the global batch
        synthetic_batch(t->images, t->targets, NULL, t->B, d->img, d->C, d->K, c->seed,
                        (uint64_t)step * (uint64_t)c->batch_size + (uint64_t)t->rank * t->B);
        return;
    }
    int got = loader_next(t->ld, t->images, t->targets, NULL);
    SM_CHECK(got == t->B, "data: short training batch (%d of %d)", got, t->B);
}

// Data parallelism: each rank's gradient is the sum over its micro-steps of
// their mean gradients. Dense gradients are summed over all ranks, expert
// gradients over the replicas of each expert (the owner already holds the
// sum over its group's images). Every gradient is then W * nmicro times the
// global-batch mean; returns the norm of that mean, and the caller folds
// 1/(W * nmicro) into Adam's gradient scale.
static double sync_grads(Trainer *t) {
    float *g = t->m.grads;
    for (int i = 0; i < t->nseg; i++) {
        if (t->seg[i].expert) dist_allreduce_replicas(g + t->seg[i].off, t->seg[i].len);
        else dist_allreduce(g + t->seg[i].off, t->seg[i].len);
    }
    return sqrt(trainer_sumsq(t, g)) / (t->world * t->nmicro);
}

// After each micro-step's forward: t->rm gathers the routing health of the
// step as the mean over its micro-steps, t->load the experts' loads as their
// sum (both overwritten on the first).
static void add_router_metrics(Trainer *t, int micro) {
    const VitDims *d = &t->m.d;
    for (int l = 0; l < d->L; l++) {
        for (int i = 0; i < MOE_NMETRICS; i++) {
            double v = d->is_moe[l] ? t->m.a.blk[l].moe.metrics[i] / t->nmicro : 0;
            t->rm[l * MOE_NMETRICS + i] = micro ? t->rm[l * MOE_NMETRICS + i] + v : v;
        }
        for (int e = 0; d->is_moe[l] && e < d->E; e++) {
            double *s = &t->load[(size_t)l * d->E + e];
            *s = (micro ? *s : 0) + t->m.a.blk[l].moe.load[e];
        }
    }
}

// Routing health of the last step, per MoE block: rm[l*MOE_NMETRICS + i] is
// metric i of block l, averaged over the ranks and micro-steps, except
// load_min and load_max, which are the global batch's (the experts' loads
// summed over ranks and micro-steps, min and max over their mean).
static void router_metrics(Trainer *t, double *rm) {
    const VitDims *d = &t->m.d;
    for (int l = 0; l < d->L * MOE_NMETRICS; l++) rm[l] = t->rm[l] / t->world;
    dist_sum(rm, d->L * MOE_NMETRICS);
    if (!d->n_moe) return;
    if (t->world > 1) dist_sum(t->load, d->L * d->E);
    for (int l = 0; l < d->L; l++) {
        if (!d->is_moe[l]) continue;
        const double *ld = t->load + (size_t)l * d->E;
        double lo = ld[0], hi = ld[0], sum = 0;
        for (int e = 0; e < d->E; e++) lo = fmin(lo, ld[e]), hi = fmax(hi, ld[e]), sum += ld[e];
        const double mean = sum / d->E;
        for (int i = 0; i < MOE_NMETRICS && d->router->metric_names[i]; i++) {
            const char *name = d->router->metric_names[i];
            double *v = &rm[l * MOE_NMETRICS + i];
            if (!strcmp(name, "load_min")) *v = mean > 0 ? lo / mean : 0;
            if (!strcmp(name, "load_max")) *v = mean > 0 ? hi / mean : 0;
        }
    }
}

// Forward and backward of micro-batch k of the step's batch; its gradients
// accumulate into m.grads, its loss and aux into o (means over micro-steps).
static void micro_step(Trainer *t, const Config *c, long step, int k, StepOut *o) {
    const VitDims *d = &t->m.d;
    const float *img = t->images + (size_t)k * t->mb * d->img * d->img * d->C;
    const float *tgt = t->targets + (size_t)k * t->mb * d->K;
    // routing noise: a function of (seed, step, layer, global token)
    t->m.ctx = (MoeCtx){.train = 1, .seed = c->seed, .step = step,
                        .img0 = (long)t->rank * t->B + (long)k * t->mb};
    double l = vit_forward(&t->m, img, tgt, t->mb);
    t->m.ctx.train = 0;  // evaluations in between route without noise
    double a = t->m.aux_loss;
    if (!isfinite(l + a))
        sm_die("loss is %g at step %ld: training diverged (lower optim.lr or check the data)", l,
               step + 1);
    add_router_metrics(t, k);
    vit_backward(&t->m, tgt, t->mb);
    o->loss += l / t->nmicro, o->aux += a / t->nmicro;
}

// One optimisation step: next batch, forward and backward of every
// micro-batch, gradient sync, learning rate, Adam (which leaves the
// gradients zero for the next step).
static StepOut train_step(Trainer *t, const Config *c, long step, Loop *lp) {
    StepOut o = {0};
    double td = sm_now();
    next_batch(t, c, step);
    lp->wait += sm_now() - td;
    for (int k = 0; k < t->nmicro; k++) micro_step(t, c, step, k, &o);
    o.gnorm = sync_grads(t);
    if (!isfinite(o.gnorm))
        sm_die("gradient norm is %g at step %ld: training diverged", o.gnorm, step + 1);
    o.lr = sched_lr(c, step);
    // In bf16 the same pass refreshes the model's bf16 weights (Vit.wh): the
    // next forward then converts nothing.
    optim_step(&t->opt, t->m.params, t->m.grads, t->m.wh, &t->m.pt, c, o.lr, step + 1,
               clip_factor(o.gnorm, c->clip) / (float)(t->world * t->nmicro));
    t->m.wh_ready = t->m.wh != NULL;
    return o;
}

// prec@1 and mean loss over n held-out synthetic images. Under MPI batch k
// goes to rank k % W; in a round where some rank has no batch left it runs a
// zero batch of the round's size, so the all-to-alls still pair up.
static void evaluate(Trainer *t, const Config *c, int n, double *prec1, double *loss) {
    const VitDims *d = &t->m.d;
    const size_t px = (size_t)d->img * d->img * d->C;
    const int EB = t->mb;  // the batch the activations hold
    double v[3] = {0, 0, 0};  // correct, seen, loss sum
    const int nb = (n + EB - 1) / EB;
    for (int k0 = 0; k0 < nb; k0 += t->world) {
        int k = k0 + t->rank, i = k * EB;
        int got = k < nb ? (n - i < EB ? n - i : EB) : 0;
        int B = dist_max(got);
        if (got)
            synthetic_batch(t->images, t->targets, NULL, got, d->img, d->C, d->K, c->seed,
                            SYN_VAL_OFFSET + (uint64_t)i);
        memset(t->images + (size_t)got * px, 0, (size_t)(B - got) * px * sizeof(float));
        vit_forward(&t->m, t->images, NULL, B);
        if (!got) continue;
        v[0] += eval_correct(t->m.a.logits, t->targets, got, d->K);
        v[1] += got;
        v[2] += loss_forward(NULL, t->m.a.logits, t->targets, got, d->K, d->loss) * got;
        if (t->rank == 0 && isatty(2))  // a 224 px model takes minutes for 1024 images here
            fprintf(stderr, "\r\033[Kevaluating synthetic: %d of %d images", (k + 1) * EB < n ?
                    (k + 1) * EB : n, n), fflush(stderr);
    }
    if (t->rank == 0 && isatty(2)) fprintf(stderr, "\r\033[K"), fflush(stderr);
    dist_sum(v, 3);
    *prec1 = v[0] / v[1];
    *loss = v[2] / v[1];
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
static void log_eval(FILE *mf, const char *mf_name, Trainer *t, const Config *c, long step, int quiet, double *prec1,
                     double *loss) {
    long n = c->eval_synthetic;
    if (t->ld) {
        if (!eval_val(&t->m, c, prec1, loss, &n)) return;
    } else {
        evaluate(t, c, (int)n, prec1, loss);
    }
    JsonLine j;
    jsonl_begin(&j, mf, mf_name);
    jsonl_int(&j, "step", step);
    jsonl_num(&j, "val/prec@1", *prec1, 6);
    jsonl_num(&j, "val/loss", *loss, 6);
    jsonl_end(&j);
    if (!quiet)
        fprintf(stderr, "softmoe: step %ld: val prec@1 %.4f, val loss %.4f (%ld images)\n", step,
                *prec1, *loss, n);
}

// acc += now - before, field by field.
static void add_since(DistStats *acc, const DistStats *before, const DistStats *now) {
    acc->t_a2a += now->t_a2a - before->t_a2a, acc->t_ar += now->t_ar - before->t_ar;
    acc->a2a_bytes += now->a2a_bytes - before->a2a_bytes;
    acc->ar_bytes += now->ar_bytes - before->ar_bytes;
    acc->n_a2a += now->n_a2a - before->n_a2a, acc->n_ar += now->n_ar - before->n_ar;
}

// One logged step's global values, as metrics.jsonl gets them.
typedef struct {
    double loss, aux, lr, ips, gnorm, pnorm, wait;
    uint64_t skipped;
} LogLine;

static void write_metrics(const Loop *lp, const Trainer *t, long step, const LogLine *v,
                          const double *rm) {
    const VitDims *d = &t->m.d;
    JsonLine j;
    jsonl_begin(&j, lp->mf, lp->path);
    jsonl_int(&j, "step", step + 1);
    jsonl_num(&j, "loss", v->loss, 6);
    jsonl_num(&j, "lr", v->lr, 6);
    jsonl_num(&j, "img_per_s", v->ips, 4);
    jsonl_num(&j, "l2_grads", v->gnorm, 6);
    jsonl_num(&j, "l2_params", v->pnorm, 6);
    jsonl_num(&j, "data_wait", v->wait, 4);
    jsonl_int(&j, "skipped", (long long)v->skipped);
    if (d->n_moe && d->router->has_aux) jsonl_num(&j, "aux_loss", v->aux, 6);
    for (int l = 0; l < d->L; l++)
        for (int i = 0; d->is_moe[l] && i < MOE_NMETRICS && d->router->metric_names[i]; i++)
            jsonl_numf(&j, 4, rm[l * MOE_NMETRICS + i], "moe/%d/%s", l, d->router->metric_names[i]);
    if (t->world > 1) {
        jsonl_num(&j, "alltoall_s", (lp->st.t_a2a - lp->st_log.t_a2a) / lp->win, 4);
        jsonl_num(&j, "allreduce_s", (lp->st.t_ar - lp->st_log.t_ar) / lp->win, 4);
    }
    jsonl_end(&j);
}

// Adds the step to the logging window; every train.log_every steps and at the
// last, the window's means go to metrics.jsonl and the progress line.
static void log_step(Trainer *t, const Config *c, long step, const StepOut *o, Loop *lp,
                     TrainResult *res) {
    lp->win_loss += o->loss, lp->win_aux += o->aux, lp->win++;
    if (step == lp->start) {
        double l = o->loss / t->world;
        dist_sum(&l, 1);
        res->first_loss = l;
    }
    if ((step + 1) % c->log_every != 0 && step + 1 != c->steps) return;
    double now = sm_now(), dt = now - lp->tlog;
    LogLine v = {.lr = o->lr, .gnorm = o->gnorm, .ips = lp->win * (double)c->batch_size / dt,
                 .wait = (lp->wait - lp->wait_log) / dt};
    v.loss = lp->win_loss / lp->win / t->world, v.aux = lp->win_aux / lp->win / t->world;
    dist_sum(&v.loss, 1);
    dist_sum(&v.aux, 1);
    double rm[VIT_MAX_DEPTH * MOE_NMETRICS];
    router_metrics(t, rm);
    double eta = (now - lp->t0) / (step + 1 - lp->start) * (c->steps - step - 1);
    v.pnorm = sqrt(trainer_sumsq(t, t->m.params));
    if (!isfinite(v.pnorm))
        sm_die("the parameter norm is %g at step %ld: training diverged (lower optim.lr)", v.pnorm,
               step + 1);
    v.skipped = trainer_skipped(t);
    write_metrics(lp, t, step, &v, rm);
    if (!lp->quiet) progress(step + 1, c->steps, v.loss, v.lr, v.ips, v.wait, eta, lp->tty);
    res->last_loss = v.loss;
    res->img_per_s = v.ips;
    lp->tlog = now, lp->wait_log = lp->wait, lp->win_loss = 0, lp->win_aux = 0, lp->win = 0;
    lp->st_log = lp->st;
}

// Checkpoints every train.ckpt_every steps, at the last step and on a
// signal; returns the signal when one stops the run (0: go on).
static int maybe_checkpoint(Trainer *t, const Config *c, long step, const Loop *lp) {
    const int due = (c->ckpt_every > 0 && (step + 1) % c->ckpt_every == 0) || step + 1 == c->steps;
    // A signal may reach the ranks at different steps: they agree once,
    // here, and act on that decision only (a signal arriving later, even
    // during the save below, is agreed on after the next step).
    const int stop = t->world > 1 ? dist_max(g_stop) : g_stop;
    if (due || stop) ckpt_dist_save(t, c, step + 1);
    if (stop && !lp->quiet)
        fprintf(stderr, "%ssoftmoe: signal %d: checkpoint at step %ld written to %s; re-run the "
                "same command to resume\n", lp->tty ? "\n" : "", stop, step + 1, c->workdir);
    return stop;
}

// Validation every eval.every steps, few-shot every fewshot.every (the
// last step's evaluations follow the loop).
static void maybe_evaluate(Trainer *t, const Config *c, long step, Loop *lp) {
    if (step + 1 == c->steps) return;
    if (c->eval_every > 0 && (step + 1) % c->eval_every == 0) {
        double p1, vl;
        if (lp->tty) fputc('\n', stderr);
        log_eval(lp->mf, lp->path, t, c, step + 1, lp->quiet, &p1, &vl);
    }
    if (c->fewshot_every > 0 && (step + 1) % c->fewshot_every == 0) {
        if (lp->tty) fputc('\n', stderr);
        eval_fewshot(&t->m, c, step + 1, lp->mf, lp->path, lp->quiet);
    }
}

// Under MPI: the batch, experts and parameters this rank holds.
static void report_layout(const Trainer *t) {
    const ParamTable *pt = &t->m.pt;
    size_t held = 0, whole = 0;
    for (int i = 0; i < pt->n; i++) held += pt->t[i].numel, whole += ptable_global_numel(&pt->t[i]);
    const VitDims *d = &t->m.d;
    fprintf(stderr, "softmoe: rank %d of %d: batch %d, experts %d of %d per Soft MoE block "
            "(group rank %d of %d), %zu of %zu parameters held\n", t->rank, t->world, t->B,
            d->El, d->E, dist_ep_rank(), dist_ep(), held, whole);
}

// Before step 0: the workdir locked, the run resumed (or started), its
// resolved config written, metrics.jsonl opened, the start-up line, the hooks.
static void loop_begin(Loop *lp, Trainer *t, const Config *c, int quiet_arg) {
    memset(lp, 0, sizeof *lp);
    lp->quiet = quiet_arg || t->rank != 0;
    lp->tty = isatty(2) && !lp->quiet;
    if (t->world > 1 && !quiet_arg) report_layout(t);
    trainer_lock_workdir(t, c);
    dist_barrier();  // no rank reads the workdir before rank 0 holds it
    lp->start = ckpt_dist_restore(t, c, lp->quiet);
    sm_mkdirs(c->workdir);
    snprintf(lp->path, sizeof lp->path, "%s/config.ini", c->workdir);
    if (t->rank == 0 && config_write(c, lp->path) != 0)
        sm_die("cannot write the resolved config to '%s'", lp->path);
    snprintf(lp->path, sizeof lp->path, "%s/metrics.jsonl", c->workdir);
    lp->mf = t->rank == 0 ? sm_fopen(lp->path, lp->start ? "a" : "w") : NULL;
    lp->t0 = lp->tlog = sm_now();
    char mem[256];
    mem_format(&t->mem, mem, sizeof mem);
    if (!lp->quiet)
        fprintf(stderr, "softmoe: training %s for %ld steps, batch %d (%d per rank, micro-batch %d), "
                "%.2fM params, %s; memory %s\n", c->workdir, c->steps, c->batch_size, t->B, t->mb,
                (double)ptable_global_total(&t->m.pt) / 1e6, c->source, mem);
    // [debug] hooks: a signal (on one rank only with debug.stop_rank, as
    // when a scheduler signals the processes of one node), a fatal error,
    // a NaN in Adam's v as an overflowing gradient square would leave.
    lp->stop_at = c->debug_stop_rank < 0 || c->debug_stop_rank == t->rank ? c->debug_stop_at_step : 0;
    lp->fail_at = c->debug_fail_rank < 0 || c->debug_fail_rank == t->rank ? c->debug_fail_at_step : 0;
    lp->poison_at = c->debug_poison_at_step;
}

// After the last step (or a signal): the final evaluation, the totals.
static void loop_end(Loop *lp, Trainer *t, const Config *c, TrainResult *res) {
    if (lp->tty && !res->preempted) fputc('\n', stderr);
    if (!res->preempted) {
        if (!lp->quiet && !t->ld)
            fprintf(stderr, "softmoe: final evaluation on %d held-out synthetic images "
                    "(eval.synthetic_images)\n", c->eval_synthetic);
        log_eval(lp->mf, lp->path, t, c, res->steps_done, 1, &res->val_prec1, &res->val_loss);
        eval_fewshot(&t->m, c, res->steps_done, lp->mf, lp->path, lp->quiet);
    }
    if (lp->mf) {
        if (ferror(lp->mf)) sm_die("writing metrics to '%s' failed", lp->path);
        sm_fclose(lp->mf, lp->path);
    }
    const long ran = res->steps_done - lp->start;
    const DistStats *st = &lp->st;
    if (!lp->quiet && t->world > 1 && ran > 0)
        fprintf(stderr, "softmoe: rank 0 per training step: %.2f ms in %.0f all-to-alls (%.4f MB "
                "sent to other ranks), %.2f ms in %.0f allreduces (%.4f MB payload), step %.2f ms\n",
                1e3 * st->t_a2a / ran, (double)st->n_a2a / ran, st->a2a_bytes / 1e6 / ran,
                1e3 * st->t_ar / ran, (double)st->n_ar / ran, st->ar_bytes / 1e6 / ran,
                1e3 * lp->t_steps / ran);
    if (!lp->quiet && !res->preempted)
        fprintf(stderr, "softmoe: done, %ld steps in %.1fs; val prec@1 %.4f, val loss %.4f\n",
                res->steps_done, sm_now() - lp->t0, res->val_prec1, res->val_loss);
}

void train_run(const Config *c, int quiet_arg, TrainResult *res) {
    memset(res, 0, sizeof *res);
    catch_signals();  // from here on a signal means: checkpoint after the next step, exit 0
    Trainer t;
    trainer_setup(&t, c, quiet_arg);  // every input checked before the workdir is touched
    Loop lp;
    loop_begin(&lp, &t, c, quiet_arg);
    res->steps_done = lp.start;
    DistStats *ds = dist_stats();
    vit_zero_grad(&t.m);  // once: Adam leaves the gradients zero for the next step
    for (long step = lp.start; step < c->steps; step++) {
        if (step + 1 == lp.stop_at) g_stop = SIGTERM;
        if (step + 1 == lp.fail_at) sm_die("test hook debug.fail_at_step=%ld", lp.fail_at);
        DistStats before = *ds;
        double td = sm_now();
        StepOut o = train_step(&t, c, step, &lp);
        if (step + 1 == lp.poison_at) t.opt.v[t.m.pt.t[0].offset] = NAN;
        add_since(&lp.st, &before, ds);
        lp.t_steps += sm_now() - td;
        log_step(&t, c, step, &o, &lp, res);
        res->steps_done = step + 1;
        if ((res->preempted = maybe_checkpoint(&t, c, step, &lp) != 0)) break;
        maybe_evaluate(&t, c, step, &lp);
    }
    loop_end(&lp, &t, c, res);
    trainer_free(&t);
}
