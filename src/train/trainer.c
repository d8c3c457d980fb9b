// A training run's state before step 0 (see trainer.h): the checks of every
// input, the model, Adam and the batch buffers, the loader, the workdir lock.
#include "trainer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "../core/common.h"
#include "../dist/dist.h"
#include "../eval/eval.h"
#include "ckpt.h"
#include "npz.h"
#include "train.h"

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

// Dense tensors are the same on every rank, each expert is counted once (by
// the ranks of one expert group).
double trainer_sumsq(const Trainer *t, const float *block) {
    double sq[2] = {0, 0};
    for (int i = 0; i < t->nseg; i++)
        sq[t->seg[i].expert] += clip_l2_sumsq(block + t->seg[i].off, t->seg[i].len);
    dist_sum_ep(&sq[1], 1);
    return sq[0] + sq[1];
}

uint64_t trainer_skipped(const Trainer *t) {
    double k = (double)(t->skipped_base + (t->ld ? loader_skipped(t->ld) : 0));
    dist_sum(&k, 1);
    return (uint64_t)k;
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
        char key[96];
        snprintf(key, sizeof key, "fewshot.%s", c->fewshot_name[f]);
        check_eval_source(c, c->fewshot_train[f], NULL, NULL, key);
        check_eval_source(c, c->fewshot_test[f], c->fewshot_train[f], NULL, key);
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

// The per-rank batch and micro-batch, and the expert groups (dist).
static void split_batch(Trainer *t, const Config *c) {
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
}

// The loader of data.train (none for synthetic data), after check_sources.
static void open_loader(Trainer *t, const Config *c, int quiet_arg) {
    if (!strcmp(c->source, "synthetic")) return;
    LoaderSpec sp = loader_spec_config(c, 1);
    sp.quiet = quiet_arg;
    sp.B = t->B, sp.rank = t->rank, sp.world = t->world;
    char err[1024];
    t->ld = loader_open(&sp, err, sizeof err);
    if (!t->ld) sm_die("%s (data.train)", err);
}

void trainer_setup(Trainer *t, const Config *c, int quiet_arg) {
    memset(t, 0, sizeof *t);
    t->lock_fd = -1;
    t->rank = dist_rank(), t->world = dist_world();
    split_batch(t, c);
    check_sources(c);
    const MoeGroup group = {dist_ep_rank(), dist_ep(), dist_alltoall_ep};
    vit_build_group(&t->m, c, &group);
    char err[1024];
    mem_estimate(&t->m, c, t->B, t->mb, &t->mem);
    if (mem_check(&t->mem, c, err, sizeof err) != 0) sm_die("%s", err);
    vit_alloc(&t->m, t->mb);  // activations for one micro-batch
    optim_init(&t->opt, &t->m.pt, c);
    trainer_fresh_state(t, c);
    make_segments(t);
    const VitDims *d = &t->m.d;
    t->images = sm_aligned((size_t)t->B * d->img * d->img * d->C * sizeof(float));
    t->targets = sm_aligned((size_t)t->B * d->K * sizeof(float));
    t->rm = sm_calloc((size_t)d->L * MOE_NMETRICS, sizeof(double));
    t->load = sm_calloc((size_t)d->L * (d->E > 0 ? d->E : 1), sizeof(double));
    open_loader(t, c, quiet_arg);
}

// Step-0 state: parameters from the seed, Adam moments zero.
void trainer_fresh_state(Trainer *t, const Config *c) {
    vit_init(&t->m, c->seed);
    optim_zero(&t->opt, &t->m.pt);
}

// Temporary files of checkpoints a crash left behind (under the lock).
static void remove_unfinished(const Config *c) {
    char path[CFG_PATH + 300];  // workdir + "/" + a directory entry
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

// One run per workdir: rank 0 holds an flock on WORKDIR/.lock (with its PID
// inside) for the whole run; a second run stops at once, naming the holder.
void trainer_lock_workdir(Trainer *t, const Config *c) {
    if (t->rank != 0) return;
    sm_mkdirs(c->workdir);
    char path[CFG_PATH + 64], pid[64] = "";
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
    remove_unfinished(c);
}

void trainer_free(Trainer *t) {
    if (t->lock_fd >= 0) close(t->lock_fd);  // releases the workdir lock
    vit_free(&t->m);
    optim_free(&t->opt);
    free(t->seg), free(t->images), free(t->targets), free(t->rm), free(t->load);
    loader_close(t->ld);
}
