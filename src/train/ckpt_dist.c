// Checkpoints of a run under MPI (see trainer.h; the file format is ckpt.h's):
// writing gathers every rank's loader position on rank 0, checks that no rank
// holds a non-finite value, and lets the ranks write in turn (rank 0 creates
// the file, each rank of the first expert group adds its expert slices, rank
// 0 renames it into place); resuming broadcasts rank 0's listing of the
// workdir, loads on every rank, agrees on success, and seeks the loader.
// With one rank every collective is a no-op.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/common.h"
#include "../dist/dist.h"
#include "cfgdiff.h"
#include "ckpt.h"
#include "trainer.h"

// Every rank's loader position, on rank 0 (NULL elsewhere). Collective.
static LoaderPos *gather_positions(const Trainer *t, LoaderPos mine) {
    uint64_t me[2] = {mine.epoch, mine.taken};
    LoaderPos *all = t->rank == 0 ? sm_malloc((size_t)t->world * sizeof(LoaderPos)) : NULL;
    uint64_t *flat = t->rank == 0 ? sm_malloc((size_t)t->world * 2 * sizeof(uint64_t)) : NULL;
    dist_gather_u64(me, 2, flat);
    for (int r = 0; all && r < t->world; r++) all[r] = (LoaderPos){flat[2 * r], flat[2 * r + 1]};
    free(flat);
    return all;
}

// No checkpoint holds a NaN or Inf: every rank checks what it holds before
// anything is written, and the run stops naming the tensor. Collective.
static void check_finite(const Trainer *t, long step) {
    char bad[PARAM_NAME + 16];
    int me_bad = ckpt_first_nonfinite(&t->m.pt, t->m.params, t->opt.m, t->opt.v, bad, sizeof bad);
    if (!dist_max(me_bad)) return;
    if (me_bad)
        sm_die("step %ld: %s holds a non-finite value (NaN or Inf): no checkpoint written "
               "(the previous one stays the newest); training diverged, lower optim.lr or "
               "check the data", step, bad);
    dist_barrier();  // the rank that found it aborts the job
    sm_die("step %ld: another rank holds a non-finite value: no checkpoint written", step);
}

// Rank 0 creates tmp, then each rank in turn (a token passed round the ring)
// adds its expert slices if it is in the first expert group.
static void write_in_turn(const Trainer *t, const char *tmp, const CkptOut *o) {
    char err[1024];
    int writes_experts = t->rank < dist_ep() && t->m.d.n_moe > 0;
    if (t->rank == 0) {
        if (ckpt_write_new(tmp, o, err, sizeof err) != 0) unlink(tmp), sm_die("%s", err);
    } else {
        dist_recv_int(t->rank - 1);
        if (writes_experts && ckpt_write_experts(tmp, o, err, sizeof err) != 0)
            unlink(tmp), sm_die("%s", err);
    }
    if (t->world > 1) {
        dist_send_int((t->rank + 1) % t->world, 0);
        if (t->rank == 0) dist_recv_int(t->world - 1);
    }
}

// A failure on any rank aborts the job before the rename, so the previous
// checkpoint stays the newest.
void ckpt_dist_save(Trainer *t, const Config *c, long step) {
    char cfg[1 << 16], err[1024], final[CFG_PATH + 64], tmp[CFG_PATH + 64];
    config_to_ini(c, cfg, sizeof cfg);
    LoaderPos mine = t->ld ? loader_pos(t->ld) : (LoaderPos){0, 0};
    LoaderPos *all = gather_positions(t, mine);
    CkptOut o = {.step = step, .world_size = t->world, .config = cfg, .pt = &t->m.pt,
                 .params = t->m.params, .m = t->opt.m, .v = t->opt.v, .pos = mine,
                 .pos_all = all, .skipped = trainer_skipped(t), .finite_checked = 1};
    ckpt_paths(c->workdir, step, final, tmp, sizeof final);
    check_finite(t, step);
    write_in_turn(t, tmp, &o);
    if (t->rank == 0) {
        if (ckpt_commit(c->workdir, tmp, final, step == c->debug_crash_before_rename, err,
                        sizeof err) != 0)
            sm_die("%s", err);
        ckpt_prune(c->workdir, c->keep_ckpts, c->keep_every);
    }
    dist_barrier();
    free(all);
}

// Rank 0 lists the workdir and every rank tries the same files in the same
// order (a shared filesystem may show the ranks different listings).
static int list_checkpoints(const Trainer *t, const Config *c, char ***paths, long **steps) {
    *paths = NULL, *steps = NULL;
    int n = t->rank == 0 && strcmp(c->resume, "none") ? ckpt_list(c->workdir, paths, steps) : 0;
    if (t->world == 1) return n;
    dist_bcast(&n, sizeof n);
    if (t->rank != 0 && n > 0) {
        *paths = sm_calloc((size_t)n, sizeof **paths);
        *steps = sm_calloc((size_t)n, sizeof **steps);
    }
    for (int i = 0; i < n; i++) {
        char buf[CFG_PATH + 64] = "";
        if (t->rank == 0) snprintf(buf, sizeof buf, "%s", (*paths)[i]);
        dist_bcast(buf, sizeof buf);
        if (t->rank != 0) (*paths)[i] = strdup(buf);
        dist_bcast(&(*steps)[i], sizeof (*steps)[i]);
    }
    return n;
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

// The loader continues where the checkpoint's run stopped.
static void seek_loader(Trainer *t, const CkptInfo *info, const char *path, int quiet) {
    if (!t->ld) return;
    if (info->world_size == t->world) {
        loader_seek(t->ld, info->pos_all[t->rank]);
        return;
    }
    // Another rank count splits the shards differently: no exact position
    // exists, so every rank starts the next epoch.
    uint64_t ep = 0;
    for (int r = 0; r < info->world_size; r++)
        ep = info->pos_all[r].epoch > ep ? info->pos_all[r].epoch : ep;
    if (!quiet)
        fprintf(stderr, "softmoe: warning: %s was written by %d ranks, this run has %d: the "
                "data restarts at the next epoch boundary (epoch %llu)\n", path,
                info->world_size, t->world, (unsigned long long)ep + 1);
    loader_seek(t->ld, (LoaderPos){ep + 1, 0});
}

// Loads one listed checkpoint on every rank: 0, or -1 with err when any rank
// failed or the file is not this run's. Collective.
static int load_one(Trainer *t, const char *path, long step, CkptInfo *info, char *err,
                    size_t n) {
    int rc = ckpt_load(path, &t->m.pt, t->m.params, t->opt.m, t->opt.v, info, err, n);
    t->m.wh_ready = 0;  // new params: the next forward converts its bf16 weights
    // Every rank reads its own experts: all must succeed, or all move on
    // together (a rank resuming elsewhere would silently train on).
    if (dist_max(rc != 0) && rc == 0) {
        ckpt_info_free(info);
        snprintf(err, n, "checkpoint '%s' could not be read on another rank (see its message)",
                 path);
        return -1;
    }
    // The step inside must be the one in the name (ckpt_list parsed it).
    if (rc == 0 && info->step != step) {
        snprintf(err, n, "checkpoint '%s' holds step %ld, not the step %ld of its name", path,
                 info->step, step);
        ckpt_info_free(info);
        return -1;
    }
    return rc;
}

// Resumes from the newest checkpoint in the workdir that loads (train.resume
// = latest: the newest or an error; latest_valid: fall back to older ones),
// else starts from train.init's parameters if given.
long ckpt_dist_restore(Trainer *t, const Config *c, int quiet) {
    char **paths, err[1024];
    long *steps;
    int n = list_checkpoints(t, c, &paths, &steps);
    for (int i = 0; i < n; i++) {
        CkptInfo info;
        if (load_one(t, paths[i], steps[i], &info, err, sizeof err) == 0) {
            check_config_change(c, &info, paths[i], quiet);  // the recipe must be the run's
            if (!quiet) fprintf(stderr, "softmoe: resuming from %s (step %ld)\n", paths[i], info.step);
            seek_loader(t, &info, paths[i], quiet);
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
        trainer_fresh_state(t, c);  // a failed load may have written part of a checkpoint
    }
    if (c->init[0]) trainer_init_params(t, c->init, quiet);
    return 0;
}
