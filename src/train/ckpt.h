// HDF5 checkpoints (DESIGN.md "Checkpoints: HDF5"): WORKDIR/ckpt-{step:08d}.h5
// with root attributes format/version/step/world_size, /config (resolved INI
// text), /params/<name>, /opt/m/<name>, /opt/v/<name> in vmoe's names and
// shapes, and /state/* (loader position per rank, skipped count). Every
// tensor carries a "crc32" attribute (one per expert for stacked experts).
// Written under a temporary name (created O_EXCL, never through a symlink),
// flushed, read back and checked against the checksums, fsynced and renamed,
// so a file with the final name is always complete and correct. No
// checkpoint with a NaN or Inf is written, and none is loaded.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../data/loader.h"
#include "../model/params.h"

#define CKPT_FORMAT "softmoe"
#define CKPT_VERSION 1
#define CKPT_MAX_WORLD (1 << 20)   // ranks a checkpoint may declare

typedef struct {
    long step;
    int world_size;
    const char *config;            // resolved INI text
    const ParamTable *pt;
    const float *params, *m, *v;   // blocks laid out by pt; m/v may be NULL (params only)
    LoaderPos pos;                 // loader position of rank 0 (epoch, taken)
    const LoaderPos *pos_all;      // or, when set, world_size positions, one per rank
    uint64_t skipped;
    int finite_checked;            // the caller ran ckpt_first_nonfinite on every rank
} CkptOut;

// Writes WORKDIR/ckpt-{step:08d}.h5. Returns 0, or -1 with err naming the
// file. Nothing that existed before is touched on failure.
int ckpt_save(const char *workdir, const CkptOut *c, char *err, size_t errlen);

// The same in steps, for W ranks that each hold some experts (stacked expert
// tensors are written as hyperslabs of their whole (E, ...) datasets, so no
// rank ever holds every expert): rank 0 creates the temporary file with
// everything it holds (ckpt_write_new), then each other rank in turn adds its
// expert slices (ckpt_write_experts), then rank 0 makes it durable and
// renames it (ckpt_commit). ckpt_paths gives the two names.
void ckpt_paths(const char *workdir, long step, char *final, char *tmp, size_t n);
int ckpt_write_new(const char *tmp, const CkptOut *c, char *err, size_t errlen);
int ckpt_write_experts(const char *tmp, const CkptOut *c, char *err, size_t errlen);
// crash_before_rename (debug.crash_before_rename, tests): exit(3) once the
// file is complete and durable, before the rename, as a crash there would.
int ckpt_commit(const char *workdir, const char *tmp, const char *final, int crash_before_rename,
                char *err, size_t n);

typedef struct {
    long step;
    int world_size, version;
    char *config;                  // malloc'd INI text
    LoaderPos pos;                 // rank 0's loader position
    LoaderPos *pos_all;            // malloc'd, world_size entries (one per rank)
    uint64_t skipped;
} CkptInfo;

// Reads a checkpoint into the blocks laid out by pt (m, v may be NULL to
// skip the optimiser state). Every tensor of pt must be present with the
// same shape; of a stacked expert tensor only this rank's experts are read
// (whatever number of ranks wrote it). Returns 0, or -1 with err naming the
// file and the dataset.
int ckpt_load(const char *path, const ParamTable *pt, float *params, float *m, float *v,
              CkptInfo *info, char *err, size_t errlen);
void ckpt_info_free(CkptInfo *info);
// Whether path opens as a softmoe checkpoint (format, version, step); 0, or
// -1 with err naming the file. Reads no tensor.
int ckpt_check(const char *path, char *err, size_t errlen);

// Reads dataset `name` (e.g. "/params/head/kernel") whatever its shape, if
// it holds at most max_numel values (checked on the declared shape, before
// allocating): *data malloc'd, *ndim and dims (up to 8) filled. Returns 0, or
// -1 with err naming the file and dataset (missing, unreadable, too large,
// non-finite values).
int ckpt_read_any(const char *path, const char *name, size_t max_numel, float **data, int *ndim,
                  long *dims, char *err, size_t errlen);

// The first tensor of params / m / v (each may be NULL) holding a NaN or Inf:
// returns 1 with its checkpoint name ("/opt/v/head/kernel") in name, or 0.
int ckpt_first_nonfinite(const ParamTable *pt, const float *params, const float *m,
                         const float *v, char *name, size_t n);

// Reads one parameter `/params/<s->name>` into dst if its shape is the
// config's (of a stacked expert tensor, only this rank's experts). Returns 0,
// 1 when the shapes differ (dims/ndim filled, dst untouched), or -1 with err.
int ckpt_read_param(const char *path, const ParamSpec *s, float *dst, int *ndim, long *dims,
                    char *err, size_t errlen);

// Paths of WORKDIR's complete checkpoints, newest first (malloc'd list).
int ckpt_list(const char *workdir, char ***paths, long **steps);
void ckpt_list_free(char **paths, long *steps, int n);

// Deletes checkpoints beyond the newest `keep` except every keep_every-th
// step (keep_every 0: none kept for that reason).
void ckpt_prune(const char *workdir, int keep, int keep_every);

// `softmoe inspect`: format, version, step, config and every /params tensor
// (name, shape, count). Returns 0, or -1 with err.
int ckpt_inspect(const char *path, char *err, size_t errlen);
