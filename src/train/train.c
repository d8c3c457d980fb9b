// The training loop (see train.h). Everything is allocated before step 0.
#include "train.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "../core/common.h"
#include "../data/loader.h"
#include "../data/synthetic.h"
#include "../dist/dist.h"
#include "../model/layers.h"
#include "../model/vit.h"
#include "../optim/optim.h"
#include "../eval/eval.h"
#include "cfgdiff.h"
#include "ckpt.h"
#include "memory.h"
#include "npz.h"

// The held-out split of the synthetic task lives far from the train indices.
#define SYN_VAL_OFFSET (1ULL << 40)

// A run of consecutive tensors of one kind in the parameter block.
typedef struct {
    size_t off, len;
    int expert;                  // stacked expert tensors (split over ranks)
} Seg;

typedef struct {
    Vit m;
    float *opt_m, *opt_v, *wd;
    float *images, *targets;
    int B;                       // images per step on this rank (global batch / W)
    int mb, nmicro;              // images per forward/backward (train.microbatch), B / mb
    double *rm;                  // (L, MOE_NMETRICS) router metrics, mean over micro-steps
    int rank, world;
    Seg *seg;                    // dense and expert runs of the block
    int nseg;
    Loader *ld;                  // NULL for data.source = synthetic
    uint64_t skipped_base;       // samples skipped before a resume (rank 0)
    MemEstimate mem;             // memory per rank, estimated before allocating
    int lock_fd;                 // WORKDIR/.lock, held by rank 0 (-1 elsewhere)
} Trainer;

// SIGTERM/SIGINT (preemption): finish the step, checkpoint, exit 0.
static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { g_stop = sig; }

// Samples skipped so far by all ranks (collective).
static uint64_t skipped(const Trainer *t) {
    double k = (double)(t->skipped_base + (t->ld ? loader_skipped(t->ld) : 0));
    dist_sum(&k, 1);
    return (uint64_t)k;
}

// Splits the parameter block into runs of dense and of expert tensors (the
// 16-float padding between tensors is zero in every block and rides along).
static void make_segments(Trainer *t) {
    const ParamTable *pt = &t->m.pt;
    t->seg = sm_malloc((size_t)(pt->n + 1) * sizeof(Seg));
    t->nseg = 0;
    for (int i = 0; i < pt->n; i++) {
        const ParamSpec *s = &pt->t[i];
        int ex = ptable_is_expert(s);
        Seg *last = t->nseg ? &t->seg[t->nseg - 1] : NULL;
        if (last && last->expert == ex) last->len = s->offset + s->numel - last->off;
        else t->seg[t->nseg++] = (Seg){s->offset, s->numel, ex};
    }
}

// Sums of squares of a block's dense and expert parts over the whole model:
// dense tensors are the same on every rank, each expert is counted once (by
// the ranks of one expert group). Collective.
static double global_sumsq(const Trainer *t, const float *block) {
    double sq[2] = {0, 0};
    for (int i = 0; i < t->nseg; i++)
        sq[t->seg[i].expert] += l2_sumsq(block + t->seg[i].off, t->seg[i].len);
    dist_sum_ep(&sq[1], 1);
    return sq[0] + sq[1];
}

// Data parallelism: each rank's gradient is the mean over its B images.
// Dense gradients are summed over all ranks, expert gradients over the
// replicas of each expert (the owner already holds the sum over its group's
// images). Every gradient is then W times the global-batch mean; returns the
// norm of that mean, and the caller folds 1/W into Adam's gradient scale.
static double sync_grads(Trainer *t) {
    float *g = t->m.grads;
    for (int i = 0; i < t->nseg; i++) {
        if (t->seg[i].expert) dist_allreduce_replicas(g + t->seg[i].off, t->seg[i].len);
        else dist_allreduce(g + t->seg[i].off, t->seg[i].len);
    }
    return sqrt(global_sumsq(t, g)) / (t->world * t->nmicro);
}

// Writes the checkpoint of `step` together with all ranks: rank 0 creates the
// file, then each rank of the first expert group in turn adds its expert
// slices, then rank 0 renames it into place. A failure on any rank aborts the
// job before the rename, so the previous checkpoint stays the newest.
static void save(Trainer *t, const Config *c, long step) {
    char cfg[1 << 16], err[1024], final[CFG_PATH + 64], tmp[CFG_PATH + 64];
    config_to_ini(c, cfg, sizeof cfg);
    LoaderPos mine = t->ld ? loader_pos(t->ld) : (LoaderPos){0, 0};
    uint64_t me[2] = {mine.epoch, mine.taken};
    LoaderPos *all = t->rank == 0 ? sm_malloc((size_t)t->world * sizeof(LoaderPos)) : NULL;
    uint64_t *flat = t->rank == 0 ? sm_malloc((size_t)t->world * 2 * sizeof(uint64_t)) : NULL;
    dist_gather_u64(me, 2, flat);
    for (int r = 0; all && r < t->world; r++) all[r] = (LoaderPos){flat[2 * r], flat[2 * r + 1]};
    free(flat);
    CkptOut o = {.step = step, .world_size = t->world, .config = cfg, .pt = &t->m.pt,
                 .params = t->m.params, .m = t->opt_m, .v = t->opt_v, .pos = mine,
                 .pos_all = all, .skipped = skipped(t), .finite_checked = 1};
    ckpt_paths(c->workdir, step, final, tmp, sizeof final);
    // No checkpoint holds a NaN or Inf: every rank checks what it holds
    // before anything is written, and the run stops naming the tensor.
    char bad[PARAM_NAME + 16];
    int me_bad = ckpt_first_nonfinite(&t->m.pt, t->m.params, t->opt_m, t->opt_v, bad, sizeof bad);
    if (dist_max(me_bad)) {
        if (me_bad)
            sm_die("step %ld: %s holds a non-finite value (NaN or Inf): no checkpoint written "
                   "(the previous one stays the newest); training diverged, lower optim.lr or "
                   "check the data", step, bad);
        dist_barrier();  // the rank that found it aborts the job
        sm_die("step %ld: another rank holds a non-finite value: no checkpoint written", step);
    }
    int writes_experts = t->rank < dist_ep() && t->m.d.n_moe > 0;
    if (t->rank == 0) {
        if (ckpt_write_new(tmp, &o, err, sizeof err) != 0) unlink(tmp), sm_die("%s", err);
    } else {
        dist_recv_int(t->rank - 1);
        if (writes_experts && ckpt_write_experts(tmp, &o, err, sizeof err) != 0)
            unlink(tmp), sm_die("%s", err);
    }
    if (t->world > 1) {
        dist_send_int((t->rank + 1) % t->world, 0);
        if (t->rank == 0) dist_recv_int(t->world - 1);
    }
    if (t->rank == 0) {
        if (ckpt_commit(c->workdir, tmp, final, step == c->debug_crash_before_rename, err,
                        sizeof err) != 0)
            sm_die("%s", err);
        ckpt_prune(c->workdir, c->keep_ckpts, c->keep_every);
    }
    dist_barrier();
    free(all);
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
    long Go2 = src && nd == 3 ? dims[1] - cls : -1;
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
    char want[64], got[128] = "(";
    ptable_shape_str(s, want, sizeof want);
    for (int k = 0; k < nd && k < 8; k++)
        snprintf(got + strlen(got), sizeof got - strlen(got), k ? ",%ld" : "%ld", dims[k]);
    strcat(got, ")");
    sm_die("train.init: checkpoint '%s': dataset /params/%s has shape %s, which does not fit the "
           "config's shape %s", path, s->name, got, want);
}

// train.init = FILE.npz (big_vision / vision_transformer / vmoe names): the
// arrays through the same adaptation as an .h5 (npz.c).
typedef struct { Trainer *t; int quiet; } NpzCtx;
static void npz_adapt(void *ctx, const ParamSpec *s, const float *src, int nd, const long *dims,
                      const char *path) {
    NpzCtx *x = ctx;
    adapt_tensor(x->t, s, src, nd, dims, path, x->quiet);
}

// train.init: parameters from another checkpoint (no optimiser state, step 0).
static void init_params(Trainer *t, const char *path, int quiet) {
    char name[PARAM_NAME + 16], err[1024];
    size_t len = strlen(path);
    if (len > 4 && !strcmp(path + len - 4, ".npz")) {
        NpzCtx x = {t, quiet};
        if (npz_load_params(path, &t->m.pt, t->m.params, t->m.d.pool == POOL_TOK, npz_adapt, &x,
                            err, sizeof err) != 0)
            sm_die("%s", err);
        if (!quiet) fprintf(stderr, "softmoe: initialised from %s\n", path);
        return;
    }
    for (int i = 0; i < t->m.pt.n; i++) {
        const ParamSpec *s = &t->m.pt.t[i];
        int nd;
        long dims[8];
        // same shape: read in place (a stacked expert tensor: this rank's experts only)
        int rc = ckpt_read_param(path, s, t->m.params + s->offset, &nd, dims, err, sizeof err);
        if (rc < 0) sm_die("%s (train.init)", err);
        if (rc == 0) continue;
        // Only the head and a learned position embedding may differ; their
        // declared size is bounded before anything is read for them.
        if (strncmp(s->name, "head/", 5) && strcmp(s->name, "Encoder/posembed_input/pos_embedding"))
            adapt_tensor(t, s, NULL, nd, dims, path, quiet);
        float *src;
        snprintf(name, sizeof name, "/params/%s", s->name);
        if (ckpt_read_any(path, name, (size_t)1 << 28, &src, &nd, dims, err, sizeof err) != 0)
            sm_die("%s (train.init)", err);
        adapt_tensor(t, s, src, nd, dims, path, quiet);
        free(src);
    }
    if (!quiet) fprintf(stderr, "softmoe: initialised from %s\n", path);
}

// Step-0 state: parameters from the seed, Adam moments zero.
static void fresh_state(Trainer *t, const Config *c) {
    vit_init(&t->m, c->seed);
    memset(t->opt_m, 0, t->m.pt.total * sizeof(float));
    memset(t->opt_v, 0, t->m.pt.total * sizeof(float));
}

// The checkpoint's recipe against the run's: trajectory changes stop the
// run (unless train.allow_config_change), others are reported.
static void check_config_change(const Config *c, const CkptInfo *info, const char *path,
                                int quiet) {
    char now[1 << 16], report[4096];
    config_to_ini(c, now, sizeof now);
    int changed = cfgdiff(info->config, now, report, sizeof report);
    if (!report[0]) return;
    if (changed && !c->allow_config_change)
        sm_die("checkpoint '%s' was trained with another recipe than this run's config:%s\n  "
               "(to resume anyway with the new values, set train.allow_config_change=true; to "
               "start over, use another train.workdir or train.resume=none)", path, report);
    if (!quiet)
        fprintf(stderr, "softmoe: note: resuming %s with changed keys:%s\n", path, report);
}

// Resumes from the newest checkpoint in the workdir that loads (train.resume
// = latest: the newest or an error; latest_valid: fall back to older ones),
// else starts from train.init's parameters if given. Returns the step to
// continue from (0 for a fresh start).
static long restore(Trainer *t, const Config *c, int quiet) {
    char **paths = NULL, err[1024];
    long *steps = NULL;
    // Rank 0 lists the workdir and every rank tries the same files in the
    // same order (a shared filesystem may show the ranks different listings).
    int n = t->rank == 0 && strcmp(c->resume, "none") ? ckpt_list(c->workdir, &paths, &steps) : 0;
    if (t->world > 1) {
        dist_bcast(&n, sizeof n);
        if (t->rank != 0 && n > 0) {
            paths = sm_calloc((size_t)n, sizeof *paths);
            steps = sm_calloc((size_t)n, sizeof *steps);
        }
        for (int i = 0; i < n; i++) {
            char buf[CFG_PATH + 64] = "";
            if (t->rank == 0) snprintf(buf, sizeof buf, "%s", paths[i]);
            dist_bcast(buf, sizeof buf);
            if (t->rank != 0) paths[i] = strdup(buf);
            dist_bcast(&steps[i], sizeof steps[i]);
        }
    }
    for (int i = 0; i < n; i++) {
        CkptInfo info;
        int rc = ckpt_load(paths[i], &t->m.pt, t->m.params, t->opt_m, t->opt_v, &info, err,
                           sizeof err);
        // Every rank reads its own experts: all must succeed, or all move on
        // together (a rank resuming elsewhere would silently train on).
        if (dist_max(rc != 0) && rc == 0) {
            ckpt_info_free(&info);
            snprintf(err, sizeof err, "checkpoint '%s' could not be read on another rank (see its "
                     "message)", paths[i]);
            rc = -1;
        }
        // The step inside must be the one in the name (ckpt_list parsed it),
        // and the recipe the run's (cfgdiff.h): else it is not this run's.
        if (rc == 0 && info.step != steps[i]) {
            snprintf(err, sizeof err, "checkpoint '%s' holds step %ld, not the step %ld of its name",
                     paths[i], info.step, steps[i]);
            ckpt_info_free(&info);
            rc = -1;
        }
        if (rc == 0) check_config_change(c, &info, paths[i], quiet);
        if (rc == 0) {
            if (!quiet) fprintf(stderr, "softmoe: resuming from %s (step %ld)\n", paths[i], info.step);
            if (t->ld && info.world_size == t->world) {
                loader_seek(t->ld, info.pos_all[t->rank]);
            } else if (t->ld) {
                // Another rank count splits the shards differently: no exact
                // position exists, so every rank starts the next epoch.
                uint64_t ep = 0;
                for (int r = 0; r < info.world_size; r++)
                    ep = info.pos_all[r].epoch > ep ? info.pos_all[r].epoch : ep;
                if (!quiet)
                    fprintf(stderr, "softmoe: warning: %s was written by %d ranks, this run has "
                            "%d: the data restarts at the next epoch boundary (epoch %llu)\n",
                            paths[i], info.world_size, t->world, (unsigned long long)ep + 1);
                loader_seek(t->ld, (LoaderPos){ep + 1, 0});
            }
            t->skipped_base = t->rank == 0 ? info.skipped : 0;
            long step = info.step;
            ckpt_info_free(&info);
            ckpt_list_free(paths, steps, n);
            return step;
        }
        if (strcmp(c->resume, "latest_valid"))
            sm_die("%s\n  (nothing was changed; set train.resume=latest_valid to fall back to an "
                   "older checkpoint, or train.resume=none to start over)", err);
        if (!quiet) fprintf(stderr, "softmoe: warning: skipping unusable checkpoint: %s\n", err);
    }
    if (n) {
        ckpt_list_free(paths, steps, n);
        fresh_state(t, c);  // a failed load may have written part of a checkpoint
    }
    if (c->init[0]) init_params(t, c->init, quiet);
    return 0;
}

// The next training batch into t->images / t->targets.
static void next_batch(Trainer *t, const Config *c, long step) {
    const VitDims *d = &t->m.d;
    if (!t->ld) {
        // rank r takes images [r*B, (r+1)*B) of the global batch
        synthetic_batch(t->images, t->targets, NULL, t->B, d->S, d->C, d->K, c->seed,
                        (uint64_t)step * (uint64_t)c->batch_size + (uint64_t)t->rank * t->B);
        return;
    }
    int got = loader_next(t->ld, t->images, t->targets, NULL);
    SM_CHECK(got == t->B, "data: short training batch (%d of %d)", got, t->B);
}

// One evaluation source (shards pattern or folder) that must exist; its
// classes numbered by names_src's as the evaluation will (eval.h).
static void check_eval_source(const Config *c, const char *paths, const char *names_src,
                              const char *labels, const char *key) {
    char err[1024];
    if (eval_check_source(c, paths, names_src, labels, err, sizeof err) != 0)
        sm_die("%s (%s)", err, key);
}

// Every source the run will read, checked before anything is allocated or
// written: a wrong data.val or fewshot path fails at once, not after training.
static void check_sources(const Config *c) {
    char err[1024];
    if (strcmp(c->source, "synthetic")) {
        if (c->channels != 1 && c->channels != 3)
            sm_die("model.channels = %d: images are decoded as gray (1) or RGB (3)", c->channels);
        LoaderSpec sp = loader_spec_config(c, 1);
        if (loader_check(&sp, err, sizeof err) != 0) sm_die("%s (data.train)", err);
        if (c->val[0]) check_eval_source(c, c->val, c->train, c->val_labels, "data.val");
    }
    for (int f = 0; f < c->n_fewshot; f++) {
        char key[96], train[CFG_PATH], *test;
        snprintf(key, sizeof key, "fewshot.%s", c->fewshot_name[f]);
        snprintf(train, sizeof train, "%s", c->fewshot_data[f]);
        test = strchr(train, '|');
        SM_CHECK(test, "%s = %s: expected <train source>|<test source>", key, train);
        *test++ = '\0';
        check_eval_source(c, train, NULL, NULL, key);
        check_eval_source(c, test, train, NULL, key);
    }
    size_t il = strlen(c->init);
    int npz = il > 4 && !strcmp(c->init + il - 4, ".npz");
    if (c->init[0] && (npz ? npz_check(c->init, err, sizeof err) : ckpt_check(c->init, err, sizeof err)) != 0)
        sm_die("%s (train.init)", err);
}

int train_micro_batch(const Config *c, int world, char *err, size_t n) {
    const int B = c->batch_size / world, mb = c->microbatch ? c->microbatch : B;
    if (B % mb != 0) {
        snprintf(err, n, "train.microbatch = %d must divide the images per rank (train.batch_size "
                 "%d / %d rank%s = %d)", mb, c->batch_size, world, world > 1 ? "s" : "", B);
        return -1;
    }
    if (c->experts > 0 && mb % c->group_size != 0) {
        snprintf(err, n, "train.microbatch = %d must be a multiple of moe.group_size = %d: a "
                 "routing group never spans micro-batches", mb, c->group_size);
        return -1;
    }
    return mb;
}

static void trainer_setup(Trainer *t, const Config *c) {
    memset(t, 0, sizeof *t);
    t->lock_fd = -1;
    t->rank = dist_rank(), t->world = dist_world();
    if (c->batch_size % t->world != 0)
        sm_die("train.batch_size = %d is the global batch and must be divisible by the number "
               "of ranks (%d)", c->batch_size, t->world);
    t->B = c->batch_size / t->world;
    if (c->experts > 0 && t->B % c->group_size != 0)
        sm_die("moe.group_size = %d must divide the images per rank (train.batch_size %d / %d "
               "ranks = %d): a routing group never spans ranks", c->group_size, c->batch_size,
               t->world, t->B);
    char err[1024];
    t->mb = train_micro_batch(c, t->world, err, sizeof err);
    if (t->mb < 0) sm_die("%s", err);
    t->nmicro = t->B / t->mb;
    if (dist_set_ep(c->expert_parallel, c->experts, err, sizeof err) != 0) sm_die("%s", err);
    if (vit_check_sizes(c, t->B, err, sizeof err) != 0) sm_die("%s", err);
    check_sources(c);
    vit_build(&t->m, c);
    mem_estimate(&t->m, c, t->B, t->mb, &t->mem);
    if (mem_check(&t->mem, c, err, sizeof err) != 0) sm_die("%s", err);
    vit_alloc(&t->m, t->mb);  // activations for one micro-batch
    size_t n = t->m.pt.total;
    t->opt_m = sm_aligned(n * sizeof(float));
    t->opt_v = sm_aligned(n * sizeof(float));
    fresh_state(t, c);
    make_segments(t);
    WdRule rules[WD_MAX_RULES];
    int nr = wd_parse(c->wd, rules, WD_MAX_RULES, err, sizeof err);
    if (nr < 0) sm_die("%s", err);
    t->wd = sm_malloc((size_t)t->m.pt.n * sizeof(float));
    wd_per_tensor(rules, nr, &t->m.pt, t->wd);
    const VitDims *d = &t->m.d;
    t->images = sm_aligned((size_t)t->B * d->S * d->S * d->C * sizeof(float));
    t->targets = sm_aligned((size_t)t->B * d->K * sizeof(float));
    t->rm = sm_calloc((size_t)d->L * MOE_NMETRICS, sizeof(double));
}

// One run per workdir: rank 0 holds an flock on WORKDIR/.lock (with its PID
// inside) for the whole run; a second run stops at once, naming the holder.
// Temporary files of checkpoints a crash left behind are removed under it.
static void lock_workdir(Trainer *t, const Config *c) {
    if (t->rank != 0) return;
    sm_mkdirs(c->workdir);
    char path[CFG_PATH + 300], pid[64] = "";  // workdir + "/" + a directory entry
    snprintf(path, sizeof path, "%s/.lock", c->workdir);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) sm_die("cannot open the workdir lock '%s': %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            sm_die("train.workdir '%s' is in use by another run (PID %s holds %s); wait for it "
                   "to end or choose another train.workdir", c->workdir, pid[0] ? pid : "?", path);
        sm_die("cannot lock '%s': %s", path, strerror(e));
    }
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len)
        sm_die("cannot write the workdir lock '%s': %s", path, strerror(errno));
    t->lock_fd = fd;
    DIR *d = opendir(c->workdir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "ckpt-", 5) || n < 8 || strcmp(e->d_name + n - 7, ".h5.tmp")) continue;
        snprintf(path, sizeof path, "%s/%s", c->workdir, e->d_name);
        if (unlink(path) == 0)
            fprintf(stderr, "softmoe: removed the unfinished checkpoint '%s'\n", path);
    }
    if (d) closedir(d);
}

static void trainer_free(Trainer *t) {
    if (t->lock_fd >= 0) close(t->lock_fd);  // releases the workdir lock
    vit_free(&t->m);
    free(t->opt_m); free(t->opt_v); free(t->wd); free(t->seg);
    free(t->images); free(t->targets); free(t->rm);
    loader_close(t->ld);
}

// prec@1 and mean loss over n held-out synthetic images. Under MPI batch k
// goes to rank k % W; in a round where some rank has no batch left it runs a
// zero batch of the round's size, so the all-to-alls still pair up.
static void evaluate(Trainer *t, const Config *c, int n, double *prec1, double *loss) {
    const VitDims *d = &t->m.d;
    const size_t px = (size_t)d->S * d->S * d->C;
    const int EB = t->mb;  // the batch the activations hold
    double v[3] = {0, 0, 0};  // correct, seen, loss sum
    const int nb = (n + EB - 1) / EB;
    for (int k0 = 0; k0 < nb; k0 += t->world) {
        int k = k0 + t->rank, i = k * EB;
        int got = k < nb ? (n - i < EB ? n - i : EB) : 0;
        int B = dist_max(got);
        if (got)
            synthetic_batch(t->images, t->targets, NULL, got, d->S, d->C, d->K, c->seed,
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
static void log_eval(FILE *mf, Trainer *t, const Config *c, long step, int quiet, double *prec1,
                     double *loss) {
    long n = c->eval_synthetic;
    if (t->ld) {
        if (!eval_val(&t->m, c, prec1, loss, &n)) return;
    } else {
        evaluate(t, c, (int)n, prec1, loss);
    }
    if (mf) {
        fprintf(mf, "{\"step\": %ld, \"val/prec@1\": %.6g, \"val/loss\": %.6g}\n", step, *prec1,
                *loss);
        fflush(mf);
    }
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

// After each micro-step's forward: t->rm gathers the routing health of the
// step as the mean over its micro-steps (overwritten on the first).
static void add_router_metrics(Trainer *t, int micro) {
    const VitDims *d = &t->m.d;
    for (int l = 0; l < d->L; l++)
        for (int i = 0; i < MOE_NMETRICS; i++) {
            double v = d->is_moe[l] ? t->m.a.blk[l].moe.metrics[i] / t->nmicro : 0;
            t->rm[l * MOE_NMETRICS + i] = micro ? t->rm[l * MOE_NMETRICS + i] + v : v;
        }
}

// Routing health of the last step, per MoE block, averaged over the ranks
// and micro-steps: rm[l*MOE_NMETRICS + i] is metric i of block l.
static void router_metrics(Trainer *t, double *rm) {
    const VitDims *d = &t->m.d;
    for (int l = 0; l < d->L * MOE_NMETRICS; l++) rm[l] = t->rm[l] / t->world;
    dist_sum(rm, d->L * MOE_NMETRICS);
}

// "moe/<block>/<metric>": <value> for every MoE block and router metric.
static void log_router_metrics(FILE *mf, const Trainer *t, const double *rm) {
    const VitDims *d = &t->m.d;
    for (int l = 0; l < d->L; l++)
        for (int i = 0; d->is_moe[l] && i < MOE_NMETRICS && d->router->metric_names[i]; i++)
            fprintf(mf, ", \"moe/%d/%s\": %.4g", l, d->router->metric_names[i],
                    rm[l * MOE_NMETRICS + i]);
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

void train_run(const Config *c, int quiet_arg, TrainResult *res) {
    memset(res, 0, sizeof *res);
    // Rank 0 speaks for the job; every rank still reports its own errors.
    const int quiet = quiet_arg || dist_rank() != 0;
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
        if (c->channels != 1 && c->channels != 3)
            sm_die("model.channels = %d: images are decoded as gray (1) or RGB (3)", c->channels);
        LoaderSpec sp = loader_spec_config(c, 1);
        sp.quiet = quiet_arg;
        sp.B = t.B, sp.rank = t.rank, sp.world = t.world;
        char err[1024];
        t.ld = loader_open(&sp, err, sizeof err);
        if (!t.ld) sm_die("%s (data.train)", err);
    }
    if (t.world > 1 && !quiet_arg) report_layout(&t);
    lock_workdir(&t, c);
    dist_barrier();  // no rank reads the workdir before rank 0 holds it
    long start = restore(&t, c, quiet);
    sm_mkdirs(c->workdir);
    char path[CFG_PATH + 64];
    snprintf(path, sizeof path, "%s/config.ini", c->workdir);
    if (t.rank == 0 && config_write(c, path) != 0)
        sm_die("cannot write the resolved config to '%s'", path);
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->workdir);
    FILE *mf = t.rank == 0 ? sm_fopen(path, start ? "a" : "w") : NULL;

    const int tty = isatty(2) && !quiet;
    double t0 = sm_now(), tlog = t0, t_steps = 0, wait = 0, wait_log = 0, win_loss = 0, win_aux = 0;
    int win = 0;
    char mem[256];
    mem_format(&t.mem, mem, sizeof mem);
    if (!quiet)
        fprintf(stderr, "softmoe: training %s for %ld steps, batch %d (%d per rank, micro-batch %d), "
                "%.2fM params, %s; memory %s\n", c->workdir, c->steps, c->batch_size, t.B, t.mb,
                (double)ptable_global_total(&t.m.pt) / 1e6, c->source, mem);
    res->steps_done = start;
    // Communication of the training steps alone (evaluations run collectives too).
    DistStats *ds = dist_stats(), st = {0}, st_log = {0};
    // Test hooks ([debug] keys): behave as if SIGTERM arrived during a step
    // (on one rank only with debug.stop_rank, as when a scheduler signals the
    // processes of one node); fail fatally at a step; put a NaN into Adam's v
    // of the first tensor after a step's update, as an overflowing gradient
    // square would.
    const long stop_at = c->debug_stop_rank < 0 || c->debug_stop_rank == t.rank
                             ? c->debug_stop_at_step : 0;
    const long fail_at = c->debug_fail_rank < 0 || c->debug_fail_rank == t.rank
                             ? c->debug_fail_at_step : 0;
    const long poison_at = c->debug_poison_at_step;
    // Zero once: adam_update_zero leaves the gradients zero for the next step.
    vit_zero_grad(&t.m);
    const VitDims *d = &t.m.d;
    for (long step = start; step < c->steps; step++) {
        if (step + 1 == stop_at) g_stop = SIGTERM;
        if (step + 1 == fail_at) sm_die("test hook debug.fail_at_step=%ld", fail_at);
        DistStats before = *ds;
        double td = sm_now();
        next_batch(&t, c, step);
        wait += sm_now() - td;
        double loss = 0, aux = 0;  // means over the micro-steps
        for (int k = 0; k < t.nmicro; k++) {
            const float *img = t.images + (size_t)k * t.mb * d->S * d->S * d->C;
            const float *tgt = t.targets + (size_t)k * t.mb * d->K;
            // routing noise: a function of (seed, step, layer, global token)
            t.m.ctx = (MoeCtx){.train = 1, .seed = c->seed, .step = step,
                               .img0 = (long)t.rank * t.B + (long)k * t.mb};
            double l = vit_forward(&t.m, img, tgt, t.mb);
            t.m.ctx.train = 0;  // evaluations in between route without noise
            double a = t.m.aux_loss;
            if (!isfinite(l + a))
                sm_die("loss is %g at step %ld: training diverged (lower optim.lr or check the "
                       "data)", l, step + 1);
            add_router_metrics(&t, k);
            vit_backward(&t.m, img, tgt, t.mb);  // gradients accumulate over the micro-steps
            loss += l / t.nmicro, aux += a / t.nmicro;
        }
        double gnorm = sync_grads(&t);
        if (!isfinite(gnorm))
            sm_die("gradient norm is %g at step %ld: training diverged", gnorm, step + 1);
        double lr = sched_lr(c, step);
        adam_update_zero(t.m.params, t.m.grads, t.opt_m, t.opt_v, &t.m.pt, t.wd, lr, c->b1,
                         c->b2, c->eps, step + 1,
                         clip_factor(gnorm, c->clip) / (float)(t.world * t.nmicro));
        if (step + 1 == poison_at) t.opt_v[t.m.pt.t[0].offset] = NAN;
        add_since(&st, &before, ds);
        t_steps += sm_now() - td;
        win_loss += loss, win_aux += aux, win++;
        if (step == start) {
            double l = loss / t.world;
            dist_sum(&l, 1);
            res->first_loss = l;
        }
        int last = step + 1 == c->steps;
        if ((step + 1) % c->log_every == 0 || last) {
            double now = sm_now(), dt = now - tlog;
            double ips = win * (double)c->batch_size / dt, wfrac = (wait - wait_log) / dt;
            double mean = win_loss / win / t.world, mean_aux = win_aux / win / t.world;
            dist_sum(&mean, 1);
            dist_sum(&mean_aux, 1);
            double rm[VIT_MAX_DEPTH * MOE_NMETRICS];
            router_metrics(&t, rm);
            double eta = (now - t0) / (step + 1 - start) * (c->steps - step - 1);
            double pnorm = sqrt(global_sumsq(&t, t.m.params));
            if (!isfinite(pnorm))
                sm_die("the parameter norm is %g at step %ld: training diverged (lower optim.lr)",
                       pnorm, step + 1);
            uint64_t nskip = skipped(&t);
            if (mf) {
                fprintf(mf,
                        "{\"step\": %ld, \"loss\": %.6g, \"lr\": %.6g, \"img_per_s\": %.4g, "
                        "\"l2_grads\": %.6g, \"l2_params\": %.6g, \"data_wait\": %.4g, "
                        "\"skipped\": %llu",
                        step + 1, mean, lr, ips, gnorm, pnorm, wfrac, (unsigned long long)nskip);
                if (t.m.d.n_moe && t.m.d.router->has_aux)
                    fprintf(mf, ", \"aux_loss\": %.6g", mean_aux);
                log_router_metrics(mf, &t, rm);
                if (t.world > 1)
                    fprintf(mf, ", \"alltoall_s\": %.4g, \"allreduce_s\": %.4g",
                            (st.t_a2a - st_log.t_a2a) / win, (st.t_ar - st_log.t_ar) / win);
                fprintf(mf, "}\n");
                fflush(mf);
            }
            if (!quiet) progress(step + 1, c->steps, mean, lr, ips, wfrac, eta, tty);
            res->last_loss = mean;
            res->img_per_s = ips;
            tlog = now, wait_log = wait, win_loss = 0, win_aux = 0, win = 0, st_log = st;
        }
        res->steps_done = step + 1;
        // A signal may reach the ranks at different steps: they agree once,
        // here, and act on that decision only (a signal arriving later, even
        // during the save below, is agreed on after the next step).
        const int stop = t.world > 1 ? dist_max(g_stop) : g_stop;
        if ((c->ckpt_every > 0 && (step + 1) % c->ckpt_every == 0) || last) save(&t, c, step + 1);
        if (stop) {
            if (!((c->ckpt_every > 0 && (step + 1) % c->ckpt_every == 0) || last))
                save(&t, c, step + 1);
            if (!quiet)
                fprintf(stderr, "%ssoftmoe: signal %d: checkpoint at step %ld written to %s; "
                        "re-run the same command to resume\n", tty ? "\n" : "", stop,
                        step + 1, c->workdir);
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
        if (!quiet && !t.ld)
            fprintf(stderr, "softmoe: final evaluation on %d held-out synthetic images "
                    "(eval.synthetic_images)\n", c->eval_synthetic);
        log_eval(mf, &t, c, res->steps_done, 1, &res->val_prec1, &res->val_loss);
        eval_fewshot(&t.m, c, res->steps_done, mf, quiet);
    }
    if (mf) {
        if (ferror(mf)) sm_die("writing metrics to '%s' failed", path);
        sm_fclose(mf, path);
    }
    long ran = res->steps_done - start;
    if (!quiet && t.world > 1 && ran > 0)
        fprintf(stderr, "softmoe: rank 0 per training step: %.2f ms in %.0f all-to-alls (%.4f MB "
                "sent to other ranks), %.2f ms in %.0f allreduces (%.4f MB payload), step %.2f ms\n",
                1e3 * st.t_a2a / ran, (double)st.n_a2a / ran, st.a2a_bytes / 1e6 / ran,
                1e3 * st.t_ar / ran, (double)st.n_ar / ran, st.ar_bytes / 1e6 / ran,
                1e3 * t_steps / ran);
    if (!quiet && !res->preempted)
        fprintf(stderr, "softmoe: done, %ld steps in %.1fs; val prec@1 %.4f, val loss %.4f\n",
                res->steps_done, sm_now() - t0, res->val_prec1, res->val_loss);
    trainer_free(&t);
}
