// Writing HDF5 checkpoints (see ckpt.h; reading is ckpt_read.c). HDF5's own
// error printing is switched off; every failure becomes one message naming
// the file and the dataset.
#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "../core/common.h"
#include "ckpt_h5.h"

// ---- checksums and finiteness ----

int ckpt_first_nonfinite(const ParamTable *pt, const float *params, const float *m,
                         const float *v, char *name, size_t n) {
    const char *groups[3] = {"/params", "/opt/m", "/opt/v"};
    const float *blocks[3] = {params, m, v};
    for (int g = 0; g < 3; g++) {
        if (!blocks[g]) continue;
        for (int i = 0; i < pt->n; i++)
            if (!ckpt_all_finite(blocks[g] + pt->t[i].offset, pt->t[i].numel)) {
                snprintf(name, n, "%s/%s", groups[g], pt->t[i].name);
                return 1;
            }
    }
    return 0;
}

// ---- writing ----
// Every HDF5 call's result is checked (a failed close or flush can be the
// only sign that data never reached the disk), the file is created with
// H5F_ACC_EXCL after removing any stale temp file (O_CREAT|O_EXCL: never
// through a symlink planted at that name), and what was written is read back
// and compared with the in-memory checksums before the rename.

static int put_attr(hid_t f, const char *name, hid_t type, const void *v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    if (sp < 0) return -1;
    hid_t a = H5Acreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    int ok = a >= 0 && H5Awrite(a, type, v) >= 0;
    if (a >= 0 && H5Aclose(a) < 0) ok = 0;
    if (H5Sclose(sp) < 0) ok = 0;
    return ok ? 0 : -1;
}

static int put_str(hid_t f, hid_t lcpl, const char *name, const char *s, int as_attr) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return -1;
    int rc = H5Tset_size(t, strlen(s) ? strlen(s) : 1) < 0 ? -1 : 0;
    if (rc == 0 && as_attr) {
        rc = put_attr(f, name, t, s);
    } else if (rc == 0) {
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t d = sp >= 0 ? H5Dcreate2(f, name, t, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT) : -1;
        rc = d >= 0 && H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) >= 0 ? 0 : -1;
        if (d >= 0 && H5Dclose(d) < 0) rc = -1;
        if (sp >= 0 && H5Sclose(sp) < 0) rc = -1;
    }
    if (H5Tclose(t) < 0) rc = -1;
    return rc;
}

static int put_array(hid_t f, hid_t lcpl, const char *name, hid_t ftype, hid_t mtype, int ndim,
                     const hsize_t *dims, const void *data) {
    hid_t sp = ndim ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    if (sp < 0) return -1;
    hid_t d = H5Dcreate2(f, name, ftype, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = d >= 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0 ? 0 : -1;
    if (d >= 0 && H5Dclose(d) < 0) rc = -1;
    if (H5Sclose(sp) < 0) rc = -1;
    return rc;
}

// The dataset's "crc32" attribute: one u32 per piece. This rank's pieces are
// set to the crcs of `data` (also written to out, for the verification);
// the others are kept (create: zero, to be filled in by the ranks that own them).
static int put_crcs(hid_t d, const ParamSpec *s, const float *data, int create, uint32_t *out) {
    int total = ckpt_pieces_total(s), local = ckpt_pieces_local(s), first = ckpt_piece_first(s);
    uint32_t *crc = sm_calloc((size_t)total, sizeof *crc);
    size_t len = s->numel / (size_t)local;
    hsize_t n = (hsize_t)total;
    int rc = 0;
    hid_t a = -1, sp = -1;
    if (create) {
        sp = H5Screate_simple(1, &n, NULL);
        a = sp >= 0 ? H5Acreate2(d, "crc32", H5T_STD_U32LE, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
    } else {
        a = H5Aopen(d, "crc32", H5P_DEFAULT);
        if (a < 0 || H5Aread(a, H5T_NATIVE_UINT32, crc) < 0) rc = -1;
    }
    for (int p = 0; p < local; p++) out[p] = crc[first + p] = ckpt_crc_floats(data + (size_t)p * len, len);
    if (a < 0 || rc != 0 || H5Awrite(a, H5T_NATIVE_UINT32, crc) < 0) rc = -1;
    if (a >= 0 && H5Aclose(a) < 0) rc = -1;
    if (sp >= 0 && H5Sclose(sp) < 0) rc = -1;
    free(crc);
    return rc;
}

// Writes the block's part of one tensor: all of it, or for a stacked expert
// tensor the hyperslab of this rank's experts inside the whole (E, ...)
// dataset. create: the dataset does not exist yet.
static int put_tensor(hid_t f, hid_t lcpl, const char *name, const ParamSpec *s,
                      const float *data, int create, uint32_t *crcs) {
    hsize_t dims[PARAM_MAXDIM], local[PARAM_MAXDIM], start[PARAM_MAXDIM] = {0};
    int gshape[PARAM_MAXDIM];
    ptable_global_shape(s, gshape);
    for (int k = 0; k < s->ndim; k++) dims[k] = (hsize_t)gshape[k], local[k] = (hsize_t)s->shape[k];
    start[0] = (hsize_t)ckpt_piece_first(s);
    hid_t fsp = s->ndim ? H5Screate_simple(s->ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    if (fsp < 0) return -1;
    hid_t d = create ? H5Dcreate2(f, name, H5T_IEEE_F32LE, fsp, lcpl, H5P_DEFAULT, H5P_DEFAULT)
                     : H5Dopen2(f, name, H5P_DEFAULT);
    int rc = d >= 0 ? 0 : -1;
    if (rc == 0 && ptable_is_expert(s)) {
        hid_t msp = H5Screate_simple(s->ndim, local, NULL);
        rc = msp >= 0 && H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, NULL, local, NULL) >= 0 &&
                     H5Dwrite(d, H5T_NATIVE_FLOAT, msp, fsp, H5P_DEFAULT, data) >= 0
                 ? 0 : -1;
        if (msp >= 0 && H5Sclose(msp) < 0) rc = -1;
    } else if (rc == 0) {
        rc = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0 ? 0 : -1;
    }
    if (rc == 0) rc = put_crcs(d, s, data, create, crcs);
    if (d >= 0 && H5Dclose(d) < 0) rc = -1;
    if (H5Sclose(fsp) < 0) rc = -1;
    return rc;
}

static const char *group_names[3] = {"/params", "/opt/m", "/opt/v"};

static void out_blocks(const CkptOut *c, const float *blocks[3]) {
    blocks[0] = c->params, blocks[1] = c->m, blocks[2] = c->v;
}

// The crcs this rank writes, one per piece of every tensor it writes, in
// writing order (malloc'd): verify compares the stored ones with these.
static uint32_t *crc_log(const CkptOut *c, int experts_only) {
    const float *blocks[3];
    out_blocks(c, blocks);
    size_t k = 0;
    for (int g = 0; g < 3; g++)
        for (int i = 0; blocks[g] && i < c->pt->n; i++)
            if (!experts_only || ptable_is_expert(&c->pt->t[i])) k += (size_t)ckpt_pieces_local(&c->pt->t[i]);
    return sm_malloc((k ? k : 1) * sizeof(uint32_t));
}

// The tensors of /params, /opt/m, /opt/v; experts_only: only the expert
// slices, into datasets rank 0 created. Their crcs go to log (crc_log).
static int put_groups(hid_t f, hid_t lcpl, const CkptOut *c, int experts_only, uint32_t *log,
                      char *err, size_t n, const char *path) {
    const float *blocks[3];
    out_blocks(c, blocks);
    char name[PARAM_NAME + 16];
    size_t k = 0;
    for (int g = 0; g < 3; g++) {
        if (!blocks[g]) continue;
        for (int i = 0; i < c->pt->n; i++) {
            const ParamSpec *s = &c->pt->t[i];
            if (experts_only && !ptable_is_expert(s)) continue;
            snprintf(name, sizeof name, "%s/%s", group_names[g], s->name);
            if (put_tensor(f, lcpl, name, s, blocks[g] + s->offset, !experts_only, log + k) != 0)
                return sm_fail(err, n, "checkpoint '%s': writing dataset %s failed", path, name);
            k += (size_t)ckpt_pieces_local(s);
        }
    }
    return 0;
}

// Reads back what this rank wrote (experts_only: its expert slices) and
// compares it with memory, and each stored crc with the one computed when it
// was written (log): a write that HDF5 or the kernel lost, or that left
// zeros, is caught before the rename.
static int verify(const char *path, const CkptOut *c, int experts_only, const uint32_t *log,
                  char *err, size_t n) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t f = fapl >= 0 && H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) >= 0
                  ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    if (fapl >= 0) H5Pclose(fapl);
    if (f < 0) return sm_fail(err, n, "checkpoint '%s': cannot be reopened to verify it", path);
    size_t big = 0;
    for (int i = 0; i < c->pt->n; i++) big = c->pt->t[i].numel > big ? c->pt->t[i].numel : big;
    float *buf = sm_aligned((big ? big : 1) * sizeof(float));
    const float *blocks[3];
    out_blocks(c, blocks);
    char name[PARAM_NAME + 16];
    int rc = 0;
    size_t k = 0;
    for (int g = 0; g < 3 && rc == 0; g++) {
        if (!blocks[g]) continue;
        for (int i = 0; i < c->pt->n && rc == 0; i++) {
            const ParamSpec *s = &c->pt->t[i];
            if (experts_only && !ptable_is_expert(s)) continue;
            snprintf(name, sizeof name, "%s/%s", group_names[g], s->name);
            // read_tensor checks the stored crcs against the written ones ...
            rc = ckpt_read_tensor(f, path, name, s, buf, log + k, err, n);
            k += (size_t)ckpt_pieces_local(s);
            // ... and this, the data read back against what was meant to be written
            if (rc == 0 && memcmp(buf, blocks[g] + s->offset, s->numel * sizeof(float)) != 0)
                rc = sm_fail(err, n, "checkpoint '%s': dataset %s reads back different from what "
                             "was written", path, name);
        }
    }
    free(buf);
    if (H5Fclose(f) < 0 && rc == 0) rc = sm_fail(err, n, "checkpoint '%s': close failed", path);
    if (rc != 0) snprintf(err + strlen(err), n - strlen(err), " (verifying the written file)");
    return rc;
}

static int fsync_path(const char *path, int dir) {
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDWR) | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    if (close(fd) != 0 && rc == 0) rc = -1, e = errno;
    errno = e;
    return rc;
}

static int close_file(hid_t f, int rc, char *err, size_t n, const char *tmp) {
    if (rc == 0 && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0)
        rc = sm_fail(err, n, "checkpoint '%s': flush failed (disk full or I/O error?)", tmp);
    if (H5Fclose(f) < 0 && rc == 0)
        rc = sm_fail(err, n, "checkpoint '%s': close failed (disk full or I/O error?)", tmp);
    return rc;
}

// A file access list that closes every object left open with the file, so a
// failed write never leaves the file open in the library for exit to trip on.
static hid_t strong_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0 && H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) H5Pclose(fapl), fapl = -1;
    return fapl;
}

int ckpt_write_new(const char *tmp, const CkptOut *c, char *err, size_t n) {
    ckpt_quiet_hdf5();
    err[0] = '\0';
    char bad[PARAM_NAME + 16];
    if (!c->finite_checked && ckpt_first_nonfinite(c->pt, c->params, c->m, c->v, bad, sizeof bad))
        return sm_fail(err, n, "step %ld: %s holds a non-finite value (NaN or Inf): no checkpoint "
                       "written (the previous one stays the newest); training diverged, lower "
                       "optim.lr or check the data", c->step, bad);
    // A stale temp file (a crash), or a symlink planted at its name: removed,
    // never written through (unlink acts on the link itself).
    if (unlink(tmp) != 0 && errno != ENOENT)
        return sm_fail(err, n, "cannot remove the stale temporary checkpoint '%s': %s", tmp,
                       strerror(errno));
    hid_t fapl = strong_fapl();
    hid_t f = fapl >= 0 ? H5Fcreate(tmp, H5F_ACC_EXCL, H5P_DEFAULT, fapl) : -1;
    if (fapl >= 0) H5Pclose(fapl);
    if (f < 0) return sm_fail(err, n, "cannot create checkpoint '%s'", tmp);
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    int rc = lcpl >= 0 && H5Pset_create_intermediate_group(lcpl, 1) >= 0 ? 0 : -1;
    int version = CKPT_VERSION, world = c->world_size < 1 ? 1 : c->world_size;
    int64_t step = c->step;
    uint64_t sk = c->skipped, *ep = sm_malloc((size_t)world * 2 * sizeof(uint64_t)), *tk = ep + world;
    for (int r = 0; r < world; r++) {
        LoaderPos p = c->pos_all ? c->pos_all[r] : c->pos;
        ep[r] = p.epoch, tk[r] = p.taken;
    }
    hsize_t nw = (hsize_t)world;
    if (rc == 0)
        rc = put_str(f, lcpl, "format", CKPT_FORMAT, 1) |
             put_attr(f, "version", H5T_NATIVE_INT, &version) |
             put_attr(f, "step", H5T_NATIVE_INT64, &step) |
             put_attr(f, "world_size", H5T_NATIVE_INT, &world) |
             put_str(f, lcpl, "/config", c->config, 0) |
             put_array(f, lcpl, "/state/loader_epoch", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, &nw, ep) |
             put_array(f, lcpl, "/state/loader_taken", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, &nw, tk) |
             put_array(f, lcpl, "/state/skipped", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, NULL, &sk);
    free(ep);
    if (rc != 0) sm_fail(err, n, "checkpoint '%s': writing attributes/config/state failed", tmp);
    uint32_t *log = crc_log(c, 0);
    if (rc == 0) rc = put_groups(f, lcpl, c, 0, log, err, n, tmp);
    if (lcpl >= 0 && H5Pclose(lcpl) < 0 && rc == 0)
        rc = sm_fail(err, n, "checkpoint '%s': HDF5 property list close failed", tmp);
    rc = close_file(f, rc, err, n, tmp);
    if (rc == 0) rc = verify(tmp, c, 0, log, err, n);
    free(log);
    return rc;
}

int ckpt_write_experts(const char *tmp, const CkptOut *c, char *err, size_t n) {
    ckpt_quiet_hdf5();
    err[0] = '\0';
    char bad[PARAM_NAME + 16];
    if (!c->finite_checked && ckpt_first_nonfinite(c->pt, c->params, c->m, c->v, bad, sizeof bad))
        return sm_fail(err, n, "step %ld: %s holds a non-finite value (NaN or Inf): no checkpoint "
                       "written", c->step, bad);
    hid_t fapl = strong_fapl();
    hid_t f = fapl >= 0 ? H5Fopen(tmp, H5F_ACC_RDWR, fapl) : -1;
    if (fapl >= 0) H5Pclose(fapl);
    if (f < 0) return sm_fail(err, n, "cannot open checkpoint '%s' to add this rank's experts", tmp);
    uint32_t *log = crc_log(c, 1);
    int rc = close_file(f, put_groups(f, H5P_DEFAULT, c, 1, log, err, n, tmp), err, n, tmp);
    if (rc == 0) rc = verify(tmp, c, 1, log, err, n);
    free(log);
    // Durable before the next rank goes on: rank 0's fsync may not reach
    // what another node wrote.
    if (rc == 0 && fsync_path(tmp, 0) != 0)
        rc = sm_fail(err, n, "checkpoint '%s': fsync failed: %s", tmp, strerror(errno));
    return rc;
}

void ckpt_paths(const char *workdir, long step, char *final, char *tmp, size_t n) {
    snprintf(final, n, "%s/ckpt-%08ld.h5", workdir, step);
    snprintf(tmp, n, "%s/ckpt-%08ld.h5.tmp", workdir, step);
}

int ckpt_commit(const char *workdir, const char *tmp, const char *final, int crash_before_rename,
                char *err, size_t n) {
    if (fsync_path(tmp, 0) != 0) {
        sm_fail(err, n, "checkpoint '%s': fsync failed: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (crash_before_rename) _exit(3);
    if (rename(tmp, final) != 0) {
        sm_fail(err, n, "checkpoint: renaming '%s' to '%s' failed: %s", tmp, final, strerror(errno));
        unlink(tmp);
        return -1;
    }
    // Make the rename itself durable. The new file is complete and verified,
    // but a directory that cannot be synced is a disk to stop on.
    if (fsync_path(workdir, 1) != 0)
        return sm_fail(err, n, "checkpoint '%s' written, but syncing the directory '%s' failed: "
                       "%s", final, workdir, strerror(errno));
    return 0;
}

int ckpt_save(const char *workdir, const CkptOut *c, char *err, size_t n) {
    char final[4096], tmp[4096];
    ckpt_paths(workdir, c->step, final, tmp, sizeof final);
    if (ckpt_write_new(tmp, c, err, n) != 0) {
        unlink(tmp);
        return -1;
    }
    return ckpt_commit(workdir, tmp, final, 0, err, n);
}
