// .npz reading and writing (see npz.h). The zip container is libzip's; the
// .npy format inside is small enough to parse here: magic "\x93NUMPY",
// version, a little-endian header length, then a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (a, b), } padded to a
// multiple of 64 bytes, then the raw data.
#include "npz.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zip.h>

#include "../core/common.h"

struct Npz {
    zip_t *zip;
    char path[1024];
};

Npz *npz_open(const char *path, char *err, size_t errlen) {
    int ze = 0;
    zip_t *zip = zip_open(path, ZIP_RDONLY, &ze);
    if (!zip) {
        zip_error_t e;
        zip_error_init_with_code(&e, ze);
        sm_fail(err, errlen, "cannot open '%s' as .npz (zip): %s", path, zip_error_strerror(&e));
        zip_error_fini(&e);
        return NULL;
    }
    Npz *z = sm_calloc(1, sizeof *z);
    z->zip = zip;
    snprintf(z->path, sizeof z->path, "%s", path);
    return z;
}

void npz_close(Npz *z) {
    if (!z) return;
    zip_discard(z->zip);  // opened read-only: nothing to write back
    free(z);
}

int npz_check(const char *path, char *err, size_t errlen) {
    Npz *z = npz_open(path, err, errlen);
    if (!z) return -1;
    zip_int64_t n = zip_get_num_entries(z->zip, 0);
    int found = 0;
    for (zip_int64_t i = 0; i < n && !found; i++) {
        const char *name = zip_get_name(z->zip, (zip_uint64_t)i, 0);
        size_t len = name ? strlen(name) : 0;
        found = len > 4 && !strcmp(name + len - 4, ".npy");
    }
    npz_close(z);
    return found ? 0 : sm_fail(err, errlen, "'%s' holds no .npy arrays", path);
}

// Value text after 'key': in the header dict, or NULL.
static const char *dict_value(const char *h, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s':", key);
    const char *p = strstr(h, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    return p;
}

// Parses an .npy buffer's header: dtype size (4 or 8), shape, data offset.
static int npy_header(const uint8_t *b, size_t len, int *esize, int *ndim, long *dims,
                      size_t *off, const char *what, char *err, size_t errlen) {
    if (len < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
        return sm_fail(err, errlen, "%s is not an .npy array", what);
    size_t hl, start;
    if (b[6] == 1) hl = b[8] | (size_t)b[9] << 8, start = 10;
    else if (len >= 12) hl = b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24, start = 12;
    else return sm_fail(err, errlen, "%s: truncated .npy header", what);
    if (start + hl > len) return sm_fail(err, errlen, "%s: truncated .npy header", what);
    char h[4096];
    if (hl >= sizeof h) return sm_fail(err, errlen, "%s: .npy header too long", what);
    memcpy(h, b + start, hl);
    h[hl] = '\0';
    const char *d = dict_value(h, "descr"), *f = dict_value(h, "fortran_order"),
               *s = dict_value(h, "shape");
    if (!d || !f || !s || *s != '(') return sm_fail(err, errlen, "%s: bad .npy header '%s'", what, h);
    if (!strncmp(d, "'<f4'", 5)) *esize = 4;
    else if (!strncmp(d, "'<f8'", 5)) *esize = 8;
    else return sm_fail(err, errlen, "%s: dtype %.8s is not float32 or float64", what, d);
    if (strncmp(f, "False", 5)) return sm_fail(err, errlen, "%s: Fortran-order arrays are not supported", what);
    *ndim = 0;
    for (const char *p = s + 1; *p && *p != ')';) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) break;
        if (*ndim == 8 || v < 0) return sm_fail(err, errlen, "%s: bad shape in '%s'", what, h);
        dims[(*ndim)++] = v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    *off = start + hl;
    return 0;
}

int npz_read(Npz *z, const char *name, float **data, int *ndim, long *dims, char *err,
             size_t errlen) {
    char member[PARAM_NAME + 16], what[PARAM_NAME + 1100];
    snprintf(member, sizeof member, "%s.npy", name);
    snprintf(what, sizeof what, "'%s' in '%s'", member, z->path);
    zip_stat_t st;
    zip_int64_t idx = zip_name_locate(z->zip, member, 0);
    if (idx < 0) return 1;
    if (zip_stat_index(z->zip, (zip_uint64_t)idx, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
        return sm_fail(err, errlen, "%s: cannot stat: %s", what, zip_strerror(z->zip));
    uint8_t *buf = sm_malloc(st.size ? st.size : 1);
    zip_file_t *f = zip_fopen_index(z->zip, (zip_uint64_t)idx, 0);
    zip_int64_t got = f ? zip_fread(f, buf, st.size) : -1;
    if (f) zip_fclose(f);
    if (got != (zip_int64_t)st.size) {
        free(buf);
        return sm_fail(err, errlen, "%s: read failed: %s", what, zip_strerror(z->zip));
    }
    int esize = 0;
    size_t off = 0, n = 1;
    if (npy_header(buf, st.size, &esize, ndim, dims, &off, what, err, errlen) != 0) {
        free(buf);
        return -1;
    }
    for (int k = 0; k < *ndim; k++) n *= (size_t)dims[k];
    if (off + n * (size_t)esize != st.size) {
        free(buf);
        return sm_fail(err, errlen, "%s: %zu bytes of data for %zu elements of %d bytes", what,
                       (size_t)st.size - off, n, esize);
    }
    float *out = sm_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {  // little-endian data on a little-endian machine
        if (esize == 4) memcpy(&out[i], buf + off + 4 * i, 4);
        else { double v; memcpy(&v, buf + off + 8 * i, 8); out[i] = (float)v; }
    }
    free(buf);
    *data = out;
    return 0;
}

int npz_names(const char *ours, char out[][PARAM_NAME], int max) {
    int n = 0;
    const char *blk = "Encoder/encoderblock_";
    snprintf(out[n++], PARAM_NAME, "%s", ours);
    if (!strcmp(ours, "Encoder/posembed_input/pos_embedding")) {
        snprintf(out[n++], PARAM_NAME, "pos_embedding");
        snprintf(out[n++], PARAM_NAME, "Transformer/posembed_input/pos_embedding");
    } else if (!strncmp(ours, "Encoder/encoder_norm/", 21)) {
        snprintf(out[n++], PARAM_NAME, "Transformer/%s", ours + 8);
    } else if (!strncmp(ours, blk, strlen(blk))) {
        // Encoder/encoderblock_<i>/<module>/<rest>
        const char *after = ours + strlen(blk), *slash = strchr(after, '/');
        if (slash) {
            int i = atoi(after);
            const char *mod = slash + 1, *rest = strchr(mod, '/');
            static const struct { const char *ours, *bv, *old; } M[] = {
                {"LayerNorm_0", "LayerNorm_0", "LayerNorm_0"},
                {"SelfAttention", "MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1"},
                {"LayerNorm_1", "LayerNorm_1", "LayerNorm_2"},
                {"Mlp", "MlpBlock_0", "MlpBlock_3"},
            };
            for (size_t k = 0; rest && k < sizeof M / sizeof *M; k++) {
                if (strncmp(mod, M[k].ours, (size_t)(rest - mod)) || M[k].ours[rest - mod]) continue;
                snprintf(out[n++], PARAM_NAME, "Transformer/encoderblock_%d/%s%s", i, M[k].bv, rest);
                snprintf(out[n++], PARAM_NAME, "Transformer/encoderblock_%d/%s%s", i, M[k].old, rest);
            }
        }
    }
    // big_vision saves its trees with a "params/" prefix in some files
    for (int k = 0, m = n; k < m && n < max; k++) snprintf(out[n++], PARAM_NAME, "params/%s", out[k]);
    return n;
}

static int same_shape(const ParamSpec *s, int nd, const long *dims) {
    int g[PARAM_MAXDIM];
    ptable_global_shape(s, g);
    if (nd != s->ndim) return 0;
    for (int k = 0; k < nd; k++)
        if (dims[k] != g[k]) return 0;
    return 1;
}

int npz_load_params(const char *path, const ParamTable *pt, float *params, int has_cls,
                    NpzAdapt adapt, void *ctx, char *err, size_t errlen) {
    Npz *z = npz_open(path, err, errlen);
    if (!z) return -1;
    for (int i = 0; i < pt->n; i++) {
        const ParamSpec *s = &pt->t[i];
        char names[12][PARAM_NAME];
        int nn = npz_names(s->name, names, 12), nd = 0, rc = 1;
        long dims[8];
        float *src = NULL;
        for (int k = 0; k < nn && rc == 1; k++) rc = npz_read(z, names[k], &src, &nd, dims, err, errlen);
        if (rc == 1) {
            char tried[2048] = "";
            for (int k = 0; k < nn; k++)
                snprintf(tried + strlen(tried), sizeof tried - strlen(tried), "%s%s", k ? ", " : "", names[k]);
            sm_fail(err, errlen, "train.init: '%s' has no array for %s (tried %.1500s)", path,
                    s->name, tried);
        }
        if (rc != 0) { npz_close(z); return -1; }
        if (!strcmp(s->name, "Encoder/posembed_input/pos_embedding") && has_cls && nd == 3) {
            // big_vision's posemb covers the patches only: a zero cls row in front
            long G2 = dims[1];
            double g = 0;
            while ((g + 1) * (g + 1) <= (double)G2) g++;
            if ((long)(g * g) == G2) {
                float *w = sm_calloc((size_t)(G2 + 1) * (size_t)dims[2], sizeof(float));
                memcpy(w + dims[2], src, (size_t)G2 * (size_t)dims[2] * sizeof(float));
                free(src);
                src = w, dims[1] = G2 + 1;
            }
        }
        if (same_shape(s, nd, dims)) {
            size_t per = s->numel / (size_t)(s->n_stack > 0 ? s->n_stack : 1);
            size_t first = ptable_is_expert(s) ? (size_t)s->stack_first * per : 0;
            memcpy(params + s->offset, src + first, s->numel * sizeof(float));
        } else {
            adapt(ctx, s, src, nd, dims, path);
        }
        free(src);
    }
    npz_close(z);
    return 0;
}

// One tensor as .npy bytes (version 1.0 header padded to 64 bytes).
static uint8_t *npy_encode(const ParamSpec *s, const float *data, size_t *len) {
    char h[256], shape[128] = "";
    int g[PARAM_MAXDIM];
    ptable_global_shape(s, g);
    for (int k = 0; k < s->ndim; k++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%d,%s", g[k],
                 k + 1 < s->ndim ? " " : "");
    if (s->ndim > 1) shape[strlen(shape) - 1] = '\0';  // "(2, 3)"; one dimension keeps "(5,)"
    int hl = snprintf(h, sizeof h, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", shape);
    int pad = 64 - (10 + hl + 1) % 64;
    if (pad == 64) pad = 0;
    size_t n = ptable_global_numel(s), total = 10 + (size_t)hl + (size_t)pad + 1 + 4 * n;
    uint8_t *b = sm_malloc(total);
    memcpy(b, "\x93NUMPY\x01\x00", 8);
    size_t H = (size_t)hl + (size_t)pad + 1;
    b[8] = (uint8_t)(H & 0xff), b[9] = (uint8_t)(H >> 8);
    memcpy(b + 10, h, (size_t)hl);
    memset(b + 10 + hl, ' ', (size_t)pad);
    b[10 + hl + pad] = '\n';
    memcpy(b + 10 + H, data, 4 * n);
    *len = total;
    return b;
}

int npz_write_params(const char *path, const ParamTable *pt, const float *params, char *err,
                     size_t errlen) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int ze = 0;
    zip_t *zip = zip_open(tmp, ZIP_CREATE | ZIP_TRUNCATE, &ze);
    if (!zip) return sm_fail(err, errlen, "cannot create '%s' (zip error %d)", tmp, ze);
    for (int i = 0; i < pt->n; i++) {
        const ParamSpec *s = &pt->t[i];
        size_t len;
        uint8_t *b = npy_encode(s, params + s->offset, &len);
        char member[PARAM_NAME + 8];
        snprintf(member, sizeof member, "%s.npy", s->name);
        zip_source_t *src = zip_source_buffer(zip, b, len, 1);  // libzip frees b
        if (!src) { free(b); goto fail; }
        zip_int64_t idx = zip_file_add(zip, member, src, ZIP_FL_ENC_UTF_8);
        if (idx < 0) { zip_source_free(src); goto fail; }
        // stored, as numpy.savez writes: the weights do not compress
        if (zip_set_file_compression(zip, (zip_uint64_t)idx, ZIP_CM_STORE, 0) != 0) goto fail;
    }
    if (zip_close(zip) != 0) {
        sm_fail(err, errlen, "writing '%s' failed: %s", tmp, zip_strerror(zip));
        zip_discard(zip);
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return sm_fail(err, errlen, "cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
    }
    return 0;
fail:
    sm_fail(err, errlen, "writing '%s' failed: %s", tmp, zip_strerror(zip));
    zip_discard(zip);
    unlink(tmp);
    return -1;
}
