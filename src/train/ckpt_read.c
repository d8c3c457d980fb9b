// Reading HDF5 checkpoints (see ckpt.h): load, read one tensor, check,
// list, prune, inspect. Every failure is one message naming the file and
// the dataset.
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/common.h"
#include "ckpt_h5.h"

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
        return want ? sm_fail(err, n, "checkpoint '%s': dataset %s lost its crc32 attribute", path,
                           name) : 0;
    int total = ckpt_pieces_total(s), local = ckpt_pieces_local(s), first = ckpt_piece_first(s);
    hid_t a = H5Aopen(d, "crc32", H5P_DEFAULT);
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    hssize_t cnt = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    uint32_t *crc = sm_calloc((size_t)total, sizeof *crc);
    int rc = cnt == total && H5Aread(a, H5T_NATIVE_UINT32, crc) >= 0 ? 0 : -1;
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    if (rc != 0) {
        free(crc);
        return sm_fail(err, n, "checkpoint '%s': dataset %s has an unreadable crc32 attribute", path,
                    name);
    }
    size_t len = s->numel / (size_t)local;
    for (int p = 0; p < local && rc == 0; p++)
        if ((want ? want[p] : ckpt_crc_floats(data + (size_t)p * len, len)) != crc[first + p]) rc = -1;
    free(crc);
    return rc ? sm_fail(err, n, "checkpoint '%s': dataset %s does not match its checksum (corrupt "
                     "file)", path, name) : 0;
}

// want: see check_crcs (NULL when loading; then the values must be finite).
int ckpt_read_tensor(hid_t f, const char *path, const char *name, const ParamSpec *s,
                       float *dst, const uint32_t *want, char *err, size_t n) {
    if (!exists(f, name)) return sm_fail(err, n, "checkpoint '%s' has no dataset %s", path, name);
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
            rc = sm_fail(err, n, "checkpoint '%s': reading dataset %s failed (truncated file?)", path,
                      name);
        if (msp != H5S_ALL) H5Sclose(msp);
        if (rc == 0) rc = check_crcs(d, path, name, s, dst, want, err, n);
        if (rc == 0 && !want && !ckpt_all_finite(dst, s->numel))
            rc = sm_fail(err, n, "checkpoint '%s': dataset %s holds non-finite values (NaN or Inf)",
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
    ckpt_quiet_hdf5();
    if (access(path, R_OK) != 0) {
        snprintf(err, n, "checkpoint '%s' cannot be read: %s", path, strerror(errno));
        return -1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        sm_fail(err, n, "checkpoint '%s' is not an HDF5 file (or is truncated)%s", path, "");
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        sm_fail(err, n, "checkpoint '%s' cannot be opened as HDF5 (truncated or corrupt)%s", path, "");
        return -1;
    }
    char *fmt = get_string(f, "format", 1);
    int64_t step = 0;
    int bad = !fmt || strcmp(fmt, CKPT_FORMAT) != 0;
    free(fmt);
    if (bad || get_attr(f, "version", H5T_NATIVE_INT, &info->version) != 0 ||
        get_attr(f, "step", H5T_NATIVE_INT64, &step) != 0 ||
        get_attr(f, "world_size", H5T_NATIVE_INT, &info->world_size) != 0) {
        sm_fail(err, n, "checkpoint '%s' is not a softmoe checkpoint (root attributes format, "
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
    if (!info->config) rc = sm_fail(err, n, "checkpoint '%s' has no dataset /config%s", path, "");
    uint64_t *ep = NULL, *tk = NULL;
    const int nep = info->world_size;
    if (rc == 0 && (read_u64_array(f, "/state/loader_epoch", info->world_size, &ep) != 0 ||
                    read_u64_array(f, "/state/loader_taken", info->world_size, &tk) != 0 ||
                    read_u64(f, "/state/skipped", &info->skipped) != 0))
        rc = sm_fail(err, n, "checkpoint '%s' lacks /state/loader_epoch, loader_taken or skipped "
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
            rc = ckpt_read_tensor(f, path, name, &pt->t[i], blocks[g] + pt->t[i].offset, NULL, err, n);
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
        sm_fail(err, n, "checkpoint '%s' has no dataset %s", path, name);
    } else if (*ndim < 0 || *ndim > 8) {
        sm_fail(err, n, "checkpoint '%s': dataset %s has an unreadable shape", path, name);
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
            if (rc != 0) sm_fail(err, n, "checkpoint '%s': reading dataset %s failed", path, name);
            else if (!ckpt_all_finite(*data, cnt))
                rc = sm_fail(err, n, "checkpoint '%s': dataset %s holds non-finite values (NaN or "
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
        rc = sm_fail(err, n, "checkpoint '%s' has no dataset %s", path, name);
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
        rc = same ? ckpt_read_tensor(f, path, name, s, dst, NULL, err, n) : 1;
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

// Exactly ckpt-NNNNNNNN.h5 (the step in *step); the .tmp files of unfinished
// writes do not match.
static int ckpt_name_step(const char *name, long *step) {
    char tail[8];
    return strlen(name) == 16 && sscanf(name, "ckpt-%8ld.h5%1s", step, tail) == 1 &&
           strcmp(name + 13, ".h5") == 0;
}

static int is_ckpt(const struct dirent *e) {
    long s;
    return ckpt_name_step(e->d_name, &s);
}

static int newest_first(const struct dirent **a, const struct dirent **b) {
    long sa = 0, sb = 0;
    ckpt_name_step((*a)->d_name, &sa), ckpt_name_step((*b)->d_name, &sb);
    return (sa < sb) - (sa > sb);
}

int ckpt_list(const char *workdir, char ***paths, long **steps) {
    *paths = NULL, *steps = NULL;
    struct dirent **es;
    int n = scandir(workdir, &es, is_ckpt, newest_first);
    if (n <= 0) {
        if (n == 0) free(es);
        return 0;  // no checkpoints, or no workdir yet
    }
    *paths = sm_malloc((size_t)n * sizeof(char *));
    *steps = sm_malloc((size_t)n * sizeof(long));
    for (int i = 0; i < n; i++) {
        (*paths)[i] = sm_malloc(strlen(workdir) + 32);
        sprintf((*paths)[i], "%s/%s", workdir, es[i]->d_name);
        ckpt_name_step(es[i]->d_name, &(*steps)[i]);
        free(es[i]);
    }
    free(es);
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
