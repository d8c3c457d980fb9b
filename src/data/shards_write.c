// The `softmoe shards` writers: Fashion-MNIST idx files (encoded as PNG) and
// image folders (bytes copied) to WebDataset shards, uncompressed ustar with
// members KEY.png|jpg|jpeg and KEY.cls, keys "%07ld" increasing over shards.
#include "shards.h"

#include "../core/common.h"
#include "../core/rng.h"
#include "classes.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <png.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define WPATH_MAX 4096


// ---- shard writer ---------------------------------------------------------

typedef struct {
    const char *prefix;
    int per_shard;
    struct archive *a;  // the open shard, NULL between shards
    char tmp[WPATH_MAX], final[WPATH_MAX];
    int in_shard;       // samples in the open shard
    int shard;          // number of the next shard to open
    long n;             // samples written = the next key
    char *err;
    size_t errlen;
} ShardWriter;

static int writer_init(ShardWriter *w, const char *prefix, int per_shard, char *err,
                       size_t errlen) {
    memset(w, 0, sizeof *w);
    w->prefix = prefix;
    w->per_shard = per_shard;
    w->err = err;
    w->errlen = errlen;
    if (per_shard <= 0)
        return sm_fail(err, errlen, "samples per shard must be positive, got %d", per_shard);
    if (!prefix[0] || strlen(prefix) + 16 >= WPATH_MAX)
        return sm_fail(err, errlen, "bad shard prefix '%s'", prefix);
    // The CLI's usual prefix is out/<name>/train; create out/<name>. sm_mkdirs
    // exits naming the directory, which is all the CLI could do anyway.
    char dir[WPATH_MAX];
    snprintf(dir, sizeof dir, "%s", prefix);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        sm_mkdirs(dir);
    }
    return 0;
}

static int la_fail(ShardWriter *w, const char *what) {
    const char *m = w->a ? archive_error_string(w->a) : NULL;
    snprintf(w->err, w->errlen, "writing shard '%s' (%s): %s", w->final, what,
             m ? m : "libarchive error");
    return -1;
}

// Shards are written as NAME.tmp and renamed when complete, so a crash never
// leaves a file that looks like a finished shard.
static int shard_begin(ShardWriter *w) {
    if (snprintf(w->final, sizeof w->final, "%s-%06d.tar", w->prefix, w->shard) >=
            (int)sizeof w->final - 4 ||
        snprintf(w->tmp, sizeof w->tmp, "%s.tmp", w->final) >= (int)sizeof w->tmp)
        return sm_fail(w->err, w->errlen, "shard prefix '%s' is too long", w->prefix);
    w->a = archive_write_new();
    if (!w->a) sm_die("out of memory creating a libarchive writer for '%s'", w->final);
    if (archive_write_set_format_ustar(w->a) != ARCHIVE_OK) return la_fail(w, "ustar format");
    if (archive_write_open_filename(w->a, w->tmp) != ARCHIVE_OK) return la_fail(w, w->tmp);
    w->in_shard = 0;
    return 0;
}

static int put_member(ShardWriter *w, const char *name, const void *data, size_t len) {
    struct archive_entry *e = archive_entry_new();
    if (!e) sm_die("out of memory creating a tar entry");
    archive_entry_set_pathname(e, name);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, (la_int64_t)len);
    // mtime stays 0 so the same input always gives byte-identical shards.
    int rc = archive_write_header(w->a, e);
    archive_entry_free(e);
    // WARN is about metadata (e.g. an unmappable name); ustar wrote the entry.
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) return la_fail(w, name);
    if (len && archive_write_data(w->a, data, len) != (la_ssize_t)len) return la_fail(w, name);
    return 0;
}

static int shard_end(ShardWriter *w) {
    if (archive_write_close(w->a) != ARCHIVE_OK) return la_fail(w, "close");
    int rc = archive_write_free(w->a);
    w->a = NULL;
    if (rc != ARCHIVE_OK) rc = la_fail(w, "free");
    else if (rename(w->tmp, w->final) != 0)
        rc = sm_fail(w->err, w->errlen, "cannot rename '%s' to its final name: %s", w->tmp,
                  strerror(errno));
    if (rc != 0) {
        unlink(w->tmp);  // best effort; the error above is the one to act on
        return -1;
    }
    w->shard++;
    return 0;
}

// Drops the shard being written, leaving no .tmp behind.
static void writer_abort(ShardWriter *w) {
    if (!w->a) return;
    archive_write_free(w->a);  // already failing; the first error is the one reported
    w->a = NULL;
    unlink(w->tmp);
}

// Adds one sample: KEY.<ext> with the image bytes and KEY.cls with the label.
static int writer_add(ShardWriter *w, const char *ext, const void *img, size_t len, int label) {
    if (!w->a && shard_begin(w) != 0) return -1;
    char name[64], cls[16];
    snprintf(name, sizeof name, "%07ld.%s", w->n, ext);
    int clen = snprintf(cls, sizeof cls, "%d", label);
    if (put_member(w, name, img, len) != 0) return -1;
    snprintf(name, sizeof name, "%07ld.cls", w->n);
    if (put_member(w, name, cls, (size_t)clen) != 0) return -1;
    w->n++;
    if (++w->in_shard == w->per_shard) return shard_end(w);
    return 0;
}

static long writer_finish(ShardWriter *w) {
    if (w->a && shard_end(w) != 0) return -1;
    return w->n;
}

// Public wrapper over the writer for other modules (shards_synth.c).
struct ShardWriterPublic {
    ShardWriter w;
};

ShardWriterPublic *shard_writer_open(const char *prefix, int per_shard, char *err, size_t errlen) {
    ShardWriterPublic *p = sm_calloc(1, sizeof *p);
    if (writer_init(&p->w, prefix, per_shard, err, errlen) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

int shard_writer_add(ShardWriterPublic *p, const char *ext, const void *img, size_t len,
                     int label, char *err, size_t errlen) {
    (void)err, (void)errlen;  // writer_add reports through the writer's own err
    return writer_add(&p->w, ext, img, len, label);
}

long shard_writer_close(ShardWriterPublic *p, int ok, char *err, size_t errlen) {
    long n = -1;
    if (ok) n = writer_finish(&p->w);
    else writer_abort(&p->w);
    (void)err, (void)errlen;
    free(p);
    return n;
}

// ---- Fashion-MNIST idx ------------------------------------------------------

typedef struct {
    gzFile f;
    char path[WPATH_MAX];
} Idx;

// Opens dir/<split>-<kind>, preferring the .gz Debian ships. zlib reads plain
// files transparently, so one code path serves both.
static int idx_open(Idx *x, const char *dir, const char *split, const char *kind, char *err,
                    size_t errlen) {
    snprintf(x->path, sizeof x->path, "%s/%s-%s.gz", dir, split, kind);
    if (access(x->path, F_OK) != 0) x->path[strlen(x->path) - 3] = '\0';
    errno = 0;
    x->f = gzopen(x->path, "rb");
    if (!x->f)
        return sm_fail(err, errlen, "cannot open '%s' (nor its .gz): %s", x->path,
                    errno ? strerror(errno) : "out of memory");
    return 0;
}

static int idx_read(Idx *x, void *p, unsigned n, char *err, size_t errlen) {
    int got = gzread(x->f, p, n);
    if (got == (int)n) return 0;
    int zerr;
    const char *m = gzerror(x->f, &zerr);
    if (got < 0) return sm_fail(err, errlen, "reading '%s' failed: %s", x->path, m);
    return sm_fail(err, errlen, "'%s' is truncated: fewer items than its header says", x->path);
}

// Reads the big-endian header: magic, then ndim sizes.
static int idx_header(Idx *x, uint32_t magic, uint32_t *dims, int ndim, char *err,
                      size_t errlen) {
    unsigned char h[16];
    if (idx_read(x, h, 4u * (unsigned)(ndim + 1), err, errlen) != 0) return -1;
    uint32_t v[4];
    for (int i = 0; i <= ndim; i++)
        v[i] = (uint32_t)h[4 * i] << 24 | (uint32_t)h[4 * i + 1] << 16 |
               (uint32_t)h[4 * i + 2] << 8 | h[4 * i + 3];
    if (v[0] != magic)
        return sm_fail(err, errlen, "'%s' is not the expected idx file (magic number %u, not %u)",
                    x->path, v[0], magic);
    memcpy(dims, v + 1, (size_t)ndim * sizeof *dims);
    return 0;
}

// With check set (all items read fine), sizes must be consistent: nothing may
// follow the last item. Without it we are already failing and only close.
static int idx_close(Idx *x, int check, char *err, size_t errlen) {
    unsigned char extra;
    int rc = 0;
    if (check && gzread(x->f, &extra, 1) != 0)
        rc = sm_fail(err, errlen, "'%s' has data after the items its header counts", x->path);
    // gzclose reports a gzip stream cut short even when every byte we asked for came.
    if (gzclose(x->f) != Z_OK && check && rc == 0)
        rc = sm_fail(err, errlen, "'%s' is corrupt or truncated (gzip error at close)", x->path);
    x->f = NULL;
    return rc;
}

// Encodes an 8-bit grayscale image into out (cap >= PNG_IMAGE_PNG_SIZE_MAX).
static int png_gray(const unsigned char *px, uint32_t w, uint32_t h, unsigned char *out,
                    png_alloc_size_t *len, const char *src, char *err, size_t errlen) {
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    im.width = w;
    im.height = h;
    im.format = PNG_FORMAT_GRAY;
    if (png_image_write_to_memory(&im, out, len, 0, px, (png_int_32)w, NULL)) return 0;
    sm_fail(err, errlen, "PNG encoding of an image of '%s' failed: %s", src, im.message);
    png_image_free(&im);
    return -1;
}

// Opens and checks both files; dims = {n, rows, cols}.
static int idx_pair_open(Idx *im, Idx *lb, const char *dir, const char *split, uint32_t *dims,
                         char *err, size_t errlen) {
    uint32_t nl = 0;
    if (idx_open(im, dir, split, "images-idx3-ubyte", err, errlen) != 0) return -1;
    if (idx_open(lb, dir, split, "labels-idx1-ubyte", err, errlen) != 0) return -1;
    if (idx_header(im, 2051, dims, 3, err, errlen) != 0) return -1;
    if (idx_header(lb, 2049, &nl, 1, err, errlen) != 0) return -1;
    if (nl != dims[0])
        return sm_fail(err, errlen, "'%s' and '%s' count different numbers of items", im->path,
                    lb->path);
    // Real idx images are small; the bound keeps rows*cols far from overflow.
    if (dims[0] == 0 || dims[1] == 0 || dims[2] == 0 || dims[1] > 4096 || dims[2] > 4096)
        return sm_fail(err, errlen, "'%s' has an empty or implausible shape %ux%ux%u", im->path,
                    dims[0], dims[1], dims[2]);
    return 0;
}

static int idx_convert(Idx *im, Idx *lb, const uint32_t *dims, ShardWriter *w) {
    png_image probe;
    memset(&probe, 0, sizeof probe);
    probe.width = dims[2];
    probe.height = dims[1];
    probe.format = PNG_FORMAT_GRAY;
    size_t cap = PNG_IMAGE_PNG_SIZE_MAX(probe), npx = (size_t)dims[1] * dims[2];
    unsigned char *px = sm_malloc(npx), *png = sm_malloc(cap);
    int rc = 0;
    for (uint32_t i = 0; i < dims[0] && rc == 0; i++) {
        unsigned char label;
        png_alloc_size_t len = cap;
        rc = idx_read(im, px, (unsigned)npx, w->err, w->errlen);
        if (rc == 0) rc = idx_read(lb, &label, 1, w->err, w->errlen);
        if (rc == 0) rc = png_gray(px, dims[2], dims[1], png, &len, im->path, w->err, w->errlen);
        if (rc == 0) rc = writer_add(w, "png", png, len, label);
    }
    free(px);
    free(png);
    return rc;
}

long shards_write_idx(const char *dir, const char *split, const char *prefix, int per_shard,
                      char *err, size_t errlen) {
    Idx im = {0}, lb = {0};
    uint32_t dims[3] = {0};
    ShardWriter w = {0};
    int rc = idx_pair_open(&im, &lb, dir, split, dims, err, errlen);
    if (rc == 0) rc = writer_init(&w, prefix, per_shard, err, errlen);
    if (rc == 0) rc = idx_convert(&im, &lb, dims, &w);
    if (im.f && idx_close(&im, rc == 0, err, errlen) != 0) rc = -1;
    if (lb.f && idx_close(&lb, rc == 0, err, errlen) != 0) rc = -1;
    if (rc == 0 && writer_finish(&w) < 0) rc = -1;
    if (rc != 0) {
        writer_abort(&w);
        return -1;
    }
    return w.n;
}

// ---- image folders ------------------------------------------------------------

typedef struct {
    char **v;
    int n, cap;
} Names;

static void names_free(Names *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_dir_entry(const char *dir, const char *name, int want_dirs) {
    char p[WPATH_MAX];
    struct stat st;
    // Too long to stat: keep it, so the caller reports the path instead of
    // silently dropping it.
    if (snprintf(p, sizeof p, "%s/%s", dir, name) >= (int)sizeof p) return 1;
    // stat, not d_type: some filesystems report DT_UNKNOWN, and links count.
    if (stat(p, &st) != 0) return 0;
    return want_dirs ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode);
}

// Sorted names of the subdirectories (want_dirs) or regular files of dir;
// hidden entries are skipped.
static int list_dir(const char *dir, int want_dirs, Names *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    DIR *d = opendir(dir);
    if (!d) return sm_fail(err, errlen, "cannot list '%s': %s", dir, strerror(errno));
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) break;
        if (de->d_name[0] == '.' || !is_dir_entry(dir, de->d_name, want_dirs)) continue;
        if (out->n == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 64;
            char **v = realloc(out->v, (size_t)out->cap * sizeof *v);
            if (!v) sm_die("out of memory listing '%s'", dir);
            out->v = v;
        }
        out->v[out->n++] = strdup(de->d_name);
        if (!out->v[out->n - 1]) sm_die("out of memory listing '%s'", dir);
    }
    int rerr = errno;
    if (closedir(d) != 0 && !rerr) rerr = errno;
    if (rerr) {
        names_free(out);
        return sm_fail(err, errlen, "cannot list '%s': %s", dir, strerror(rerr));
    }
    if (out->n) qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_names);  // v is NULL when empty
    return 0;
}

// The image extension lowercased, or NULL for files that are not images.
static const char *image_ext(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return NULL;
    static const char *const exts[] = {"jpg", "jpeg", "png"};
    for (int i = 0; i < 3; i++)
        if (!strcasecmp(dot + 1, exts[i])) return exts[i];
    return NULL;
}

// Reads a whole file into *buf (grown to *cap as needed); sets *len. Files
// over SHARD_MAX_MEMBER are not read (len is set, buf untouched).
static int read_file(const char *path, unsigned char **buf, size_t *cap, size_t *len, char *err,
                     size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return sm_fail(err, errlen, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        sm_fail(err, errlen, "cannot stat '%s': %s", path, strerror(errno));
        fclose(f);  // read-only; the stat error is the one to report
        return -1;
    }
    *len = (size_t)st.st_size;
    if (*len > SHARD_MAX_MEMBER) {
        fclose(f);  // opened read-only, nothing was read
        return 0;
    }
    if (*len > *cap) {
        unsigned char *p = realloc(*buf, *len);
        if (!p) sm_die("out of memory reading '%s' (%zu bytes)", path, *len);
        *buf = p;
        *cap = *len;
    }
    errno = 0;
    size_t got = fread(*buf, 1, *len, f);
    int e = errno;
    if (fclose(f) != 0 && got == *len) got = 0, e = errno;
    if (got != *len)
        return sm_fail(err, errlen, "reading '%s' failed: %s", path,
                    e ? strerror(e) : "the file shrank while being read");
    return 0;
}

// One image of a folder to be written: its path and class.
typedef struct { char *path; int label; } FolderItem;
typedef struct { FolderItem *v; size_t n, cap; } FolderItems;

// Lists the images of one class directory with the given label.
static int folder_class(FolderItems *it, const char *dir, int label, char *err, size_t errlen) {
    Names files;
    if (list_dir(dir, 0, &files, err, errlen) != 0) return -1;
    int rc = 0;
    for (int i = 0; i < files.n && rc == 0; i++) {
        char path[WPATH_MAX];
        if (!image_ext(files.v[i])) continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, files.v[i]) >= (int)sizeof path) {
            rc = sm_fail(err, errlen, "path '%s/%s' is too long", dir, files.v[i]);
            break;
        }
        if (it->n == it->cap) {
            it->cap = it->cap ? 2 * it->cap : 1024;
            it->v = realloc(it->v, it->cap * sizeof *it->v);
            if (!it->v) sm_die("out of memory listing '%s'", dir);
        }
        it->v[it->n].path = strdup(path);
        if (!it->v[it->n].path) sm_die("out of memory listing '%s'", dir);
        it->v[it->n++].label = label;
    }
    names_free(&files);
    return rc;
}

// Writes classes.txt (the sorted class names, line i = label i) beside the
// shards: in the directory of prefix.
static int write_classes(const char *prefix, const Names *classes, char *err, size_t errlen) {
    char path[WPATH_MAX];
    const char *slash = strrchr(prefix, '/');
    if (slash) snprintf(path, sizeof path, "%.*s/classes.txt", (int)(slash - prefix), prefix);
    else snprintf(path, sizeof path, "classes.txt");
    return classes_write(path, classes->v, classes->n, err, errlen);
}

long shards_write_folder(const char *root, const char *prefix, int per_shard, uint64_t seed,
                         char *err, size_t errlen) {
    ShardWriter w;
    Names classes;
    if (writer_init(&w, prefix, per_shard, err, errlen) != 0) return -1;
    if (list_dir(root, 1, &classes, err, errlen) != 0) return -1;
    FolderItems it = {0};
    int rc = classes.n ? 0 : sm_fail(err, errlen, "'%s' has no class directories", root);
    for (int c = 0; c < classes.n && rc == 0; c++) {
        char dir[WPATH_MAX];
        if (snprintf(dir, sizeof dir, "%s/%s", root, classes.v[c]) >= (int)sizeof dir)
            rc = sm_fail(err, errlen, "path '%s/%s' is too long", root, classes.v[c]);
        if (rc == 0) rc = folder_class(&it, dir, c, err, errlen);
    }
    // Shards in class order would give every shard one or two classes, and a
    // shuffle buffer smaller than a class would train on one class at a
    // time: the samples are permuted (seeded) across all shards.
    Rng r;
    rng_seed(&r, seed, 0x5ad5);
    for (size_t i = it.n; i > 1; i--) {
        size_t j = rng_below(&r, (uint32_t)i);
        FolderItem t = it.v[i - 1];
        it.v[i - 1] = it.v[j], it.v[j] = t;
    }
    unsigned char *buf = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < it.n && rc == 0; i++) {
        size_t len = 0;
        const char *path = it.v[i].path;
        rc = read_file(path, &buf, &cap, &len, err, errlen);
        if (rc == 0 && len > SHARD_MAX_MEMBER) {
            // The reader would drop it as corrupt; say so now instead.
            fprintf(stderr, "softmoe: warning: skipping '%s': larger than 64 MiB\n", path);
            continue;
        }
        if (rc == 0) rc = writer_add(&w, image_ext(path), buf, len, it.v[i].label);
    }
    for (size_t i = 0; i < it.n; i++) free(it.v[i].path);
    free(it.v);
    free(buf);
    long n = rc == 0 ? writer_finish(&w) : -1;
    if (n < 0) writer_abort(&w);
    if (n > 0 && write_classes(prefix, &classes, err, errlen) != 0) n = -1;
    names_free(&classes);
    if (n == 0) return sm_fail(err, errlen, "no .jpg/.jpeg/.png images under '%s'", root);
    return n;
}
