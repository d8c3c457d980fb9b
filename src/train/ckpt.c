// HDF5 checkpoints (see ckpt.h). HDF5's own error printing is switched off;
// every failure becomes one message naming the file and the dataset.
#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/common.h"

static void quiet_hdf5(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static int fail(char *err, size_t n, const char *fmt, const char *a, const char *b) {
    snprintf(err, n, fmt, a, b);
    return -1;
}

// ---- writing ----

static int put_attr(hid_t f, const char *name, hid_t type, const void *v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    int ok = a >= 0 && H5Awrite(a, type, v) >= 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return ok ? 0 : -1;
}

static int put_str(hid_t f, hid_t lcpl, const char *name, const char *s, int as_attr) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(s) ? strlen(s) : 1);
    int rc;
    if (as_attr) {
        rc = put_attr(f, name, t, s);
    } else {
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t d = H5Dcreate2(f, name, t, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
        rc = d >= 0 && H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) >= 0 ? 0 : -1;
        if (d >= 0) H5Dclose(d);
        H5Sclose(sp);
    }
    H5Tclose(t);
    return rc;
}

static int put_array(hid_t f, hid_t lcpl, const char *name, hid_t ftype, hid_t mtype, int ndim,
                     const hsize_t *dims, const void *data) {
    hid_t sp = ndim ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t d = H5Dcreate2(f, name, ftype, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = d >= 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0 ? 0 : -1;
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return rc;
}

// Writes the block's part of one tensor: all of it, or for a stacked expert
// tensor the hyperslab of this rank's experts inside the whole (E, ...)
// dataset. create: the dataset does not exist yet.
static int put_tensor(hid_t f, hid_t lcpl, const char *name, const ParamSpec *s,
                      const float *data, int create) {
    hsize_t dims[PARAM_MAXDIM], local[PARAM_MAXDIM], start[PARAM_MAXDIM] = {0};
    int gshape[PARAM_MAXDIM];
    ptable_global_shape(s, gshape);
    for (int k = 0; k < s->ndim; k++) dims[k] = (hsize_t)gshape[k], local[k] = (hsize_t)s->shape[k];
    start[0] = ptable_is_expert(s) ? (hsize_t)s->stack_first : 0;
    hid_t fsp = s->ndim ? H5Screate_simple(s->ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t d = create ? H5Dcreate2(f, name, H5T_IEEE_F32LE, fsp, lcpl, H5P_DEFAULT, H5P_DEFAULT)
                     : H5Dopen2(f, name, H5P_DEFAULT);
    int rc = d >= 0 ? 0 : -1;
    if (rc == 0 && ptable_is_expert(s)) {
        hid_t msp = H5Screate_simple(s->ndim, local, NULL);
        rc = H5Sselect_hyperslab(fsp, H5S_SELECT_SET, start, NULL, local, NULL) >= 0 &&
                     H5Dwrite(d, H5T_NATIVE_FLOAT, msp, fsp, H5P_DEFAULT, data) >= 0
                 ? 0 : -1;
        H5Sclose(msp);
    } else if (rc == 0) {
        rc = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0 ? 0 : -1;
    }
    if (d >= 0) H5Dclose(d);
    H5Sclose(fsp);
    return rc;
}

// The tensors of one group (/params, /opt/m, /opt/v); experts_only: only the
// expert slices, into datasets rank 0 created.
static int put_tensors(hid_t f, hid_t lcpl, const char *group, const ParamTable *pt,
                       const float *block, int experts_only, char *err, size_t n,
                       const char *path) {
    char name[PARAM_NAME + 16];
    for (int i = 0; i < pt->n; i++) {
        const ParamSpec *s = &pt->t[i];
        if (experts_only && !ptable_is_expert(s)) continue;
        snprintf(name, sizeof name, "%s/%s", group, s->name);
        if (put_tensor(f, lcpl, name, s, block + s->offset, !experts_only) != 0)
            return fail(err, n, "checkpoint '%s': writing dataset %s failed", path, name);
    }
    return 0;
}

static int put_groups(hid_t f, hid_t lcpl, const CkptOut *c, int experts_only, char *err,
                      size_t n, const char *tmp) {
    int rc = put_tensors(f, lcpl, "/params", c->pt, c->params, experts_only, err, n, tmp);
    if (rc == 0 && c->m) rc = put_tensors(f, lcpl, "/opt/m", c->pt, c->m, experts_only, err, n, tmp);
    if (rc == 0 && c->v) rc = put_tensors(f, lcpl, "/opt/v", c->pt, c->v, experts_only, err, n, tmp);
    return rc;
}

static int fsync_path(const char *path);

static int close_file(hid_t f, int rc, char *err, size_t n, const char *tmp) {
    if (rc == 0 && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0)
        rc = fail(err, n, "checkpoint '%s': flush failed%s", tmp, "");
    if (H5Fclose(f) < 0 && rc == 0) rc = fail(err, n, "checkpoint '%s': close failed%s", tmp, "");
    return rc;
}

int ckpt_write_new(const char *tmp, const CkptOut *c, char *err, size_t n) {
    quiet_hdf5();
    err[0] = '\0';
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return fail(err, n, "cannot create checkpoint '%s'%s", tmp, "");
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    int version = CKPT_VERSION, world = c->world_size < 1 ? 1 : c->world_size;
    int64_t step = c->step;
    uint64_t sk = c->skipped, *ep = sm_malloc((size_t)world * 2 * sizeof(uint64_t)), *tk = ep + world;
    for (int r = 0; r < world; r++) {
        LoaderPos p = c->pos_all ? c->pos_all[r] : c->pos;
        ep[r] = p.epoch, tk[r] = p.taken;
    }
    hsize_t nw = (hsize_t)world;
    int rc = put_str(f, lcpl, "format", CKPT_FORMAT, 1) | put_attr(f, "version", H5T_NATIVE_INT, &version) |
             put_attr(f, "step", H5T_NATIVE_INT64, &step) |
             put_attr(f, "world_size", H5T_NATIVE_INT, &world) |
             put_str(f, lcpl, "/config", c->config, 0) |
             put_array(f, lcpl, "/state/loader_epoch", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, &nw, ep) |
             put_array(f, lcpl, "/state/loader_taken", H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, &nw, tk) |
             put_array(f, lcpl, "/state/skipped", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, NULL, &sk);
    free(ep);
    if (rc != 0) fail(err, n, "checkpoint '%s': writing attributes/config/state failed%s", tmp, "");
    if (rc == 0) rc = put_groups(f, lcpl, c, 0, err, n, tmp);
    H5Pclose(lcpl);
    return close_file(f, rc, err, n, tmp);
}

int ckpt_write_experts(const char *tmp, const CkptOut *c, char *err, size_t n) {
    quiet_hdf5();
    err[0] = '\0';
    hid_t f = H5Fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return fail(err, n, "cannot open checkpoint '%s' to add this rank's experts%s", tmp, "");
    int rc = close_file(f, put_groups(f, H5P_DEFAULT, c, 1, err, n, tmp), err, n, tmp);
    // Durable before the next rank goes on: rank 0's fsync may not reach
    // what another node wrote.
    if (rc == 0 && fsync_path(tmp) != 0)
        rc = fail(err, n, "checkpoint '%s': fsync failed: %s", tmp, strerror(errno));
    return rc;
}

static int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

void ckpt_paths(const char *workdir, long step, char *final, char *tmp, size_t n) {
    snprintf(final, n, "%s/ckpt-%08ld.h5", workdir, step);
    snprintf(tmp, n, "%s/ckpt-%08ld.h5.tmp", workdir, step);
}

int ckpt_commit(const char *workdir, const char *tmp, const char *final, long step, char *err,
                size_t n) {
    if (fsync_path(tmp) != 0) {
        snprintf(err, n, "checkpoint '%s': fsync failed: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    // Test hook: die between the complete write and the rename, as a crash would.
    const char *crash = getenv("SOFTMOE_CRASH_BEFORE_RENAME");
    if (crash && atol(crash) == step) _exit(3);
    if (rename(tmp, final) != 0) {
        snprintf(err, n, "checkpoint: renaming '%s' to '%s' failed: %s", tmp, final, strerror(errno));
        unlink(tmp);
        return -1;
    }
    fsync_path(workdir);  // make the rename itself durable
    return 0;
}

int ckpt_save(const char *workdir, const CkptOut *c, char *err, size_t n) {
    char final[4096], tmp[4096];
    ckpt_paths(workdir, c->step, final, tmp, sizeof final);
    if (ckpt_write_new(tmp, c, err, n) != 0) {
        unlink(tmp);
        return -1;
    }
    return ckpt_commit(workdir, tmp, final, c->step, err, n);
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
    if (H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t)) {
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

static int read_tensor(hid_t f, const char *path, const char *name, const ParamSpec *s,
                       float *dst, char *err, size_t n) {
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
    }
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return rc;
}

// A 1-D u64 dataset of any length: *v malloc'd, *len its length.
static int read_u64_array(hid_t f, const char *name, uint64_t **v, int *len) {
    *v = NULL;
    if (!exists(f, name)) return -1;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(d);
    hsize_t dims[1] = {0};
    int rc = H5Sget_simple_extent_ndims(sp) == 1 ? 0 : -1;
    if (rc == 0) {
        H5Sget_simple_extent_dims(sp, dims, NULL);
        *len = (int)dims[0];
        *v = sm_malloc((dims[0] ? dims[0] : 1) * sizeof(uint64_t));
        rc = dims[0] > 0 && H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, *v) >= 0
                 ? 0 : -1;
    }
    H5Sclose(sp), H5Dclose(d);
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
    int nep = 0, ntk = 0;
    if (rc == 0 && (read_u64_array(f, "/state/loader_epoch", &ep, &nep) != 0 ||
                    read_u64_array(f, "/state/loader_taken", &tk, &ntk) != 0 || nep != ntk ||
                    nep != info->world_size ||
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
            rc = read_tensor(f, path, name, &pt->t[i], blocks[g] + pt->t[i].offset, err, n);
        }
    }
    H5Fclose(f);
    if (rc != 0) ckpt_info_free(info);
    return rc;
}

int ckpt_read_any(const char *path, const char *name, float **data, int *ndim, long *dims,
                  char *err, size_t n) {
    CkptInfo info;
    memset(&info, 0, sizeof info);
    *data = NULL;
    hid_t f = open_checked(path, &info, err, n);
    if (f < 0) return -1;
    int rc = -1;
    if (!exists(f, name)) {
        fail(err, n, "checkpoint '%s' has no dataset %s", path, name);
    } else {
        hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(d);
        hsize_t hd[8] = {0};
        *ndim = H5Sget_simple_extent_ndims(sp);
        if (*ndim >= 0 && *ndim <= 8) {
            H5Sget_simple_extent_dims(sp, hd, NULL);
            size_t cnt = 1;
            for (int k = 0; k < *ndim; k++) dims[k] = (long)hd[k], cnt *= hd[k];
            *data = sm_malloc(cnt * sizeof(float));
            rc = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, *data) >= 0 ? 0 : -1;
        }
        if (rc != 0) {
            free(*data), *data = NULL;
            fail(err, n, "checkpoint '%s': reading dataset %s failed", path, name);
        }
        H5Sclose(sp), H5Dclose(d);
    }
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
        rc = same ? read_tensor(f, path, name, s, dst, err, n) : 1;
    }
    H5Fclose(f);
    return rc;
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
