// HDF5 checkpoints (see ckpt.h). HDF5's own error printing is switched off;
// every failure becomes one message naming the file and the dataset.
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

// HDF5's exit-time cleanup would flush (and on a full disk crash in) a file
// whose close failed; every file here is closed explicitly, so it is off.
static void quiet_hdf5(void) {
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static int fail(char *err, size_t n, const char *fmt, const char *a, const char *b) {
    snprintf(err, n, fmt, a, b);
    return -1;
}

// ---- checksums and finiteness ----

// A tensor's checksum pieces: one per expert of a stacked expert tensor (so
// each rank writes and checks the crcs of its own slices), else one.
static int pieces_total(const ParamSpec *s) { return ptable_is_expert(s) ? s->stack_total : 1; }
static int pieces_local(const ParamSpec *s) { return ptable_is_expert(s) ? s->n_stack : 1; }
static int piece_first(const ParamSpec *s) { return ptable_is_expert(s) ? s->stack_first : 0; }

static uint32_t crc_floats(const float *p, size_t n) {
    uLong c = crc32_z(0L, Z_NULL, 0);
    return (uint32_t)crc32_z(c, (const Bytef *)p, n * sizeof(float));
}

static int all_finite(const float *p, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad |= !isfinite(p[i]);
    return !bad;
}

int ckpt_first_nonfinite(const ParamTable *pt, const float *params, const float *m,
                         const float *v, char *name, size_t n) {
    const char *groups[3] = {"/params", "/opt/m", "/opt/v"};
    const float *blocks[3] = {params, m, v};
    for (int g = 0; g < 3; g++) {
        if (!blocks[g]) continue;
        for (int i = 0; i < pt->n; i++)
            if (!all_finite(blocks[g] + pt->t[i].offset, pt->t[i].numel)) {
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
    int total = pieces_total(s), local = pieces_local(s), first = piece_first(s);
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
    for (int p = 0; p < local; p++) out[p] = crc[first + p] = crc_floats(data + (size_t)p * len, len);
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
    start[0] = (hsize_t)piece_first(s);
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
            if (!experts_only || ptable_is_expert(&c->pt->t[i])) k += (size_t)pieces_local(&c->pt->t[i]);
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
            k += (size_t)pieces_local(s);
        }
    }
    return 0;
}

static int read_tensor(hid_t f, const char *path, const char *name, const ParamSpec *s,
                       float *dst, const uint32_t *want, char *err, size_t n);

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
            rc = read_tensor(f, path, name, s, buf, log + k, err, n);
            k += (size_t)pieces_local(s);
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
    quiet_hdf5();
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
    quiet_hdf5();
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

// ---- reading ----

static int get_attr(hid_t f, const char *name, hid_t type, void *v) {
    if (H5Aexists(f, name) <= 0) return -1;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    int rc = a >= 0 && H5Aread(a, type, v) >= 0 ? 0 : -1;
    if (a >= 0) H5Aclose(a);
    return rc;
}

static int exists(hid_t f, const char *path) {
    // H5Lexists needs every parent group to exist: check each prefix.
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        int e = H5Lexists(f, buf, H5P_DEFAULT);
        *p = '/';
        if (e <= 0) return 0;
    }
    return H5Lexists(f, buf, H5P_DEFAULT) > 0;
}

static char *get_string(hid_t f, const char *name, int as_attr) {
    hid_t o = as_attr ? H5Aopen(f, name, H5P_DEFAULT) : H5Dopen2(f, name, H5P_DEFAULT);
    if (o < 0) return NULL;
    hid_t t = as_attr ? H5Aget_type(o) : H5Dget_type(o);
    size_t len = H5Tget_size(t);
    char *s = NULL;
    // a declared size is checked before allocating (a resolved config is a few KB)
    if (H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t) && len <= (1u << 24)) {
        s = sm_calloc(len + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, len);
        int rc = as_attr ? H5Aread(o, mt, s) : H5Dread(o, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, s);
        H5Tclose(mt);
        if (rc < 0) free(s), s = NULL;
    }
    H5Tclose(t);
    if (as_attr) H5Aclose(o);
    else H5Dclose(o);
    return s;
}

// Compares the dataset's "crc32" attribute with the crcs of what was read,
// or with `want` (the crcs computed when it was written; then the attribute
// must be there). Checkpoints from before checksums are taken as they are.
static int check_crcs(hid_t d, const char *path, const char *name, const ParamSpec *s,
                      const float *data, const uint32_t *want, char *err, size_t n) {
    if (H5Aexists(d, "crc32") <= 0)
        return want ? fail(err, n, "checkpoint '%s': dataset %s lost its crc32 attribute", path,
                           name) : 0;
    int total = pieces_total(s), local = pieces_local(s), first = piece_first(s);
    hid_t a = H5Aopen(d, "crc32", H5P_DEFAULT);
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    hssize_t cnt = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    uint32_t *crc = sm_calloc((size_t)total, sizeof *crc);
    int rc = cnt == total && H5Aread(a, H5T_NATIVE_UINT32, crc) >= 0 ? 0 : -1;
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    if (rc != 0) {
        free(crc);
        return fail(err, n, "checkpoint '%s': dataset %s has an unreadable crc32 attribute", path,
                    name);
    }
    size_t len = s->numel / (size_t)local;
    for (int p = 0; p < local && rc == 0; p++)
        if ((want ? want[p] : crc_floats(data + (size_t)p * len, len)) != crc[first + p]) rc = -1;
    free(crc);
    return rc ? fail(err, n, "checkpoint '%s': dataset %s does not match its checksum (corrupt "
                     "file)", path, name) : 0;
}

// want: see check_crcs (NULL when loading; then the values must be finite).
static int read_tensor(hid_t f, const char *path, const char *name, const ParamSpec *s,
                       float *dst, const uint32_t *want, char *err, size_t n) {
    if (!exists(f, name)) return fail(err, n, "checkpoint '%s' has no dataset %s", path, name);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    hsize_t dims[8] = {0};
    if (nd >= 0 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
    int gshape[PARAM_MAXDIM];
    ptable_global_shape(s, gshape);
    int same = nd == s->ndim;
    for (int k = 0; same && k < nd; k++) same = dims[k] == (hsize_t)gshape[k];
    int rc = 0;
    if (!same) {
        char want[96] = "(", got[96] = "(";
        for (int k = 0; k < s->ndim; k++)
            snprintf(want + strlen(want), sizeof want - strlen(want), k ? ",%d" : "%d", gshape[k]);
        strcat(want, ")");
        for (int k = 0; k < nd && k < 8; k++)
            snprintf(got + strlen(got), sizeof got - strlen(got), k ? ",%llu" : "%llu",
                     (unsigned long long)dims[k]);
        strcat(got, ")");
        snprintf(err, n, "checkpoint '%s': dataset %s has shape %s but the config gives %s", path,
                 name, got, want);
        rc = -1;
    } else {
        hid_t msp = H5S_ALL, fsp = H5S_ALL;
        if (ptable_is_expert(s)) {  // this rank's experts only
            hsize_t start[PARAM_MAXDIM] = {0}, cnt[PARAM_MAXDIM];
            for (int k = 0; k < s->ndim; k++) cnt[k] = (hsize_t)s->shape[k];
            start[0] = (hsize_t)s->stack_first;
            msp = H5Screate_simple(s->ndim, cnt, NULL);
            fsp = sp;
            H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, NULL, cnt, NULL);
        }
        if (H5Dread(d, H5T_NATIVE_FLOAT, msp, fsp, H5P_DEFAULT, dst) < 0)
            rc = fail(err, n, "checkpoint '%s': reading dataset %s failed (truncated file?)", path,
                      name);
        if (msp != H5S_ALL) H5Sclose(msp);
        if (rc == 0) rc = check_crcs(d, path, name, s, dst, want, err, n);
        if (rc == 0 && !want && !all_finite(dst, s->numel))
            rc = fail(err, n, "checkpoint '%s': dataset %s holds non-finite values (NaN or Inf)",
                      path, name);
    }
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return rc;
}

// A 1-D u64 dataset of exactly `want` entries (one per rank): *v malloc'd.
// The declared length is checked before anything is allocated for it.
static int read_u64_array(hid_t f, const char *name, int want, uint64_t **v) {
    *v = NULL;
    if (!exists(f, name)) return -1;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t dims[1] = {0};
    int rc = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 ? 0 : -1;
    if (rc == 0) H5Sget_simple_extent_dims(sp, dims, NULL);
    if (rc == 0 && (want < 1 || dims[0] != (hsize_t)want)) rc = -1;
    if (rc == 0) {
        *v = sm_malloc((size_t)want * sizeof(uint64_t));
        rc = H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, *v) >= 0 ? 0 : -1;
    }
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    if (rc != 0) free(*v), *v = NULL;
    return rc;
}

static int read_u64(hid_t f, const char *name, uint64_t *v) {
    if (!exists(f, name)) return -1;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    int rc = d >= 0 && H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0 ? 0 : -1;
    if (d >= 0) H5Dclose(d);
    return rc;
}

static hid_t open_checked(const char *path, CkptInfo *info, char *err, size_t n) {
    quiet_hdf5();
    if (access(path, R_OK) != 0) {
        snprintf(err, n, "checkpoint '%s' cannot be read: %s", path, strerror(errno));
        return -1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        fail(err, n, "checkpoint '%s' is not an HDF5 file (or is truncated)%s", path, "");
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        fail(err, n, "checkpoint '%s' cannot be opened as HDF5 (truncated or corrupt)%s", path, "");
        return -1;
    }
    char *fmt = get_string(f, "format", 1);
    int64_t step = 0;
    int bad = !fmt || strcmp(fmt, CKPT_FORMAT) != 0;
    free(fmt);
    if (bad || get_attr(f, "version", H5T_NATIVE_INT, &info->version) != 0 ||
        get_attr(f, "step", H5T_NATIVE_INT64, &step) != 0 ||
        get_attr(f, "world_size", H5T_NATIVE_INT, &info->world_size) != 0) {
        fail(err, n, "checkpoint '%s' is not a softmoe checkpoint (root attributes format, "
             "version, step, world_size)%s", path, "");
        H5Fclose(f);
        return -1;
    }
    if (info->version > CKPT_VERSION) {
        snprintf(err, n, "checkpoint '%s' has format version %d, newer than this softmoe's %d; "
                 "use a newer build", path, info->version, CKPT_VERSION);
        H5Fclose(f);
        return -1;
    }
    if (step < 0 || info->world_size < 1 || info->world_size > CKPT_MAX_WORLD) {
        snprintf(err, n, "checkpoint '%s' has step %lld and world_size %d: not a checkpoint a run "
                 "can continue from", path, (long long)step, info->world_size);
        H5Fclose(f);
        return -1;
    }
    info->step = (long)step;
    return f;
}

int ckpt_load(const char *path, const ParamTable *pt, float *params, float *m, float *v,
              CkptInfo *info, char *err, size_t n) {
    memset(info, 0, sizeof *info);
    hid_t f = open_checked(path, info, err, n);
    if (f < 0) return -1;
    int rc = 0;
    info->config = get_string(f, "/config", 0);
    if (!info->config) rc = fail(err, n, "checkpoint '%s' has no dataset /config%s", path, "");
    uint64_t *ep = NULL, *tk = NULL;
    const int nep = info->world_size;
    if (rc == 0 && (read_u64_array(f, "/state/loader_epoch", info->world_size, &ep) != 0 ||
                    read_u64_array(f, "/state/loader_taken", info->world_size, &tk) != 0 ||
                    read_u64(f, "/state/skipped", &info->skipped) != 0))
        rc = fail(err, n, "checkpoint '%s' lacks /state/loader_epoch, loader_taken or skipped "
                  "(one entry per rank)%s", path, "");
    if (rc == 0) {
        info->pos_all = sm_malloc((size_t)nep * sizeof(LoaderPos));
        for (int r = 0; r < nep; r++) info->pos_all[r] = (LoaderPos){ep[r], tk[r]};
        info->pos = info->pos_all[0];
    }
    free(ep), free(tk);
    char name[PARAM_NAME + 16];
    const char *groups[3] = {"/params", "/opt/m", "/opt/v"};
    float *blocks[3] = {params, m, v};
    for (int g = 0; g < 3 && rc == 0; g++) {
        if (!blocks[g]) continue;
        for (int i = 0; i < pt->n && rc == 0; i++) {
            snprintf(name, sizeof name, "%s/%s", groups[g], pt->t[i].name);
            rc = read_tensor(f, path, name, &pt->t[i], blocks[g] + pt->t[i].offset, NULL, err, n);
        }
    }
    H5Fclose(f);
    if (rc != 0) ckpt_info_free(info);
    return rc;
}

int ckpt_read_any(const char *path, const char *name, size_t max_numel, float **data, int *ndim,
                  long *dims, char *err, size_t n) {
    CkptInfo info;
    memset(&info, 0, sizeof info);
    *data = NULL;
    hid_t f = open_checked(path, &info, err, n);
    if (f < 0) return -1;
    int rc = -1;
    hid_t d = exists(f, name) ? H5Dopen2(f, name, H5P_DEFAULT) : -1;
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    *ndim = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (d < 0) {
        fail(err, n, "checkpoint '%s' has no dataset %s", path, name);
    } else if (*ndim < 0 || *ndim > 8) {
        fail(err, n, "checkpoint '%s': dataset %s has an unreadable shape", path, name);
    } else {
        hsize_t hd[8] = {0};
        H5Sget_simple_extent_dims(sp, hd, NULL);
        // The declared shape is checked before anything is allocated for it.
        size_t cnt = 1;
        int over = 0;
        for (int k = 0; k < *ndim; k++) {
            dims[k] = hd[k] > (hsize_t)LONG_MAX ? LONG_MAX : (long)hd[k];
            if (hd[k] && cnt > max_numel / hd[k]) over = 1;
            cnt = over ? max_numel + 1 : cnt * hd[k];
        }
        if (over || cnt > max_numel) {
            snprintf(err, n, "checkpoint '%s': dataset %s declares more than %zu values, more than "
                     "this config can use", path, name, max_numel);
        } else {
            *data = sm_malloc((cnt ? cnt : 1) * sizeof(float));
            rc = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *data) >= 0 ? 0 : -1;
            if (rc != 0) fail(err, n, "checkpoint '%s': reading dataset %s failed", path, name);
            else if (!all_finite(*data, cnt))
                rc = fail(err, n, "checkpoint '%s': dataset %s holds non-finite values (NaN or "
                          "Inf)", path, name);
            if (rc != 0) free(*data), *data = NULL;
        }
    }
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    H5Fclose(f);
    return rc;
}

int ckpt_read_param(const char *path, const ParamSpec *s, float *dst, int *ndim, long *dims,
                    char *err, size_t n) {
    CkptInfo info;
    memset(&info, 0, sizeof info);
    hid_t f = open_checked(path, &info, err, n);
    if (f < 0) return -1;
    char name[PARAM_NAME + 16];
    snprintf(name, sizeof name, "/params/%s", s->name);
    int rc;
    if (!exists(f, name)) {
        rc = fail(err, n, "checkpoint '%s' has no dataset %s", path, name);
    } else {
        hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(d);
        hsize_t hd[8] = {0};
        *ndim = H5Sget_simple_extent_ndims(sp);
        if (*ndim >= 0 && *ndim <= 8) H5Sget_simple_extent_dims(sp, hd, NULL);
        int gshape[PARAM_MAXDIM];
        ptable_global_shape(s, gshape);
        int same = *ndim == s->ndim;
        for (int k = 0; k < *ndim && k < 8; k++) {
            dims[k] = (long)hd[k];
            if (same) same = hd[k] == (hsize_t)gshape[k];
        }
        H5Sclose(sp), H5Dclose(d);
        rc = same ? read_tensor(f, path, name, s, dst, NULL, err, n) : 1;
    }
    H5Fclose(f);
    return rc;
}

int ckpt_check(const char *path, char *err, size_t n) {
    CkptInfo info;
    memset(&info, 0, sizeof info);
    hid_t f = open_checked(path, &info, err, n);
    if (f < 0) return -1;
    H5Fclose(f);
    return 0;
}

void ckpt_info_free(CkptInfo *info) {
    free(info->config);
    free(info->pos_all);
    info->config = NULL;
    info->pos_all = NULL;
}

// ---- listing, pruning, inspecting ----

int ckpt_list(const char *workdir, char ***paths, long **steps) {
    *paths = NULL, *steps = NULL;
    DIR *d = opendir(workdir);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long s;
        char tail[8];
        // exactly ckpt-NNNNNNNN.h5; the .tmp files of unfinished writes do not match
        if (strlen(e->d_name) != 16 || sscanf(e->d_name, "ckpt-%8ld.h5%1s", &s, tail) != 1 ||
            strcmp(e->d_name + 13, ".h5") != 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            *paths = realloc(*paths, (size_t)cap * sizeof(char *));
            *steps = realloc(*steps, (size_t)cap * sizeof(long));
            SM_CHECK(*paths && *steps, "out of memory listing checkpoints");
        }
        (*paths)[n] = sm_malloc(strlen(workdir) + 32);
        sprintf((*paths)[n], "%s/%s", workdir, e->d_name);
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++)  // newest first (insertion sort; lists are short)
        for (int j = i; j > 0 && (*steps)[j] > (*steps)[j - 1]; j--) {
            long ts = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1], (*steps)[j - 1] = ts;
            char *tp = (*paths)[j];
            (*paths)[j] = (*paths)[j - 1], (*paths)[j - 1] = tp;
        }
    return n;
}

void ckpt_list_free(char **paths, long *steps, int n) {
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    free(steps);
}

void ckpt_prune(const char *workdir, int keep, int keep_every) {
    char **paths;
    long *steps;
    int n = ckpt_list(workdir, &paths, &steps);
    for (int i = keep; i < n; i++) {
        if (keep_every > 0 && steps[i] % keep_every == 0) continue;
        if (unlink(paths[i]) != 0)
            fprintf(stderr, "softmoe: warning: cannot delete old checkpoint '%s': %s\n", paths[i],
                    strerror(errno));
    }
    ckpt_list_free(paths, steps, n);
}

typedef struct {
    uint64_t total;
    int count;
} Visit;

static herr_t visit(hid_t obj, const char *name, const H5O_info_t *info, void *data) {
    if (info->type != H5O_TYPE_DATASET) return 0;
    Visit *v = data;
    hid_t d = H5Dopen2(obj, name, H5P_DEFAULT);
    if (d < 0) return 0;
    hid_t sp = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[8] = {0};
    if (nd > 0 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
    uint64_t cnt = 1;
    char shape[96] = "(";
    for (int k = 0; k < nd && k < 8; k++) {
        cnt *= dims[k];
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), k ? ",%llu" : "%llu",
                 (unsigned long long)dims[k]);
    }
    strcat(shape, ")");
    printf("  %-64s %-20s %" PRIu64 "\n", name, shape, cnt);
    v->total += cnt, v->count++;
    H5Sclose(sp);
    H5Dclose(d);
    return 0;
}

int ckpt_inspect(const char *path, char *err, size_t n) {
    CkptInfo info = {0};
    hid_t f = open_checked(path, &info, err, n);
    if (f < 0) return -1;
    char *cfg = get_string(f, "/config", 0);
    printf("checkpoint: %s\nformat: %s version %d\nstep: %ld\nworld_size: %d\n", path,
           CKPT_FORMAT, info.version, info.step, info.world_size);
    printf("config:\n%s\n", cfg ? cfg : "(missing)");
    free(cfg);
    printf("params:\n");
    Visit v = {0};
    if (exists(f, "/params")) {
        hid_t g = H5Gopen2(f, "/params", H5P_DEFAULT);
        H5Ovisit(g, H5_INDEX_NAME, H5_ITER_INC, visit, &v);
        H5Gclose(g);
    }
    printf("tensors: %d\nparams: %" PRIu64 "\n", v.count, v.total);
    H5Fclose(f);
    return 0;
}
