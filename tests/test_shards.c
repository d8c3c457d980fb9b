// Tests for src/data/shards.c and shards_write.c: brace patterns, .cls
// parsing, reading tar / .tar.gz / .tar.zst shards built here with
// libarchive's writer, truncated and corrupt shards, the idx and folder
// writers read back (PNG pixels decoded with libpng), and the real
// Fashion-MNIST test split when the Debian package is installed.
#include "core/common.h"
#include "data/shards.h"
#include "testutil.h"

#include <archive.h>
#include <archive_entry.h>
#include <ftw.h>
#include <png.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char dir[64];
static char err[2048];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/test_shards.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    err[0] = '\0';
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_dir(void) {
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

// dir/name in one of a few rotating static buffers.
static const char *tpath(const char *name) {
    static char paths[8][512];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

#define ASSERT_HAS(msg, part) \
    ck_assert_msg(strstr((msg), (part)) != NULL, "message '%s' lacks '%s'", (msg), (part))

// ---- building shards --------------------------------------------------------

typedef struct {
    const char *name;
    const void *data;
    long len;  // -1: strlen(data); ignored for directories
    int is_dir;
} Mem;

#define FILE_MEM(n, d) {(n), (d), -1, 0}
#define BIN_MEM(n, d, l) {(n), (d), (l), 0}
#define DIR_MEM(n) {(n), NULL, 0, 1}

static size_t mem_len(const Mem *m) {
    return m->is_dir ? 0 : m->len < 0 ? strlen(m->data) : (size_t)m->len;
}

// Writes a tar with the given filter (NULL, "gzip" or "zstd"). Returns -1 only
// when this libarchive cannot write that filter.
static int write_tar(const char *path, const char *filter, const Mem *m, int n) {
    struct archive *a = archive_write_new();
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    int frc = ARCHIVE_OK;
    if (filter && !strcmp(filter, "gzip")) frc = archive_write_add_filter_gzip(a);
    if (filter && !strcmp(filter, "zstd")) frc = archive_write_add_filter_zstd(a);
    if (frc != ARCHIVE_OK || archive_write_open_filename(a, path) != ARCHIVE_OK) {
        printf("note: libarchive cannot write %s here: %s\n", filter ? filter : "tar",
               archive_error_string(a));
        archive_write_free(a);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, m[i].name);
        archive_entry_set_filetype(e, m[i].is_dir ? AE_IFDIR : AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, (la_int64_t)mem_len(&m[i]));
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        if (mem_len(&m[i]))
            ck_assert_int_eq(archive_write_data(a, m[i].data, mem_len(&m[i])),
                             (la_ssize_t)mem_len(&m[i]));
        archive_entry_free(e);
    }
    ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
    ck_assert_int_eq(archive_write_free(a), ARCHIVE_OK);
    return 0;
}

// Distinct binary contents (with NUL bytes) per seed.
static unsigned char *make_bytes(unsigned seed, size_t n) {
    unsigned char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (unsigned char)(x >> 24);
    }
    p[0] = (unsigned char)seed;
    return p;
}

// ---- reading shards back ------------------------------------------------------

typedef struct {
    ShardSample s;
    unsigned char *img;  // a copy: s.img is only valid until the next call
} Got;

// Reads a whole shard; returns the final shard_next status (0 or -1).
static int read_all(const char *path, Got *got, int max, int *n) {
    ShardReader *r = shard_open(path, err, sizeof err);
    ck_assert_msg(r != NULL, "%s", err);
    int rc;
    *n = 0;
    while ((rc = shard_next(r, &got[*n].s, err, sizeof err)) == 1) {
        Got *g = &got[*n];
        ck_assert_int_lt(*n, max);
        g->img = NULL;
        if (g->s.img) {
            g->img = malloc(g->s.img_len + 1);
            memcpy(g->img, g->s.img, g->s.img_len);
        }
        ck_assert_int_eq(g->s.index, (uint64_t)*n);
        (*n)++;
    }
    // The end is sticky: asking again gives the same answer.
    ShardSample again;
    ck_assert_int_eq(shard_next(r, &again, err, sizeof err), rc);
    shard_close(r);
    return rc;
}

static void free_got(Got *got, int n) {
    for (int i = 0; i < n; i++) free(got[i].img);
}

static void assert_img(const Got *g, const void *want, size_t len) {
    ck_assert_msg(g->img != NULL, "sample '%s' has no image", g->s.key);
    ck_assert_uint_eq(g->s.img_len, len);
    ck_assert_msg(memcmp(g->img, want, len) == 0, "sample '%s': image bytes differ", g->s.key);
}

static void assert_labels(const Got *g, int n, const int *want) {
    ck_assert_msg(g->s.nlabels == n, "sample '%s': %d labels, want %d", g->s.key,
                  g->s.nlabels, n);
    for (int i = 0; i < n; i++) ck_assert_int_eq(g->s.labels[i], want[i]);
    ck_assert_int_eq(g->s.bad_label, 0);
}

// ---- brace patterns and labels ---------------------------------------------------

static void expect_paths(const char *pat, int n, const char *const *want) {
    char **p;
    int got;
    ck_assert_msg(shards_expand(pat, &p, &got, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(got, n);
    for (int i = 0; i < n; i++) ck_assert_str_eq(p[i], want[i]);
    shards_free_list(p, got);
}

static void expect_pattern_error(const char *pat, const char *part) {
    char **p = (char **)1;
    int n = 7;
    ck_assert_msg(shards_expand(pat, &p, &n, err, sizeof err) == -1, "'%s' was accepted", pat);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(n, 0);
    ASSERT_HAS(err, part);
}

START_TEST(test_expand) {
    expect_paths("train-{000000..000003}.tar", 4,
                 (const char *const[]){"train-000000.tar", "train-000001.tar", "train-000002.tar",
                                       "train-000003.tar"});
    expect_paths("a-{8..11}.tar", 4, (const char *const[]){"a-8.tar", "a-9.tar", "a-10.tar",
                                                           "a-11.tar"});
    expect_paths("x.tar, y-{09..10}.tar ,/d/z.tar.gz", 4,
                 (const char *const[]){"x.tar", "y-09.tar", "y-10.tar", "/d/z.tar.gz"});
    expect_paths("{7..7}", 1, (const char *const[]){"7"});
    expect_paths("s/{0998..1001}", 4, (const char *const[]){"s/0998", "s/0999", "s/1000",
                                                            "s/1001"});
    expect_paths("/data/shard.tar", 1, (const char *const[]){"/data/shard.tar"});

    expect_pattern_error("a-{3..1}.tar", "a-{3..1}.tar");
    ASSERT_HAS(err, "greater");
    expect_pattern_error("ok.tar,a-{1..x}.tar", "a-{1..x}.tar");
    expect_pattern_error("a-{{1..2}}.tar", "a-{{1..2}}.tar");
    expect_pattern_error("a-{1..2}-{3..4}.tar", "only one");
    expect_pattern_error("a-{1..2.tar", "unbalanced");
    expect_pattern_error("a-1..2}.tar", "unbalanced");
    expect_pattern_error("a-{-1..2}", "a-{-1..2}");
    expect_pattern_error("a-{1...3}", "a-{1...3}");
    expect_pattern_error("a-{5}", "a-{5}");
    expect_pattern_error("a-{..}", "a-{..}");
    expect_pattern_error("a.tar,,b.tar", "empty entry");
    expect_pattern_error("a.tar, ", "empty entry");
    expect_pattern_error("", "empty entry");
    expect_pattern_error("x{0..99999999}", "million");
}
END_TEST

START_TEST(test_parse_labels) {
    int l[SHARD_MAX_LABELS + 1];
    ck_assert_int_eq(shards_parse_labels("3", 1, l, 64), 1);
    ck_assert_int_eq(l[0], 3);
    const char *multi = " 1 ,5,\t7 \r\n";
    ck_assert_int_eq(shards_parse_labels(multi, strlen(multi), l, 64), 3);
    ck_assert_int_eq(l[0], 1);
    ck_assert_int_eq(l[1], 5);
    ck_assert_int_eq(l[2], 7);
    ck_assert_int_eq(shards_parse_labels("2147483647", 10, l, 64), 1);
    ck_assert_int_eq(l[0], 2147483647);
    // Only the given length counts: "12" cut to "1".
    ck_assert_int_eq(shards_parse_labels("12", 1, l, 64), 1);
    ck_assert_int_eq(l[0], 1);
    const char *bad[] = {"", " \n", "x", "1,", ",1", "1,,2", "-1", "+1", "1 2", "1.5",
                         "2147483648", "3x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(shards_parse_labels(bad[i], strlen(bad[i]), l, 64) == -1,
                      "'%s' was accepted", bad[i]);
    ck_assert_int_eq(shards_parse_labels("1\0", 2, l, 64), -1);
    ck_assert_int_eq(shards_parse_labels("1,2,3", 5, l, 2), -1);
    ck_assert_int_eq(shards_parse_labels("1,2", 3, l, 2), 2);
}
END_TEST

// ---- reading ------------------------------------------------------------------

// Writes the sample zoo with the filter and checks every sample read back.
static void check_zoo(const char *filter, const char *name) {
    unsigned char *img[8];
    size_t len[8] = {300, 5000, 1, 70000, 64, 512, 100, 3};
    for (int i = 0; i < 8; i++) img[i] = make_bytes((unsigned)i + 1, len[i]);
    const Mem m[] = {
        BIN_MEM("0000.png", img[0], 300), FILE_MEM("0000.cls", "3"),
        BIN_MEM("0001.jpg", img[1], 5000), FILE_MEM("0001.txt", "ignored"),
        FILE_MEM("0001.cls", "7\n"), FILE_MEM("0001.json", "{}"),
        FILE_MEM("0002.cls", "2"),                          // label only
        BIN_MEM("0003.png", img[3], 70000),                 // image only
        BIN_MEM("0004.jpeg", img[4], 64), FILE_MEM("0004.cls", "1,5, 7\n"),
        BIN_MEM("0005.png", img[5], 512), FILE_MEM("0005.cls", "x"),
        DIR_MEM("a/"), DIR_MEM("a/b/"),                     // not members of a sample
        BIN_MEM("a/b/0001.png", img[6], 100), FILE_MEM("a/b/0001.cls", "4"),
        // ext "seg.png" is not an image; of .png and .jpg the first wins
        BIN_MEM("d.x/0001.seg.png", img[2], 1), BIN_MEM("d.x/0001.png", img[7], 3),
        BIN_MEM("d.x/0001.jpg", img[0], 300), FILE_MEM("d.x/0001.cls", "0"),
        BIN_MEM("0006.PNG", img[1], 5000),
        FILE_MEM("0007", "no extension"),
        BIN_MEM("0008.png", "", 0),
    };
    const char *path = tpath(name);
    if (write_tar(path, filter, m, (int)(sizeof m / sizeof *m)) != 0) {
        printf("note: skipping the %s shard case\n", filter);
        for (int i = 0; i < 8; i++) free(img[i]);
        return;
    }
    Got g[16];
    int n;
    ck_assert_msg(read_all(path, g, 16, &n) == 0, "%s", err);
    const char *keys[] = {"0000", "0001", "0002",     "0003", "0004",
                          "0005", "a/b/0001", "d.x/0001", "0006", "0007", "0008"};
    ck_assert_int_eq(n, 11);
    for (int i = 0; i < n; i++) ck_assert_str_eq(g[i].s.key, keys[i]);
    assert_img(&g[0], img[0], 300);
    assert_labels(&g[0], 1, (int[]){3});
    assert_img(&g[1], img[1], 5000);
    assert_labels(&g[1], 1, (int[]){7});
    ck_assert_ptr_null(g[2].img);
    assert_labels(&g[2], 1, (int[]){2});
    assert_img(&g[3], img[3], 70000);
    assert_labels(&g[3], 0, NULL);
    assert_img(&g[4], img[4], 64);
    assert_labels(&g[4], 3, (int[]){1, 5, 7});
    assert_img(&g[5], img[5], 512);
    ck_assert_int_eq(g[5].s.bad_label, 1);
    ck_assert_int_eq(g[5].s.nlabels, 0);
    assert_img(&g[6], img[6], 100);
    assert_labels(&g[6], 1, (int[]){4});
    assert_img(&g[7], img[7], 3);
    assert_labels(&g[7], 1, (int[]){0});
    assert_img(&g[8], img[1], 5000);
    assert_labels(&g[8], 0, NULL);
    ck_assert_ptr_null(g[9].img);
    assert_labels(&g[9], 0, NULL);
    // An empty image member is still an image (the decoder rejects it).
    ck_assert_ptr_nonnull(g[10].s.img);
    ck_assert_uint_eq(g[10].s.img_len, 0);
    for (int i = 0; i < n; i++) ck_assert_int_eq(g[i].s.too_big, 0);
    free_got(g, n);
    for (int i = 0; i < 8; i++) free(img[i]);
}

START_TEST(test_read_tar) { check_zoo(NULL, "zoo.tar"); }
END_TEST

START_TEST(test_read_gz) { check_zoo("gzip", "zoo.tar.gz"); }
END_TEST

START_TEST(test_read_zst) { check_zoo("zstd", "zoo.tar.zst"); }
END_TEST

START_TEST(test_empty_and_missing) {
    const char *path = tpath("empty.tar");
    ck_assert_int_eq(write_tar(path, NULL, NULL, 0), 0);
    Got g[1];
    int n;
    ck_assert_int_eq(read_all(path, g, 1, &n), 0);
    ck_assert_int_eq(n, 0);

    const char *missing = tpath("missing.tar");
    ck_assert_ptr_null(shard_open(missing, err, sizeof err));
    ASSERT_HAS(err, missing);

    const char *junk = tpath("junk.tar");
    FILE *f = fopen(junk, "wb");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 2000; i++) ck_assert_int_ne(fputc("not a tar\n"[i % 10], f), EOF);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_ptr_null(shard_open(junk, err, sizeof err));
    ASSERT_HAS(err, junk);
}
END_TEST

// A shard of three samples with `size`-byte images; returns the file offset
// of the third image's data (found by its contents).
static long three_samples(const char *path, const char *filter, size_t size) {
    unsigned char *img[3];
    for (int i = 0; i < 3; i++) img[i] = make_bytes(100u + (unsigned)i, size);
    const Mem m[] = {BIN_MEM("0000.png", img[0], size), FILE_MEM("0000.cls", "0"),
                     BIN_MEM("0001.png", img[1], size), FILE_MEM("0001.cls", "1"),
                     BIN_MEM("0002.png", img[2], size), FILE_MEM("0002.cls", "2")};
    ck_assert_int_eq(write_tar(path, filter, m, 6), 0);
    long off = -1;
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    static unsigned char buf[1 << 16];
    size_t got = fread(buf, 1, sizeof buf, f);
    ck_assert_int_eq(fclose(f), 0);
    unsigned char *hit = memmem(buf, got, img[2], 64);
    if (hit) off = hit - buf;
    for (int i = 0; i < 3; i++) free(img[i]);
    return off;
}

static void cut_file(const char *path, long size) {
    ck_assert_int_eq(truncate(path, size), 0);
}

START_TEST(test_truncated_data) {
    const char *path = tpath("cut.tar");
    long off = three_samples(path, NULL, 4000);
    ck_assert_int_gt(off, 0);
    cut_file(path, off + 1000);
    Got g[4];
    int n;
    ck_assert_int_eq(read_all(path, g, 4, &n), -1);
    // The sample cut short comes out marked damaged, so the caller counts it.
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(g[0].s.key, "0000");
    ck_assert_str_eq(g[1].s.key, "0001");
    assert_labels(&g[1], 1, (int[]){1});
    ck_assert_int_eq(g[1].s.damaged, 0);
    ck_assert_str_eq(g[2].s.key, "0002");
    ck_assert_int_eq(g[2].s.damaged, 1);
    ck_assert_ptr_null(g[2].s.img);
    ck_assert_int_eq(g[2].s.nlabels, 0);
    ASSERT_HAS(err, path);
    ASSERT_HAS(err, "'0002'");
    free_got(g, n);
}
END_TEST

// A header cut or damaged after sample 0001's last member: 0001's members
// were all read before the damage, so it is returned whole (issue 11: it was
// dropped uncounted), then the error.
START_TEST(test_truncated_header) {
    const char *path = tpath("cuthdr.tar");
    long off = three_samples(path, NULL, 4000);
    ck_assert_int_gt(off, 512);
    cut_file(path, off - 512 + 100);  // 100 bytes into 0002.png's header
    Got g[4];
    int n;
    ck_assert_int_eq(read_all(path, g, 4, &n), -1);
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(g[0].s.key, "0000");
    ck_assert_str_eq(g[1].s.key, "0001");
    ck_assert_ptr_nonnull(g[1].img);
    assert_labels(&g[1], 1, (int[]){1});
    ck_assert_int_eq(g[1].s.damaged, 0);
    ASSERT_HAS(err, path);
    ASSERT_HAS(err, "'0001'");
    free_got(g, n);
}
END_TEST

START_TEST(test_corrupt_header) {
    const char *path = tpath("bad.tar");
    long off = three_samples(path, NULL, 4000);
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, off - 512 + 148, SEEK_SET), 0);  // 0002.png's checksum field
    ck_assert_int_eq(fwrite("99999999", 1, 8, f), 8);
    ck_assert_int_eq(fclose(f), 0);
    Got g[4];
    int n;
    ck_assert_int_eq(read_all(path, g, 4, &n), -1);
    ck_assert_int_eq(n, 2);  // 0001, complete before the bad checksum, is not lost
    ck_assert_str_eq(g[1].s.key, "0001");
    assert_labels(&g[1], 1, (int[]){1});
    ck_assert_int_eq(g[1].s.damaged, 0);
    ASSERT_HAS(err, path);
    free_got(g, n);
}
END_TEST

START_TEST(test_truncated_gz) {
    // Random bytes do not compress, so the cut lands in the third sample.
    const char *path = tpath("cut.tar.gz");
    // Large enough that libarchive's read-ahead at open stays before the cut.
    ck_assert_int_eq(three_samples(path, "gzip", 300000), -1);  // compressed: not found
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    cut_file(path, st.st_size * 5 / 6);
    Got g[4];
    int n;
    ck_assert_int_eq(read_all(path, g, 4, &n), -1);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(g[1].s.key, "0001");
    assert_labels(&g[1], 1, (int[]){1});
    ck_assert_int_eq(g[2].s.damaged, 1);
    ASSERT_HAS(err, path);
    ASSERT_HAS(err, "0002");
    free_got(g, n);
}
END_TEST

// A small .tar.gz (decompressed under libarchive's 64 KiB block) cut short:
// libarchive's own gzip filter failed the open and lost the whole shard.
static void truncated_small(const char *filter, const char *name, const char *why) {
    unsigned char *img[3];
    size_t len[3] = {300, 300, 6000};
    for (int i = 0; i < 3; i++) img[i] = make_bytes(200u + (unsigned)i, len[i]);
    const Mem m[] = {BIN_MEM("0000.png", img[0], 300), FILE_MEM("0000.cls", "0"),
                     BIN_MEM("0001.png", img[1], 300), FILE_MEM("0001.cls", "1"),
                     BIN_MEM("0002.png", img[2], 6000), FILE_MEM("0002.cls", "2")};
    const char *path = tpath(name);
    if (write_tar(path, filter, m, 6) != 0) {
        printf("note: skipping the truncated %s case\n", filter);
        for (int i = 0; i < 3; i++) free(img[i]);
        return;
    }
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_lt(st.st_size, 65536);
    cut_file(path, st.st_size * 2 / 3);  // inside 0002.png's data
    Got g[4];
    int n;
    ck_assert_int_eq(read_all(path, g, 4, &n), -1);
    ck_assert_int_eq(n, 3);
    assert_img(&g[0], img[0], 300);
    assert_labels(&g[0], 1, (int[]){0});
    assert_img(&g[1], img[1], 300);
    assert_labels(&g[1], 1, (int[]){1});
    ck_assert_str_eq(g[2].s.key, "0002");
    ck_assert_int_eq(g[2].s.damaged, 1);
    ASSERT_HAS(err, path);
    ASSERT_HAS(err, why);
    free_got(g, n);
    for (int i = 0; i < 3; i++) free(img[i]);
}

// zstd is different: a frame is made of blocks of up to 128 KiB that decode
// only whole, so a small .tar.zst cut short has nothing decodable at all. It
// is refused at open with the shard named (the loader counts it).
START_TEST(test_truncated_small_zst) {
    const Mem m[] = {BIN_MEM("0000.png", "abc", 3), FILE_MEM("0000.cls", "0")};
    const char *path = tpath("small.tar.zst");
    if (write_tar(path, "zstd", m, 2) != 0) return;
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    cut_file(path, st.st_size - 4);
    ck_assert_ptr_null(shard_open(path, err, sizeof err));
    ASSERT_HAS(err, path);
}
END_TEST

START_TEST(test_truncated_small_gz) {
    truncated_small("gzip", "small.tar.gz", "truncated gzip");
    unsigned char *img[3];
    size_t len[3] = {300, 300, 6000};  // random bytes: the third dominates the compressed size
    for (int i = 0; i < 3; i++) img[i] = make_bytes(200u + (unsigned)i, len[i]);
    const Mem m[] = {BIN_MEM("0000.png", img[0], 300), FILE_MEM("0000.cls", "0"),
                     BIN_MEM("0001.png", img[1], 300), FILE_MEM("0001.cls", "1"),
                     BIN_MEM("0002.png", img[2], 6000), FILE_MEM("0002.cls", "2")};
    const char *path = tpath("small.tar.gz");
    Got g[4];
    int n;
    // The same shard whole, and two gzip members concatenated, read fully.
    ck_assert_int_eq(write_tar(path, "gzip", m, 6), 0);
    ck_assert_msg(read_all(path, g, 4, &n) == 0, "%s", err);
    ck_assert_int_eq(n, 3);
    assert_img(&g[2], img[2], 6000);
    free_got(g, n);
    const char *plain = tpath("small.tar"), *cat = tpath("cat.tar.gz");
    ck_assert_int_eq(write_tar(plain, NULL, m, 6), 0);
    FILE *f = fopen(plain, "rb");
    ck_assert_ptr_nonnull(f);
    static unsigned char tar[1 << 16];
    size_t tn = fread(tar, 1, sizeof tar, f);
    ck_assert_int_eq(fclose(f), 0);
    for (int part = 0; part < 2; part++) {  // gzip's "ab": a second member appended
        gzFile z = gzopen(cat, part ? "ab" : "wb");
        ck_assert_ptr_nonnull(z);
        size_t from = part ? tn / 3 : 0, to = part ? tn : tn / 3;
        ck_assert_int_eq(gzwrite(z, tar + from, (unsigned)(to - from)), (int)(to - from));
        ck_assert_int_eq(gzclose(z), Z_OK);
    }
    ck_assert_msg(read_all(cat, g, 4, &n) == 0, "%s", err);
    ck_assert_int_eq(n, 3);
    assert_img(&g[2], img[2], 6000);
    assert_labels(&g[2], 1, (int[]){2});
    free_got(g, n);
    for (int i = 0; i < 3; i++) free(img[i]);
}
END_TEST

// Two .cls members for one key: different labels make the sample ambiguous
// (issue 11: the first was used silently); equal labels are fine.
START_TEST(test_two_cls) {
    const Mem m[] = {BIN_MEM("0000.png", "a", 1), FILE_MEM("0000.cls", "3"), FILE_MEM("0000.cls", "7"),
                     BIN_MEM("0001.png", "b", 1), FILE_MEM("0001.cls", "2"), FILE_MEM("0001.cls", " 2\n"),
                     FILE_MEM("0002.cls", "4"), BIN_MEM("0002.png", "c", 1), FILE_MEM("0002.cls", "x"),
                     BIN_MEM("0003.png", "d", 1), FILE_MEM("0003.cls", "1,2"), FILE_MEM("0003.cls", "1")};
    const char *path = tpath("twocls.tar");
    ck_assert_int_eq(write_tar(path, NULL, m, 12), 0);
    Got g[5];
    int n;
    ck_assert_msg(read_all(path, g, 5, &n) == 0, "%s", err);
    ck_assert_int_eq(n, 4);
    int want[4] = {1, 0, 1, 1};
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(g[i].s.ambiguous == want[i], "sample %s: ambiguous %d", g[i].s.key, g[i].s.ambiguous);
        if (want[i]) ck_assert_int_eq(g[i].s.nlabels, 0);
    }
    assert_labels(&g[1], 1, (int[]){2});
    free_got(g, n);
}
END_TEST

START_TEST(test_too_big) {
    size_t big = SHARD_MAX_MEMBER + 1;
    unsigned char *huge = calloc(big, 1), *small = make_bytes(9, 50);
    ck_assert_ptr_nonnull(huge);
    const Mem m[] = {BIN_MEM("0000.png", huge, (long)big), FILE_MEM("0000.cls", "1"),
                     BIN_MEM("0001.png", small, 50), FILE_MEM("0001.cls", "2")};
    const char *path = tpath("big.tar");
    ck_assert_int_eq(write_tar(path, NULL, m, 4), 0);
    free(huge);
    Got g[3];
    int n;
    ck_assert_msg(read_all(path, g, 3, &n) == 0, "%s", err);
    ck_assert_int_eq(n, 2);
    ck_assert_ptr_null(g[0].img);
    ck_assert_int_eq(g[0].s.too_big, 1);
    assert_labels(&g[0], 1, (int[]){1});
    assert_img(&g[1], small, 50);
    ck_assert_int_eq(g[1].s.too_big, 0);
    free_got(g, n);
    free(small);
}
END_TEST

// ---- writers --------------------------------------------------------------------

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

static void write_blob(const char *path, int gz, const unsigned char *p, size_t n) {
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(gzwrite(f, p, (unsigned)n), (int)n);
        ck_assert_int_eq(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(fwrite(p, 1, n, f), n);
        ck_assert_int_eq(fclose(f), 0);
    }
}

// Writes <sub>/t-images-idx3-ubyte[.gz] and labels: n images of rows x cols.
// nimg_data / extra change the image file to test its checks.
static void write_idx(const char *sub, int gz, uint32_t magic, int n, int nimg_data, int extra,
                      int nlab) {
    enum { R = 3, C = 4 };
    char d[512], p[600];
    snprintf(d, sizeof d, "%s/%s", dir, sub);
    ck_assert_int_eq(mkdir(d, 0755), 0);
    unsigned char img[16 + 64 * R * C + 1], lab[8 + 64];
    put_be32(img, magic), put_be32(img + 4, (uint32_t)n);
    put_be32(img + 8, R), put_be32(img + 12, C);
    for (int i = 0; i < nimg_data * R * C + extra; i++) img[16 + i] = (unsigned char)(i * 37 + 11);
    put_be32(lab, 2049), put_be32(lab + 4, (uint32_t)nlab);
    for (int i = 0; i < nlab; i++) lab[8 + i] = (unsigned char)((i * 3) % 10);
    snprintf(p, sizeof p, "%s/t-images-idx3-ubyte%s", d, gz ? ".gz" : "");
    write_blob(p, gz, img, 16 + (size_t)(nimg_data * R * C + extra));
    snprintf(p, sizeof p, "%s/t-labels-idx1-ubyte%s", d, gz ? ".gz" : "");
    write_blob(p, gz, lab, 8 + (size_t)nlab);
}

// Decodes a PNG that must be 8-bit grayscale; returns malloc'd pixels.
static unsigned char *decode_gray(const unsigned char *b, size_t n, int *w, int *h) {
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION;
    ck_assert_msg(png_image_begin_read_from_memory(&im, b, n), "not a PNG: %s", im.message);
    ck_assert_uint_eq(im.format, PNG_FORMAT_GRAY);
    unsigned char *px = malloc(PNG_IMAGE_SIZE(im));
    ck_assert_msg(png_image_finish_read(&im, NULL, px, 0, NULL), "%s", im.message);
    *w = (int)im.width, *h = (int)im.height;
    return px;
}

static int exists(const char *path) {
    return access(path, F_OK) == 0;
}

static void check_idx_shards(const char *prefix) {
    char p[1024];
    int key = 0, per[3] = {2, 2, 1};
    for (int s = 0; s < 3; s++) {
        snprintf(p, sizeof p, "%s-%06d.tar", prefix, s);
        Got g[4];
        int n;
        ck_assert_msg(read_all(p, g, 4, &n) == 0, "%s", err);
        ck_assert_int_eq(n, per[s]);
        for (int i = 0; i < n; i++, key++) {
            char want[16];
            snprintf(want, sizeof want, "%07d", key);
            ck_assert_str_eq(g[i].s.key, want);
            assert_labels(&g[i], 1, (int[]){(key * 3) % 10});
            int w, h;
            unsigned char *px = decode_gray(g[i].img, g[i].s.img_len, &w, &h);
            ck_assert_int_eq(w, 4);
            ck_assert_int_eq(h, 3);
            for (int j = 0; j < 12; j++)
                ck_assert_int_eq(px[j], (unsigned char)((key * 12 + j) * 37 + 11));
            free(px);
        }
        free_got(g, n);
        snprintf(p, sizeof p, "%s-%06d.tar.tmp", prefix, s);
        ck_assert(!exists(p));
    }
    snprintf(p, sizeof p, "%s-%06d.tar", prefix, 3);
    ck_assert(!exists(p));
}

START_TEST(test_write_idx) {
    for (int gz = 0; gz < 2; gz++) {
        const char *sub = gz ? "gz" : "plain";
        write_idx(sub, gz, 2051, 5, 5, 0, 5);
        char prefix[600];
        snprintf(prefix, sizeof prefix, "%s/out/%s/fm", dir, sub);  // out/<sub> is created
        ck_assert_int_eq(shards_write_idx(tpath(sub), "t", prefix, 2, err, sizeof err), 5);
        check_idx_shards(prefix);
    }
}
END_TEST

// Runs the idx writer on a bad pair and checks the message names the file.
static void idx_fails(const char *sub, const char *part, int per_shard) {
    char prefix[600];
    snprintf(prefix, sizeof prefix, "%s/%s-out", dir, sub);
    ck_assert_int_eq(shards_write_idx(tpath(sub), "t", prefix, per_shard, err, sizeof err), -1);
    ASSERT_HAS(err, part);
    // No half-written shard is left behind.
    char p[700];
    snprintf(p, sizeof p, "%s-000001.tar.tmp", prefix);
    ck_assert(!exists(p));
    snprintf(p, sizeof p, "%s-000001.tar", prefix);
    ck_assert(!exists(p));
}

START_TEST(test_write_idx_errors) {
    write_idx("magic", 0, 2049, 5, 5, 0, 5);
    idx_fails("magic", "t-images-idx3-ubyte", 2);
    ASSERT_HAS(err, "magic");
    write_idx("count", 1, 2051, 5, 5, 0, 4);
    idx_fails("count", "t-labels-idx1-ubyte.gz", 2);
    write_idx("short", 1, 2051, 5, 4, 0, 5);  // 4th sample opens shard 1; the 5th is missing
    idx_fails("short", "t-images-idx3-ubyte.gz", 3);
    ASSERT_HAS(err, "truncated");
    write_idx("long", 0, 2051, 5, 5, 7, 5);
    idx_fails("long", "t-images-idx3-ubyte", 3);
    ASSERT_HAS(err, "after the items");
    idx_fails("nowhere", "nowhere/t-images-idx3-ubyte", 2);
    write_idx("ok", 0, 2051, 5, 5, 0, 5);
    ck_assert_int_eq(shards_write_idx(tpath("ok"), "t", tpath("ok-out"), 0, err, sizeof err), -1);
    ASSERT_HAS(err, "per shard");
}
END_TEST

static void put_file(const char *rel, const void *p, size_t n) {
    write_blob(tpath(rel), 0, p, n);
}

// Labels of the samples of a folder written with seed, shard by shard.
static void folder_labels(const char *prefix, int *labels, int nshards, int per) {
    for (int k = 0; k < nshards; k++) {
        char path[700];
        snprintf(path, sizeof path, "%s-%06d.tar", prefix, k);
        Got g[16];
        int n;
        ck_assert_msg(read_all(path, g, 16, &n) == 0, "%s", err);
        ck_assert_int_eq(n, per);
        for (int i = 0; i < n; i++) labels[k * per + i] = g[i].s.labels[0];
        free_got(g, n);
    }
}

START_TEST(test_write_folder_shuffled) {
    // two classes of 20 images, 10 per shard: in class order shards 0-1
    // would hold only class 0 and shards 2-3 only class 1
    ck_assert_int_eq(mkdir(tpath("two"), 0755), 0);
    ck_assert_int_eq(mkdir(tpath("two/a"), 0755), 0);
    ck_assert_int_eq(mkdir(tpath("two/b"), 0755), 0);
    unsigned char *img = make_bytes(7, 64);
    for (int i = 0; i < 40; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "two/%c/%02d.png", i < 20 ? 'a' : 'b', i);
        put_file(rel, img, 64);
    }
    free(img);
    char p1[600], p2[600], p3[600];
    snprintf(p1, sizeof p1, "%s/s1/f", dir);
    snprintf(p2, sizeof p2, "%s/s2/f", dir);
    snprintf(p3, sizeof p3, "%s/s3/f", dir);
    ck_assert_int_eq(shards_write_folder(tpath("two"), p1, 10, 0, err, sizeof err), 40);
    ck_assert_int_eq(shards_write_folder(tpath("two"), p2, 10, 0, err, sizeof err), 40);
    ck_assert_int_eq(shards_write_folder(tpath("two"), p3, 10, 1, err, sizeof err), 40);
    int l1[40], l2[40], l3[40];
    folder_labels(p1, l1, 4, 10);
    folder_labels(p2, l2, 4, 10);
    folder_labels(p3, l3, 4, 10);
    ck_assert_int_eq(memcmp(l1, l2, sizeof l1), 0);   // same seed, same order
    ck_assert_int_ne(memcmp(l1, l3, sizeof l1), 0);   // another seed, another order
    int ones = 0;
    for (int k = 0; k < 4; k++) {
        int c1 = 0;
        for (int i = 0; i < 10; i++) c1 += l1[k * 10 + i];
        ck_assert_msg(c1 > 0 && c1 < 10, "shard %d holds one class only", k);
        ones += c1;
    }
    ck_assert_int_eq(ones, 20);
}
END_TEST

START_TEST(test_write_folder) {
    const char *dirs[] = {"root", "root/cat", "root/dog", "root/bird", "root/.hidden"};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(mkdir(tpath(dirs[i]), 0755), 0);
    unsigned char *a = make_bytes(1, 200), *b = make_bytes(2, 300), *x = make_bytes(3, 50);
    put_file("root/cat/b.JPG", b, 300);
    put_file("root/cat/a.png", a, 200);
    put_file("root/cat/notes.txt", "hi", 2);
    put_file("root/dog/x.jpeg", x, 50);
    put_file("root/.hidden/y.png", a, 200);
    put_file("root/readme.txt", "not a class", 11);
    char prefix[600];
    snprintf(prefix, sizeof prefix, "%s/fo/f", dir);
    ck_assert_int_eq(shards_write_folder(tpath("root"), prefix, 2, 0, err, sizeof err), 3);

    // bird (empty) = 0, cat = 1, dog = 2: an empty class keeps its index.
    // The samples are permuted across the shards: 2 in the first, 1 in the
    // second, each image once with its class, keys in writing order.
    Got g[4];
    int n0, n1;
    ck_assert_msg(read_all(tpath("fo/f-000000.tar"), g, 3, &n0) == 0, "%s", err);
    ck_assert_int_eq(n0, 2);
    ck_assert_msg(read_all(tpath("fo/f-000001.tar"), g + n0, 2, &n1) == 0, "%s", err);
    ck_assert_int_eq(n1, 1);
    ck_assert(!exists(tpath("fo/f-000002.tar")));
    const struct { unsigned char *bytes; size_t len; int label; const char *ext; } want[] = {
        {a, 200, 1, "png"}, {b, 300, 1, "jpg"}, {x, 50, 2, "jpeg"}};
    int seen[3] = {0, 0, 0};
    for (int i = 0; i < 3; i++) {
        char key[16];
        snprintf(key, sizeof key, "%07d", i);
        ck_assert_str_eq(g[i].s.key, key);
        for (int k = 0; k < 3; k++) {
            if (g[i].s.img_len != want[k].len) continue;
            assert_img(&g[i], want[k].bytes, want[k].len);
            assert_labels(&g[i], 1, (int[]){want[k].label});
            seen[k]++;
        }
    }
    ck_assert_msg(seen[0] == 1 && seen[1] == 1 && seen[2] == 1, "each image once");
    free_got(g, 3);

    // classes.txt beside the shards: every class directory, sorted, one a line
    FILE *cf = fopen(tpath("fo/classes.txt"), "r");
    ck_assert_ptr_nonnull(cf);
    char ctext[64] = "";
    size_t cn = fread(ctext, 1, sizeof ctext - 1, cf);
    fclose(cf);
    ctext[cn] = '\0';
    ck_assert_str_eq(ctext, "bird\ncat\ndog\n");

    // Member names keep the lowercased extension.
    struct archive *ar = archive_read_new();
    struct archive_entry *e;
    ck_assert_int_eq(archive_read_support_format_tar(ar), ARCHIVE_OK);
    ck_assert_int_eq(archive_read_open_filename(ar, tpath("fo/f-000000.tar"), 4096), ARCHIVE_OK);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(archive_read_next_header(ar, &e), ARCHIVE_OK);
        const char *nm = archive_entry_pathname(e), *dot = strrchr(nm, '.');
        ck_assert_msg(dot && (!strcmp(dot, ".png") || !strcmp(dot, ".jpg") || !strcmp(dot, ".jpeg")),
                      "member %s", nm);
        ck_assert_int_eq(archive_read_next_header(ar, &e), ARCHIVE_OK);
        ck_assert_str_eq(strrchr(archive_entry_pathname(e), '.'), ".cls");
    }
    ck_assert_int_eq(archive_read_next_header(ar, &e), ARCHIVE_EOF);
    ck_assert_int_eq(archive_read_free(ar), ARCHIVE_OK);

    ck_assert_int_eq(shards_write_folder(tpath("nope"), prefix, 2, 0, err, sizeof err), -1);
    ASSERT_HAS(err, tpath("nope"));
    ck_assert_int_eq(shards_write_folder(tpath("root/dog"), prefix, 2, 0, err, sizeof err), -1);
    ASSERT_HAS(err, "no class directories");
    ck_assert_int_eq(mkdir(tpath("bare"), 0755), 0);
    ck_assert_int_eq(mkdir(tpath("bare/c"), 0755), 0);
    ck_assert_int_eq(shards_write_folder(tpath("bare"), prefix, 2, 0, err, sizeof err), -1);
    ASSERT_HAS(err, "no .jpg");
    free(a), free(b), free(x);
}
END_TEST

// ---- the real Fashion-MNIST test split ---------------------------------------------

#define FMNIST "/usr/share/datasets/fashion-mnist"

START_TEST(test_fmnist_t10k) {
    if (!exists(FMNIST "/t10k-images-idx3-ubyte.gz")) {
        printf("note: %s not installed (Debian dataset-fashion-mnist); skipping\n", FMNIST);
        return;
    }
    double t0 = sm_now();
    char prefix[600];
    snprintf(prefix, sizeof prefix, "%s/fm/t10k", dir);
    ck_assert_msg(shards_write_idx(FMNIST, "t10k", prefix, 5000, err, sizeof err) == 10000, "%s",
                  err);
    int count[10] = {0}, total = 0;
    for (int s = 0; s < 2; s++) {
        char p[700];
        snprintf(p, sizeof p, "%s-%06d.tar", prefix, s);
        ShardReader *r = shard_open(p, err, sizeof err);
        ck_assert_msg(r != NULL, "%s", err);
        ShardSample smp;
        int rc;
        while ((rc = shard_next(r, &smp, err, sizeof err)) == 1) {
            ck_assert_int_eq(smp.nlabels, 1);
            ck_assert(smp.labels[0] >= 0 && smp.labels[0] < 10);
            count[smp.labels[0]]++;
            if (total++ % 997 == 0) {
                int w, h;
                free(decode_gray(smp.img, smp.img_len, &w, &h));
                ck_assert(w == 28 && h == 28);
            }
        }
        ck_assert_msg(rc == 0, "%s", err);
        shard_close(r);
    }
    ck_assert_int_eq(total, 10000);
    for (int c = 0; c < 10; c++) ck_assert_int_eq(count[c], 1000);  // the test split is balanced
    printf("fashion-mnist t10k: 10000 samples written and read in %.2f s\n",
           sm_now() - t0);
}
END_TEST

static Suite *shards_suite(void) {
    Suite *s = suite_create("shards");
    TCase *tc = tcase_create("shards");
    tcase_add_checked_fixture(tc, make_dir, remove_dir);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_expand);
    tcase_add_test(tc, test_parse_labels);
    tcase_add_test(tc, test_read_tar);
    tcase_add_test(tc, test_read_gz);
    tcase_add_test(tc, test_read_zst);
    tcase_add_test(tc, test_empty_and_missing);
    tcase_add_test(tc, test_truncated_data);
    tcase_add_test(tc, test_truncated_header);
    tcase_add_test(tc, test_corrupt_header);
    tcase_add_test(tc, test_truncated_gz);
    tcase_add_test(tc, test_truncated_small_gz);
    tcase_add_test(tc, test_truncated_small_zst);
    tcase_add_test(tc, test_two_cls);
    tcase_add_test(tc, test_too_big);
    tcase_add_test(tc, test_write_idx);
    tcase_add_test(tc, test_write_idx_errors);
    tcase_add_test(tc, test_write_folder);
    tcase_add_test(tc, test_write_folder_shuffled);
    tcase_add_test(tc, test_fmnist_t10k);
    suite_add_tcase(s, tc);
    return s;
}

SM_TEST_MAIN(shards_suite)
