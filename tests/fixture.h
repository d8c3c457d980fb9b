// Reader for the PyTorch reference fixtures tests/data/ref_*.bin, written by
// scripts/make_reference.py (format described there and in tests/data/README.md).
// Header-only so each test executable just includes it; tests are built with
// -Isrc. The whole file is read into memory and parsed from the buffer, so
// every length can be checked against what is actually there before anything
// is allocated: a truncated or corrupt fixture stops the test with the file
// and record named, never with a crash or a silent short read.
#pragma once
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

#define FIX_MAXDIM 8
#define FIX_MAGIC "SMREF01\n"

enum { FIX_F32 = 1, FIX_TEXT = 2 };

typedef struct {
    char *name;                  // e.g. "grads/head/kernel"
    int kind;                    // FIX_F32 | FIX_TEXT
    int ndim;                    // 0 for a scalar
    uint64_t dims[FIX_MAXDIM];
    size_t numel;                // F32: prod(dims) (1 for a scalar); TEXT: bytes
    float *data;                 // F32 only, numel floats, row-major
    char *text;                  // TEXT only, numel bytes plus a NUL
} FixTensor;

typedef struct {
    char *path;
    int n;
    FixTensor *t;                // records in file order
} Fixture;

// Little-endian decode independent of the host's byte order.
static inline uint64_t fix_le_(const unsigned char *p, int nbytes) {
    uint64_t v = 0;
    for (int i = nbytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

// Cursor over the file buffer; every take names the record it serves.
typedef struct {
    const char *path;
    const unsigned char *buf;
    size_t len, pos;
    int rec;                     // index of the record being parsed
    const char *name;            // its name once known, else "?"
} FixCursor_;

static inline const unsigned char *fix_take_(FixCursor_ *c, uint64_t n, const char *what) {
    if (n > c->len - c->pos)
        sm_die("fixture '%s': record %d ('%s') truncated reading %s: needs %llu bytes at "
               "offset %zu, file has %zu; regenerate with scripts/make_reference.py",
               c->path, c->rec, c->name, what, (unsigned long long)n, c->pos, c->len);
    const unsigned char *p = c->buf + c->pos;
    c->pos += (size_t)n;
    return p;
}

static inline Fixture *fixture_load(const char *path) {
    // The float payloads are copied byte for byte, which is only right on a
    // little-endian host (every machine this project targets).
    const uint32_t one = 1;
    SM_CHECK(*(const unsigned char *)&one == 1, "fixture '%s': big-endian host not supported", path);

    FILE *f = sm_fopen(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) sm_die("fixture '%s': cannot seek", path);
    long flen = ftell(f);
    if (flen < 0 || fseek(f, 0, SEEK_SET) != 0) sm_die("fixture '%s': cannot get its size", path);
    unsigned char *buf = sm_malloc((size_t)flen);
    sm_fread(buf, 1, (size_t)flen, f, path);
    sm_fclose(f, path);

    FixCursor_ c = {path, buf, (size_t)flen, 0, -1, "header"};
    if (memcmp(fix_take_(&c, 8, "magic"), FIX_MAGIC, 8) != 0)
        sm_die("fixture '%s': bad magic (not an SMREF01 fixture)", path);

    Fixture *fx = sm_calloc(1, sizeof *fx);
    fx->path = sm_malloc(strlen(path) + 1);
    memcpy(fx->path, path, strlen(path) + 1);
    int cap = 0;
    while (c.pos < c.len) {
        c.rec = fx->n;
        c.name = "?";
        if (fx->n == cap) {
            cap = cap ? 2 * cap : 64;
            fx->t = realloc(fx->t, (size_t)cap * sizeof *fx->t);
            SM_CHECK(fx->t, "out of memory reading fixture '%s'", path);
        }
        FixTensor *t = &fx->t[fx->n];
        memset(t, 0, sizeof *t);

        const unsigned char *kind = fix_take_(&c, 4, "kind");
        if (memcmp(kind, "F32 ", 4) == 0) t->kind = FIX_F32;
        else if (memcmp(kind, "TEXT", 4) == 0) t->kind = FIX_TEXT;
        else sm_die("fixture '%s': record %d: unknown kind '%.4s' at offset %zu",
                    path, c.rec, (const char *)kind, c.pos - 4);

        uint64_t nlen = fix_le_(fix_take_(&c, 4, "name length"), 4);
        if (nlen == 0) sm_die("fixture '%s': record %d has an empty name", path, c.rec);
        const unsigned char *nm = fix_take_(&c, nlen, "name");
        if (memchr(nm, 0, (size_t)nlen))
            sm_die("fixture '%s': record %d: NUL byte inside the name", path, c.rec);
        t->name = sm_malloc((size_t)nlen + 1);
        memcpy(t->name, nm, (size_t)nlen);
        t->name[nlen] = 0;
        c.name = t->name;
        // Counted before the duplicate check so fixture_free releases this name too.
        fx->n++;
        for (int i = 0; i + 1 < fx->n; i++)
            if (strcmp(fx->t[i].name, t->name) == 0)
                sm_die("fixture '%s': record %d ('%s') repeats the name of record %d",
                       path, c.rec, t->name, i);

        uint64_t ndim = fix_le_(fix_take_(&c, 4, "ndim"), 4);
        if (ndim > FIX_MAXDIM || (t->kind == FIX_TEXT && ndim != 1))
            sm_die("fixture '%s': record %d ('%s'): ndim %llu is invalid for a %s record",
                   path, c.rec, t->name, (unsigned long long)ndim,
                   t->kind == FIX_TEXT ? "TEXT" : "F32");
        t->ndim = (int)ndim;
        // The element count is bounded by the bytes left in the file at every
        // step, so the product cannot overflow and no allocation can be absurd.
        uint64_t numel = 1, left = c.len - c.pos;
        for (int d = 0; d < t->ndim; d++) {
            t->dims[d] = fix_le_(fix_take_(&c, 8, "dims"), 8);
            if (t->dims[d] != 0 && numel > left / t->dims[d])
                sm_die("fixture '%s': record %d ('%s'): dims exceed the file size", path,
                       c.rec, t->name);
            numel *= t->dims[d];
        }
        t->numel = (size_t)numel;
        if (t->kind == FIX_F32) {
            const unsigned char *p = fix_take_(&c, 4 * numel, "float data");
            t->data = sm_malloc(4 * t->numel);
            memcpy(t->data, p, 4 * t->numel);
        } else {
            const unsigned char *p = fix_take_(&c, numel, "text");
            t->text = sm_malloc(t->numel + 1);
            memcpy(t->text, p, t->numel);
            t->text[t->numel] = 0;
        }
    }
    free(buf);
    return fx;
}

// The record with this exact name, or NULL.
static inline const FixTensor *fixture_get(const Fixture *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}

// Like fixture_get, but a missing record (or one of the wrong kind) is fatal,
// naming the file: a test must not pass because it compared nothing.
static inline const FixTensor *fixture_need(const Fixture *f, const char *name, int kind) {
    const FixTensor *t = fixture_get(f, name);
    if (!t) sm_die("fixture '%s': no record '%s'", f->path, name);
    if (t->kind != kind)
        sm_die("fixture '%s': record '%s' is %s, expected %s", f->path, name,
               t->kind == FIX_F32 ? "F32" : "TEXT", kind == FIX_F32 ? "F32" : "TEXT");
    return t;
}

static inline void fixture_free(Fixture *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) {
        free(f->t[i].name);
        free(f->t[i].data);
        free(f->t[i].text);
    }
    free(f->t);
    free(f->path);
    free(f);
}
