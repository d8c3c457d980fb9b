// Shard lists and shard reading: brace-pattern expansion, and a sequential
// WebDataset sample reader over libarchive (plain tar, .tar.gz, .tar.zst, any
// filter libarchive knows). The writers live in shards_write.c.
#include "shards.h"

#include "../core/common.h"

#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

// ---- brace patterns -------------------------------------------------------

// No real dataset has a million shards; a bigger range is a typo such as
// {0..99999999} and would otherwise allocate gigabytes of names.
#define EXPAND_MAX 1000000ULL

typedef struct {
    char **v;
    int n, cap;
} PathList;

static void list_push(PathList *l, char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        char **v = realloc(l->v, (size_t)l->cap * sizeof *v);
        if (!v) sm_die("out of memory expanding shard patterns (%d names)", l->cap);
        l->v = v;
    }
    l->v[l->n++] = s;
}

static int pattern_error(const char *pat, size_t len, const char *why, char *err, size_t errlen) {
    snprintf(err, errlen, "shard pattern '%.*s': %s", (int)len, pat, why);
    return -1;
}

// A bound is 1..18 decimal digits, so it always fits unsigned long long.
static int parse_bound(const char *s, size_t len, unsigned long long *v) {
    if (len == 0 || len > 18) return -1;
    *v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i])) return -1;
        *v = *v * 10 + (unsigned long long)(s[i] - '0');
    }
    return 0;
}

static char *dup_range(const char *s, size_t len) {
    char *p = sm_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

// Expands one pattern (no commas) with at most one {lo..hi} range.
static int expand_one(const char *pat, size_t len, PathList *l, char *err, size_t errlen) {
    const char *open = memchr(pat, '{', len), *close = memchr(pat, '}', len);
    if (!open && !close) {
        list_push(l, dup_range(pat, len));
        return 0;
    }
    if (!open || !close || close < open)
        return pattern_error(pat, len, "unbalanced braces", err, errlen);
    const char *rest = close + 1;
    size_t restlen = (size_t)(pat + len - rest);
    if (memchr(open + 1, '{', (size_t)(close - open - 1)) || memchr(rest, '{', restlen) ||
        memchr(rest, '}', restlen))
        return pattern_error(pat, len, "only one {lo..hi} range per pattern (no nesting)", err,
                             errlen);
    const char *dots = memmem(open + 1, (size_t)(close - open - 1), "..", 2);
    unsigned long long lo, hi;
    if (!dots || parse_bound(open + 1, (size_t)(dots - open - 1), &lo) ||
        parse_bound(dots + 2, (size_t)(close - dots - 2), &hi))
        return pattern_error(pat, len, "the range must be {lo..hi} with decimal digits, "
                             "e.g. {000000..004095}", err, errlen);
    if (lo > hi) return pattern_error(pat, len, "range start is greater than its end", err, errlen);
    if (hi - lo >= EXPAND_MAX)
        return pattern_error(pat, len, "range has more than a million entries", err, errlen);
    // The first bound's width is the padding: {000..010} -> 000, 001, ..., 010.
    int width = (int)(dots - open - 1);
    size_t headlen = (size_t)(open - pat), cap = headlen + restlen + 24;
    for (unsigned long long v = lo; v <= hi; v++) {
        char *p = sm_malloc(cap);
        snprintf(p, cap, "%.*s%0*llu%.*s", (int)headlen, pat, width, v, (int)restlen, rest);
        list_push(l, p);
    }
    return 0;
}

int shards_expand(const char *patterns, char ***paths, int *n, char *err, size_t errlen) {
    PathList l = {0};
    *paths = NULL;
    *n = 0;
    if (!patterns) patterns = "";
    const char *s = patterns;
    for (;;) {
        const char *comma = strchr(s, ',');
        const char *end = comma ? comma : s + strlen(s);
        while (s < end && isspace((unsigned char)*s)) s++;  // "a.tar, b.tar" is fine
        const char *e = end;
        while (e > s && isspace((unsigned char)e[-1])) e--;
        int rc = -1;
        if (e == s) snprintf(err, errlen, "shard list '%s': empty entry", patterns);
        else rc = expand_one(s, (size_t)(e - s), &l, err, errlen);
        if (rc != 0) {
            shards_free_list(l.v, l.n);
            return -1;
        }
        if (!comma) break;
        s = comma + 1;
    }
    *paths = l.v;
    *n = l.n;
    return 0;
}

void shards_free_list(char **paths, int n) {
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

// ---- labels -----------------------------------------------------------------

int shards_parse_labels(const char *txt, size_t len, int *labels, int max) {
    size_t i = 0;
    int n = 0;
    for (;;) {
        while (i < len && isspace((unsigned char)txt[i])) i++;
        if (i == len || !isdigit((unsigned char)txt[i])) return -1;
        long long v = 0;
        while (i < len && isdigit((unsigned char)txt[i])) {
            v = v * 10 + (txt[i++] - '0');
            if (v > INT_MAX) return -1;
        }
        if (n == max) return -1;
        labels[n++] = (int)v;
        while (i < len && isspace((unsigned char)txt[i])) i++;
        if (i == len) return n;
        if (txt[i++] != ',') return -1;
    }
}

// ---- reader -----------------------------------------------------------------

#define MEMBER_PATH_MAX 4096

typedef struct {
    unsigned char *p;
    size_t len, cap;
} Buf;

typedef enum { RD_OK, RD_EOF, RD_BROKEN } ReadState;

struct ShardReader {
    struct archive *a;
    char *path;
    ReadState state;
    char msg[1024];                  // why the shard broke, repeated on later calls
    char last_key[MEMBER_PATH_MAX];  // key of the last member header read
    // The member whose header was read last; its data is still unread when
    // `pending` is set (it starts the next sample).
    int pending;
    char ent_path[MEMBER_PATH_MAX];
    size_t ent_keylen;
    const char *ent_ext;             // points into ent_path, "" without a dot
    int64_t ent_size;                // -1 when the header has no size
    // The sample being assembled.
    int in_sample;
    char key[MEMBER_PATH_MAX];
    Buf img, cls, cls2;
    int has_img, has_cls, img_big, cls_big, ambiguous, damaged;
    uint64_t index;
    struct GzSource *gz;             // set when the shard is gzip: decompressed by zlib here
};

// libarchive's codes are not ordered by severity (RETRY -10 sits above WARN
// -20), so "usable" is spelled out: OK, or WARN (data still valid).
static int la_ok(int rc) {
    return rc == ARCHIVE_OK || rc == ARCHIVE_WARN;
}

static const char *la_msg(struct archive *a) {
    const char *m = archive_error_string(a);
    return m ? m : "unknown libarchive error";
}

static void buf_reserve(Buf *b, size_t need) {
    if (need <= b->cap) return;
    unsigned char *p = realloc(b->p, need);
    if (!p) sm_die("out of memory reading a shard member (%zu bytes)", need);
    b->p = p;
    b->cap = need;
}

// Marks the shard broken. in_data says whether the failure came while
// reading a member's data (so last_key is the sample cut short) or while
// looking for the next header (so last_key is the last sample seen).
static int broken(ShardReader *r, int in_data, const char *why) {
    r->state = RD_BROKEN;
    if (!r->last_key[0])
        snprintf(r->msg, sizeof r->msg, "shard '%s' is truncated or corrupt before its first "
                 "member: %s", r->path, why);
    else
        snprintf(r->msg, sizeof r->msg, "shard '%s' is truncated or corrupt %s key '%.300s' (the "
                 "samples before it were returned): %s", r->path, in_data ? "in" : "after",
                 r->last_key, why);
    return -1;
}

// ---- gzip through zlib ------------------------------------------------------
//
// libarchive's gzip filter decompresses into 64 KiB blocks and, when the
// stream ends early, fails the whole block: a truncated small .tar.gz then
// cannot even be opened and every sample in it is lost. Here the
// decompressed bytes are handed to libarchive as soon as zlib produces them,
// and the truncation is reported only after them, so the tar reader sees the
// complete leading members and then the damage.

typedef struct GzSource {
    FILE *f;
    z_stream z;
    int done, failed;
    char why[160];
    unsigned char in[1 << 16], out[1 << 16];
} GzSource;

// Refills the input; 0 at the end of the file (why set on a read error).
static size_t gz_fill(GzSource *g) {
    size_t n = fread(g->in, 1, sizeof g->in, g->f);
    if (n == 0 && ferror(g->f)) {
        snprintf(g->why, sizeof g->why, "read error: %s", strerror(errno));
        g->failed = 1;
    }
    g->z.next_in = g->in;
    g->z.avail_in = (uInt)n;
    return n;
}

static la_ssize_t gz_read(struct archive *a, void *client, const void **buf) {
    GzSource *g = client;
    *buf = g->out;
    g->z.next_out = g->out;
    g->z.avail_out = sizeof g->out;
    while (!g->done && !g->failed && g->z.avail_out == sizeof g->out) {
        if (g->z.avail_in == 0 && gz_fill(g) == 0) {
            if (!g->failed)
                snprintf(g->why, sizeof g->why, "truncated gzip data (the file ends inside the stream)");
            g->failed = 1;
            break;
        }
        int zr = inflate(&g->z, Z_NO_FLUSH);
        if (zr == Z_STREAM_END) {
            // Another gzip member may follow (concatenated files); anything else
            // after the end is ignored, as gzip -d does.
            if (g->z.avail_in == 0) gz_fill(g);
            if (g->z.avail_in == 0 || g->z.next_in[0] != 0x1f) g->done = 1;
            else if (inflateReset(&g->z) != Z_OK) g->failed = 1;
        } else if (zr != Z_OK && !(zr == Z_BUF_ERROR && g->z.avail_in == 0)) {
            snprintf(g->why, sizeof g->why, "corrupt gzip data: %s", g->z.msg ? g->z.msg : "inflate failed");
            g->failed = 1;
        }
    }
    size_t got = sizeof g->out - g->z.avail_out;
    if (got > 0 || !g->failed) return (la_ssize_t)got;
    archive_set_error(a, EIO, "%s", g->why);
    return ARCHIVE_FATAL;
}

// Opens path as gzip when it starts with gzip's magic bytes: 1 = *out set,
// 0 = not gzip (or cannot be read: libarchive reports that), -1 = zlib failed.
static int gz_open(const char *path, GzSource **out) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char magic[2];
    if (fread(magic, 1, 2, f) != 2 || magic[0] != 0x1f || magic[1] != 0x8b || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);  // read-only
        return 0;
    }
    GzSource *g = sm_calloc(1, sizeof *g);
    g->f = f;
    if (inflateInit2(&g->z, 15 + 16) != Z_OK) {  // 15 + 16: a gzip wrapper, not zlib's
        fclose(f);
        free(g);
        return -1;
    }
    *out = g;
    return 1;
}

static void gz_free(GzSource *g) {
    if (!g) return;
    inflateEnd(&g->z);
    fclose(g->f);  // read-only
    free(g);
}

ShardReader *shard_open(const char *path, char *err, size_t errlen) {
    struct archive *a = archive_read_new();
    if (!a) sm_die("out of memory creating a libarchive reader for '%s'", path);
    GzSource *gz;
    if (gz_open(path, &gz) < 0) sm_die("zlib cannot start a gzip stream for '%s'", path);
    // ARCHIVE_WARN here means a filter would run an external program: usable.
    if (!la_ok(archive_read_support_filter_all(a)) || !la_ok(archive_read_support_format_tar(a)) ||
        !la_ok(gz ? archive_read_open(a, gz, NULL, gz_read, NULL)
                  : archive_read_open_filename(a, path, 1 << 16))) {
        snprintf(err, errlen, "cannot open shard '%s': %s", path, la_msg(a));
        archive_read_free(a);  // its status adds nothing to the error above
        gz_free(gz);
        return NULL;
    }
    ShardReader *r = sm_calloc(1, sizeof *r);
    r->a = a;
    r->gz = gz;
    r->path = dup_range(path, strlen(path));
    return r;
}

void shard_close(ShardReader *r) {
    if (!r) return;
    // Every byte we used was already checked; a close error cannot change that.
    archive_read_free(r->a);
    gz_free(r->gz);
    free(r->img.p);
    free(r->cls.p);
    free(r->cls2.p);
    free(r->path);
    free(r);
}

// Reads headers up to the next regular file. 1 = got one (ent_* set),
// 0 = clean end of the archive, -1 = broken.
static int next_member(ShardReader *r) {
    for (;;) {
        struct archive_entry *e;
        int rc = archive_read_next_header(r->a, &e);
        if (rc == ARCHIVE_EOF) return 0;
        // RETRY means a damaged header; resyncing could glue unrelated
        // members into one sample, so it counts as corrupt like FATAL.
        if (!la_ok(rc)) return broken(r, 0, la_msg(r->a));
        if (archive_entry_filetype(e) != AE_IFREG) continue;  // dirs, links: not sample members
        const char *p = archive_entry_pathname(e);
        if (!p) return broken(r, 0, "a member name cannot be decoded");
        size_t len = strlen(p);
        if (len >= MEMBER_PATH_MAX) return broken(r, 0, "a member name is longer than 4095 bytes");
        memcpy(r->ent_path, p, len + 1);
        // WebDataset's key: the path up to the first dot of the basename.
        const char *base = strrchr(r->ent_path, '/');
        const char *dot = strchr(base ? base + 1 : r->ent_path, '.');
        r->ent_keylen = dot ? (size_t)(dot - r->ent_path) : len;
        r->ent_ext = dot ? dot + 1 : "";
        r->ent_size = archive_entry_size_is_set(e) ? archive_entry_size(e) : -1;
        memcpy(r->last_key, r->ent_path, r->ent_keylen);
        r->last_key[r->ent_keylen] = '\0';
        return 1;
    }
}

static int skip_data(ShardReader *r) {
    return la_ok(archive_read_data_skip(r->a)) ? 0 : broken(r, 1, la_msg(r->a));
}

// Reads the current member's data into b. 0 = read, 1 = larger than
// SHARD_MAX_MEMBER (rest skipped, b empty), -1 = broken.
static int read_data(ShardReader *r, Buf *b) {
    b->len = 0;
    if (r->ent_size > (int64_t)SHARD_MAX_MEMBER) return skip_data(r) < 0 ? -1 : 1;
    // One spare byte lets the final read return 0 without growing the buffer.
    buf_reserve(b, r->ent_size >= 0 ? (size_t)r->ent_size + 1 : (size_t)1 << 16);
    int warns = 0;
    for (;;) {
        if (b->len == b->cap) {
            size_t want = b->cap * 2;
            buf_reserve(b, want < SHARD_MAX_MEMBER + 1 ? want : SHARD_MAX_MEMBER + 1);
        }
        la_ssize_t got = archive_read_data(r->a, b->p + b->len, b->cap - b->len);
        if (got == 0) return 0;
        if (got > 0) {
            b->len += (size_t)got;
            if (b->len <= SHARD_MAX_MEMBER) continue;
            b->len = 0;
            return skip_data(r) < 0 ? -1 : 1;
        }
        // WARN is recoverable for libarchive; the bound keeps a reader that
        // warns forever without progress from spinning.
        if (got == ARCHIVE_WARN && ++warns < 64) continue;
        return broken(r, 1, la_msg(r->a));
    }
}

static int is_image_ext(const char *ext) {
    return !strcasecmp(ext, "jpg") || !strcasecmp(ext, "jpeg") || !strcasecmp(ext, "png");
}

// Labels of a .cls buffer: their count, or -1 when unparsable or too big.
static int cls_labels(const Buf *b, int big, int *labels) {
    return big ? -1 : shards_parse_labels((const char *)b->p, b->len, labels, SHARD_MAX_LABELS);
}

// Adds the current member to the sample: the first image and the first .cls
// are kept; a further .cls must give the same labels, or the sample is
// ambiguous; everything else is skipped.
static int take_member(ShardReader *r) {
    int rc;
    if (!r->has_img && is_image_ext(r->ent_ext)) {
        if ((rc = read_data(r, &r->img)) < 0) return -1;
        r->has_img = 1;
        r->img_big = rc == 1;
    } else if (!strcasecmp(r->ent_ext, "cls")) {
        Buf *b = r->has_cls ? &r->cls2 : &r->cls;
        if ((rc = read_data(r, b)) < 0) return -1;
        if (!r->has_cls) {
            r->has_cls = 1;
            r->cls_big = rc == 1;
            return 0;
        }
        int l1[SHARD_MAX_LABELS], l2[SHARD_MAX_LABELS];
        int n1 = cls_labels(&r->cls, r->cls_big, l1), n2 = cls_labels(b, rc == 1, l2);
        if (n1 != n2 || (n1 > 0 && memcmp(l1, l2, (size_t)n1 * sizeof *l1)))
            r->ambiguous = 1;
    } else if (skip_data(r) < 0) {
        return -1;
    }
    return 0;
}

static int emit(ShardReader *r, ShardSample *s) {
    memset(s, 0, sizeof *s);
    // Keys longer than SHARD_KEY-1 are cut in the sample (they are for logs);
    // sample boundaries were decided on the full key.
    size_t klen = strlen(r->key);
    if (klen >= SHARD_KEY) klen = SHARD_KEY - 1;
    memcpy(s->key, r->key, klen);
    s->key[klen] = '\0';
    if (r->has_img && !r->img_big) {
        s->img = r->img.p;
        s->img_len = r->img.len;
    }
    s->too_big = r->img_big;
    if (r->has_cls && !r->ambiguous) {
        int n = cls_labels(&r->cls, r->cls_big, s->labels);
        s->bad_label = n < 0;
        s->nlabels = n < 0 ? 0 : n;
    }
    s->ambiguous = r->ambiguous;
    if (r->damaged) {  // a member was cut short: nothing of it is trustworthy
        s->img = NULL;
        s->img_len = 0;
        s->nlabels = 0;
        s->damaged = 1;
    }
    s->index = r->index++;
    r->in_sample = 0;
    return 1;
}

static void start_sample(ShardReader *r) {
    memcpy(r->key, r->ent_path, r->ent_keylen);
    r->key[r->ent_keylen] = '\0';
    r->in_sample = 1;
    r->has_img = r->has_cls = r->img_big = r->cls_big = r->ambiguous = r->damaged = 0;
}

static int same_key(const ShardReader *r) {
    return strlen(r->key) == r->ent_keylen && !memcmp(r->key, r->ent_path, r->ent_keylen);
}

int shard_next(ShardReader *r, ShardSample *s, char *err, size_t errlen) {
    for (;;) {
        if (r->state == RD_BROKEN) {
            snprintf(err, errlen, "%s", r->msg);
            return -1;
        }
        if (r->state == RD_EOF) return r->in_sample ? emit(r, s) : 0;
        if (!r->pending) {
            int rc = next_member(r);
            // A damaged header: the sample read so far had all its members'
            // data; it goes out (the caller judges it), then the error.
            if (rc < 0) {
                if (r->in_sample) return emit(r, s);
                continue;
            }
            if (rc == 0) {
                r->state = RD_EOF;
                continue;
            }
            r->pending = 1;
        }
        // A new key ends the sample; the member waits for the next call.
        if (r->in_sample && !same_key(r)) return emit(r, s);
        if (!r->in_sample) start_sample(r);
        r->pending = 0;
        if (take_member(r) < 0) {  // damage inside a member: this sample is counted as damaged
            r->damaged = 1;
            return emit(r, s);
        }
    }
}
