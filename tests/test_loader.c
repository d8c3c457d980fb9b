// The input pipeline end to end on small shards made here: determinism for a
// seed, exact resume from a saved position, disjoint and complete rank
// splits, an in-order eval pass, and bad samples skipped and counted.
#include <archive.h>
#include <archive_entry.h>
#include <png.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/shards.h"
#include "testutil.h"

#define NIMG 300
#define SZ 28

static char dir[64];

static void put_be32(FILE *f, uint32_t v) {
    unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
    fwrite(b, 1, 4, f);
}

// NIMG 28x28 images whose first two pixels encode the sample index, in
// Fashion-MNIST's idx format (uncompressed), then written as 3 shards.
static void make_dataset(void) {
    snprintf(dir, sizeof dir, "/tmp/softmoe_loader_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char p[256];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", dir);
    FILE *fi = fopen(p, "wb");
    snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte", dir);
    FILE *fl = fopen(p, "wb");
    ck_assert(fi && fl);
    put_be32(fi, 2051), put_be32(fi, NIMG), put_be32(fi, SZ), put_be32(fi, SZ);
    put_be32(fl, 2049), put_be32(fl, NIMG);
    for (int i = 0; i < NIMG; i++) {
        unsigned char px[SZ * SZ];
        for (int k = 0; k < SZ * SZ; k++) px[k] = (unsigned char)(k * 7 + i);
        px[0] = (unsigned char)(i % 256), px[1] = (unsigned char)(i / 256);
        fwrite(px, 1, sizeof px, fi);
        unsigned char lab = (unsigned char)(i % 10);
        fwrite(&lab, 1, 1, fl);
    }
    fclose(fi), fclose(fl);
    char err[512];
    snprintf(p, sizeof p, "%s/sh/train", dir);
    ck_assert_msg(shards_write_idx(dir, "train", p, 100, err, sizeof err) == NIMG, "%s", err);
}

static LoaderSpec spec(int B, int train) {
    static char paths[256];
    snprintf(paths, sizeof paths, "%s/sh/train-{000000..000002}.tar", dir);
    return (LoaderSpec){.source = "shards", .paths = paths,
                        .pp = "resize(28)|value_range(0,255)", .S = SZ, .C = 1, .K = 10, .B = B,
                        .seed = 7, .rank = 0, .world = 1, .threads = 2, .shuffle_buffer = 64,
                        .train = train, .quiet = 1};
}

static int index_of(const float *img) { return (int)img[0] + 256 * (int)img[1]; }

// Sample indices of the next n batches.
static void take(Loader *l, int B, int n, int *ids) {
    static float img[64 * SZ * SZ], tgt[64 * 10];
    int lab[64];
    for (int k = 0; k < n; k++) {
        ck_assert_int_eq(loader_next(l, img, tgt, lab), B);
        for (int b = 0; b < B; b++) {
            ids[k * B + b] = index_of(img + (size_t)b * SZ * SZ);
            ck_assert_int_eq(lab[b], ids[k * B + b] % 10);
            ck_assert_float_eq(tgt[b * 10 + lab[b]], 1.0f);
        }
    }
}

START_TEST(test_same_seed_same_batches) {
    make_dataset();
    char err[512];
    LoaderSpec sp = spec(16, 1);
    Loader *a = loader_open(&sp, err, sizeof err), *b = loader_open(&sp, err, sizeof err);
    ck_assert_msg(a && b, "%s", err);
    int x[16 * 40], y[16 * 40];  // 640 samples: two epochs and more
    take(a, 16, 40, x);
    take(b, 16, 40, y);
    ck_assert_mem_eq(x, y, sizeof x);
    // one epoch holds each sample once, and it is shuffled
    int seen[NIMG] = {0}, inorder = 1;
    for (int i = 0; i < NIMG; i++) seen[x[i]]++, inorder &= x[i] == i;
    for (int i = 0; i < NIMG; i++) ck_assert_int_eq(seen[i], 1);
    ck_assert(!inorder);
    ck_assert_uint_eq(loader_epoch_size(a), NIMG);
    // another seed gives another order
    sp.seed = 8;
    Loader *c = loader_open(&sp, err, sizeof err);
    take(c, 16, 5, y);
    ck_assert(memcmp(x, y, 16 * 5 * sizeof(int)) != 0);
    loader_close(a), loader_close(b), loader_close(c);
}
END_TEST

START_TEST(test_resume_position) {
    make_dataset();
    char err[512];
    LoaderSpec sp = spec(16, 1);
    Loader *a = loader_open(&sp, err, sizeof err);
    int x[16 * 30], y[16 * 30];
    take(a, 16, 30, x);  // crosses an epoch boundary
    for (int k = 1; k < 30; k += 7) {
        Loader *b = loader_open(&sp, err, sizeof err);
        take(b, 16, k, y);
        LoaderPos pos = loader_pos(b);
        loader_close(b);
        Loader *c = loader_open(&sp, err, sizeof err);
        loader_seek(c, pos);
        take(c, 16, 30 - k, y + k * 16);
        ck_assert_msg(!memcmp(x, y, sizeof x), "resume after %d batches differs", k);
        loader_close(c);
    }
    loader_close(a);
}
END_TEST

START_TEST(test_ranks_disjoint) {
    make_dataset();
    char err[512];
    int count[NIMG] = {0};
    for (int r = 0; r < 3; r++) {
        LoaderSpec sp = spec(10, 1);
        sp.rank = r, sp.world = 3;
        Loader *l = loader_open(&sp, err, sizeof err);
        ck_assert_msg(l, "%s", err);
        int ids[100];
        take(l, 10, 10, ids);  // one shard = this rank's epoch
        ck_assert_uint_eq(loader_epoch_size(l), 0);
        for (int i = 0; i < 100; i++) count[ids[i]]++;
        loader_close(l);
    }
    for (int i = 0; i < NIMG; i++) ck_assert_msg(count[i] == 1, "sample %d seen %d times", i, count[i]);
}
END_TEST

START_TEST(test_eval_pass) {
    make_dataset();
    char err[512];
    LoaderSpec sp = spec(64, 0);
    Loader *l = loader_open(&sp, err, sizeof err);
    ck_assert_msg(l, "%s", err);
    static float img[64 * SZ * SZ], tgt[640];
    int n, total = 0;
    while ((n = loader_next(l, img, tgt, NULL)) > 0) {
        for (int b = 0; b < n; b++) ck_assert_int_eq(index_of(img + (size_t)b * SZ * SZ), total + b);
        total += n;
    }
    ck_assert_int_eq(total, NIMG);
    ck_assert_int_eq(loader_next(l, img, tgt, NULL), 0);
    loader_close(l);
}
END_TEST

// A shard of six samples: good PNG, corrupt JPEG, PNG without label, label
// 12, two .cls members that disagree (ambiguous), two that agree (fine).
static void write_bad_shard(const char *path, const unsigned char *png, size_t plen) {
    struct archive *a = archive_write_new();
    archive_write_set_format_ustar(a);
    ck_assert_int_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
    const unsigned char junk[] = {0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4, 5};
    struct { const char *name; const void *data; size_t len; } m[] = {
        {"a.png", png, plen}, {"a.cls", "3", 1},  {"b.jpg", junk, sizeof junk},
        {"b.cls", "4", 1},    {"c.png", png, plen}, {"d.png", png, plen}, {"d.cls", "12", 2},
        {"e.png", png, plen}, {"e.cls", "1", 1},    {"e.cls", "2", 1},    {"f.png", png, plen},
        {"f.cls", "6", 1},    {"f.cls", "6\n", 2}};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, m[i].name);
        archive_entry_set_size(e, (la_int64_t)m[i].len);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        ck_assert_int_eq(archive_write_data(a, m[i].data, m[i].len), (la_ssize_t)m[i].len);
        archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
}

START_TEST(test_bad_samples_skipped) {
    make_dataset();
    png_image im;
    memset(&im, 0, sizeof im);
    im.version = PNG_IMAGE_VERSION, im.width = SZ, im.height = SZ, im.format = PNG_FORMAT_GRAY;
    unsigned char px[SZ * SZ];
    for (int i = 0; i < SZ * SZ; i++) px[i] = (unsigned char)i;
    px[0] = 5, px[1] = 0;
    static unsigned char buf[8192];
    png_alloc_size_t len = sizeof buf;
    ck_assert(png_image_write_to_memory(&im, buf, &len, 0, px, 0, NULL));
    char path[256];
    snprintf(path, sizeof path, "%s/bad.tar", dir);
    write_bad_shard(path, buf, len);
    LoaderSpec sp = spec(1, 0);
    sp.paths = path;
    char err[512];
    Loader *l = loader_open(&sp, err, sizeof err);
    ck_assert_msg(l, "%s", err);
    static float img[SZ * SZ], tgt[10];
    int lab;
    ck_assert_int_eq(loader_next(l, img, tgt, &lab), 1);
    ck_assert_int_eq(lab, 3);
    ck_assert_int_eq(index_of(img), 5);
    ck_assert_int_eq(loader_next(l, img, tgt, &lab), 1);
    ck_assert_int_eq(lab, 6);
    ck_assert_int_eq(loader_next(l, img, tgt, &lab), 0);
    ck_assert_uint_eq(loader_skipped(l), 4);
    loader_close(l);
}
END_TEST

START_TEST(test_open_errors) {
    make_dataset();
    char err[512];
    LoaderSpec sp = spec(4, 1);
    char p[256];
    snprintf(p, sizeof p, "%s/sh/none-{000..003}.tar", dir);
    sp.paths = p;
    ck_assert_ptr_null(loader_open(&sp, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "none-000.tar"));
    sp = spec(4, 1);
    sp.pp = "resize(32)|value_range(0,1)";
    ck_assert_ptr_null(loader_open(&sp, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "image_size"));
    sp = spec(4, 1);
    sp.source = "folder";
    sp.paths = "/nonexistent/folder";
    ck_assert_ptr_null(loader_open(&sp, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/folder"));
}
END_TEST

static Suite *loader_suite(void) {
    Suite *s = suite_create("loader");
    TCase *t = tcase_create("pipeline");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_same_seed_same_batches);
    tcase_add_test(t, test_resume_position);
    tcase_add_test(t, test_ranks_disjoint);
    tcase_add_test(t, test_eval_pass);
    tcase_add_test(t, test_bad_samples_skipped);
    tcase_add_test(t, test_open_errors);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(loader_suite)
