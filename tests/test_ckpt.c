// HDF5 checkpoints: a bit-exact round trip of every tensor; 2N steps straight
// against N steps, stop (the SIGTERM path), resume, N more — identical
// params, m and v, with synthetic data and with shards through the loader;
// every load error names the file and the dataset; pruning keeps what the
// config says.
#include <hdf5.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "data/shards.h"
#include "gradcheck.h"
#include "model/vit.h"
#include "testutil.h"
#include "train/ckpt.h"
#include "train/train.h"

static char *tmpdir(void) {
    static char buf[8][64];
    static int k;
    char *d = buf[k++ % 8];
    snprintf(d, 64, "/tmp/softmoe_ckpt_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d));
    return d;
}

static void tiny3(Config *c, const char *extra1, const char *extra2, const char *extra3) {
    char err[512];
    char *ov[] = {"model.width=16",  "model.depth=2",     "model.heads=2",  "model.mlp_dim=32",
                  "model.image_size=8", "model.patch=4", "model.channels=1", "model.classes=4",
                  "moe.experts=3",   "moe.slots=2",        "train.batch_size=8",
                  "schedule.warmup_steps=2", "train.log_every=5", (char *)extra1, (char *)extra2,
                  (char *)extra3};
    int n = 13 + (extra1 != NULL) + (extra2 != NULL) + (extra3 != NULL);
    ck_assert_msg(config_load(c, NULL, n, ov, err, sizeof err) == 0, "%s", err);
}

static void tiny(Config *c, const char *extra1, const char *extra2) { tiny3(c, extra1, extra2, NULL); }

START_TEST(test_round_trip) {
    Config c;
    tiny(&c, NULL, NULL);
    Vit m;
    vit_build(&m, &c);
    vit_alloc(&m, 1);
    size_t n = m.pt.total;
    float *p = malloc(n * 4), *mm = malloc(n * 4), *v = malloc(n * 4);
    gc_fill(p, n, 1, 1), gc_fill(mm, n, 1, 2), gc_fill(v, n, 1, 3);
    char *dir = tmpdir(), cfg[1 << 15], err[512];
    config_to_ini(&c, cfg, sizeof cfg);
    CkptOut o = {.step = 42, .world_size = 1, .config = cfg, .pt = &m.pt, .params = p, .m = mm,
                 .v = v, .pos = {3, 17}, .skipped = 5};
    ck_assert_msg(ckpt_save(dir, &o, err, sizeof err) == 0, "%s", err);
    char path[256];
    snprintf(path, sizeof path, "%s/ckpt-00000042.h5", dir);
    float *p2 = calloc(n, 4), *m2 = calloc(n, 4), *v2 = calloc(n, 4);
    CkptInfo info;
    ck_assert_msg(ckpt_load(path, &m.pt, p2, m2, v2, &info, err, sizeof err) == 0, "%s", err);
    for (int i = 0; i < m.pt.n; i++) {
        const ParamSpec *s = &m.pt.t[i];
        ck_assert_msg(!memcmp(p + s->offset, p2 + s->offset, s->numel * 4), "%s", s->name);
        ck_assert(!memcmp(mm + s->offset, m2 + s->offset, s->numel * 4));
        ck_assert(!memcmp(v + s->offset, v2 + s->offset, s->numel * 4));
    }
    ck_assert_int_eq(info.step, 42);
    ck_assert_int_eq(info.world_size, 1);
    ck_assert_uint_eq(info.pos.epoch, 3);
    ck_assert_uint_eq(info.pos.taken, 17);
    ck_assert_uint_eq(info.skipped, 5);
    ck_assert_str_eq(info.config, cfg);
    ckpt_info_free(&info);
    // listing ignores unfinished .tmp files and sorts newest first
    o.step = 7;
    ck_assert_int_eq(ckpt_save(dir, &o, err, sizeof err), 0);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s/ckpt-00000099.h5.tmp", dir);
    fclose(fopen(tmp, "w"));
    char **paths;
    long *steps;
    int k = ckpt_list(dir, &paths, &steps);
    ck_assert_int_eq(k, 2);
    ck_assert_int_eq(steps[0], 42);
    ck_assert_int_eq(steps[1], 7);
    ckpt_list_free(paths, steps, k);
    free(p), free(mm), free(v), free(p2), free(m2), free(v2);
    vit_free(&m);
}
END_TEST

// The final checkpoint's params, m and v of a run, read back.
static void final_state(const Config *c, float **p, float **m, float **v) {
    Vit vm;
    vit_build(&vm, c);
    vit_alloc(&vm, 1);
    size_t n = vm.pt.total;
    *p = calloc(n, 4), *m = calloc(n, 4), *v = calloc(n, 4);
    char path[CFG_PATH + 32], err[512];
    snprintf(path, sizeof path, "%s/ckpt-%08ld.h5", c->workdir, c->steps);
    CkptInfo info;
    ck_assert_msg(ckpt_load(path, &vm.pt, *p, *m, *v, &info, err, sizeof err) == 0, "%s", err);
    ckpt_info_free(&info);
    vit_free(&vm);
}

static void check_resume(const char *src1, const char *src2) {
    Config a, b;
    const char *pp = src1 ? "data.pp_train=resize(8)|value_range(-1,1)" : NULL;
    tiny3(&a, src1, src2, pp);
    tiny3(&b, src1, src2, pp);
    a.steps = b.steps = 20;
    a.ckpt_every = b.ckpt_every = 6;
    snprintf(a.workdir, sizeof a.workdir, "%s", tmpdir());
    snprintf(b.workdir, sizeof b.workdir, "%s", tmpdir());
    TrainResult r;
    train_run(&a, 1, &r);
    ck_assert_int_eq(r.steps_done, 20);
    b.debug_stop_at_step = 10;  // as if SIGTERM arrived during step 10
    train_run(&b, 1, &r);
    b.debug_stop_at_step = 0;
    ck_assert_int_eq(r.preempted, 1);
    ck_assert_int_eq(r.steps_done, 10);
    train_run(&b, 1, &r);  // resumes from step 10
    ck_assert_int_eq(r.preempted, 0);
    ck_assert_int_eq(r.steps_done, 20);
    float *pa, *ma, *va, *pb, *mb, *vb;
    final_state(&a, &pa, &ma, &va);
    final_state(&b, &pb, &mb, &vb);
    Vit vm;
    vit_build(&vm, &a);
    size_t n = vm.pt.total * 4;
    ck_assert_msg(!memcmp(pa, pb, n), "params differ after resume");
    ck_assert_msg(!memcmp(ma, mb, n), "Adam m differs after resume");
    ck_assert_msg(!memcmp(va, vb, n), "Adam v differs after resume");
    ptable_free(&vm.pt);
    free(pa), free(ma), free(va), free(pb), free(mb), free(vb);
    // keep_ckpts = 3 (default): steps 20, 18, 12 remain of 6, 10, 12, 18, 20
    char **paths;
    long *steps;
    int k = ckpt_list(b.workdir, &paths, &steps);
    ck_assert_int_eq(k, 3);
    ck_assert_int_eq(steps[0], 20);
    ck_assert_int_eq(steps[2], 12);
    ckpt_list_free(paths, steps, k);
}

START_TEST(test_resume_synthetic) { check_resume(NULL, NULL); }
END_TEST

START_TEST(test_resume_shards) {
    // 200 tiny 8x8 images in idx format -> 4 PNG shards, read with shuffling
    char *d = tmpdir(), p[256], err[512];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", d);
    FILE *fi = fopen(p, "wb");
    snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte", d);
    FILE *fl = fopen(p, "wb");
    unsigned char hi[16] = {0, 0, 8, 3, 0, 0, 0, 200, 0, 0, 0, 8, 0, 0, 0, 8};
    unsigned char hl[8] = {0, 0, 8, 1, 0, 0, 0, 200};
    fwrite(hi, 1, 16, fi), fwrite(hl, 1, 8, fl);
    for (int i = 0; i < 200; i++) {
        unsigned char px[64], lab = (unsigned char)(i % 4);
        for (int k = 0; k < 64; k++) px[k] = (unsigned char)((k % 8 < 4) == (lab < 2) ? 200 : 20 + i);
        fwrite(px, 1, 64, fi), fwrite(&lab, 1, 1, fl);
    }
    fclose(fi), fclose(fl);
    snprintf(p, sizeof p, "%s/sh/train", d);
    ck_assert_msg(shards_write_idx(d, "train", p, 50, err, sizeof err) == 200, "%s", err);
    static char src[300];
    snprintf(src, sizeof src, "data.train=%s/sh/train-{000000..000003}.tar", d);
    check_resume("data.source=shards", src);
}
END_TEST

static void expect_error(const char *path, const ParamTable *pt, float *buf, const char *needle) {
    CkptInfo info;
    char err[1024];
    ck_assert_int_ne(ckpt_load(path, pt, buf, NULL, NULL, &info, err, sizeof err), 0);
    ck_assert_msg(strstr(err, path) != NULL, "error lacks the file: %s", err);
    ck_assert_msg(strstr(err, needle) != NULL, "error lacks '%s': %s", needle, err);
}

START_TEST(test_load_errors) {
    Config c, big, wide;
    tiny(&c, NULL, NULL);
    tiny(&big, "model.depth=3", NULL);
    tiny(&wide, "model.mlp_dim=48", NULL);
    Vit m, mb, mw;
    vit_build(&m, &c), vit_alloc(&m, 1);
    vit_build(&mb, &big), vit_alloc(&mb, 1);
    vit_build(&mw, &wide), vit_alloc(&mw, 1);
    char *dir = tmpdir(), cfg[1 << 15], err[512], path[256], bad[300];
    config_to_ini(&c, cfg, sizeof cfg);
    CkptOut o = {.step = 5, .world_size = 1, .config = cfg, .pt = &m.pt, .params = m.params};
    ck_assert_int_eq(ckpt_save(dir, &o, err, sizeof err), 0);
    snprintf(path, sizeof path, "%s/ckpt-00000005.h5", dir);
    // a deeper model (block 1 dense, block 2 Soft MoE): missing dataset, named
    expect_error(path, &mb.pt, mb.params, "has no dataset /params/Encoder/encoderblock_1/Mlp/Dense_0/kernel");
    // a wider MLP: shape mismatch, named with both shapes
    expect_error(path, &mw.pt, mw.params, "Dense_0/kernel has shape (16,32) but the config gives (16,48)");
    // Adam state asked for but absent (params-only checkpoint)
    CkptInfo info;
    ck_assert_int_ne(ckpt_load(path, &m.pt, m.params, m.grads, m.grads, &info, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "/opt/m/"));
    // not HDF5
    snprintf(bad, sizeof bad, "%s/junk.h5", dir);
    FILE *f = fopen(bad, "w");
    fputs("this is not HDF5\n", f);
    fclose(f);
    expect_error(bad, &m.pt, m.params, "not an HDF5 file");
    // truncated: the first half of a valid file
    struct stat st;
    stat(path, &st);
    snprintf(bad, sizeof bad, "%s/trunc.h5", dir);
    FILE *in = fopen(path, "rb"), *out = fopen(bad, "wb");
    char *b = malloc((size_t)st.st_size);
    ck_assert_int_eq(fread(b, 1, (size_t)st.st_size, in), st.st_size);
    fwrite(b, 1, (size_t)st.st_size / 2, out);
    fclose(in), fclose(out), free(b);
    CkptInfo ti;
    ck_assert_int_ne(ckpt_load(bad, &m.pt, m.params, NULL, NULL, &ti, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, bad));
    // a newer format version
    hid_t h = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(h, "version", H5P_DEFAULT);
    int ver = CKPT_VERSION + 1;
    H5Awrite(a, H5T_NATIVE_INT, &ver);
    H5Aclose(a), H5Fclose(h);
    expect_error(path, &m.pt, m.params, "newer");
    // missing file
    expect_error("/nonexistent/ckpt-00000001.h5", &m.pt, m.params, "cannot be read");
    // a write that cannot happen fails cleanly, naming the file, leaving nothing
    o.step = 6;
    ck_assert_int_ne(ckpt_save("/nonexistent/dir", &o, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/dir/ckpt-00000006.h5"));
    vit_free(&m), vit_free(&mb), vit_free(&mw);
}
END_TEST

// The library refuses to write a non-finite tensor, naming it and touching
// nothing; each stored tensor carries a crc32 attribute.
START_TEST(test_refuses_nonfinite) {
    Config c;
    tiny(&c, NULL, NULL);
    Vit m;
    vit_build(&m, &c);
    vit_alloc(&m, 1);
    size_t n = m.pt.total;
    float *v = calloc(n, 4);
    int k = ptable_find(&m.pt, "head/kernel");
    ck_assert_int_ge(k, 0);
    v[m.pt.t[k].offset + 3] = INFINITY;
    char *dir = tmpdir(), cfg[1 << 15], err[512], path[256];
    config_to_ini(&c, cfg, sizeof cfg);
    CkptOut o = {.step = 7, .world_size = 1, .config = cfg, .pt = &m.pt, .params = m.params,
                 .m = m.grads, .v = v};
    ck_assert_int_ne(ckpt_save(dir, &o, err, sizeof err), 0);
    ck_assert_msg(strstr(err, "step 7: /opt/v/head/kernel holds a non-finite value"), "%s", err);
    snprintf(path, sizeof path, "%s/ckpt-00000007.h5", dir);
    ck_assert_int_ne(access(path, F_OK), 0);
    snprintf(path, sizeof path, "%s/ckpt-00000007.h5.tmp", dir);
    ck_assert_int_ne(access(path, F_OK), 0);
    v[m.pt.t[k].offset + 3] = 0;
    ck_assert_msg(ckpt_save(dir, &o, err, sizeof err) == 0, "%s", err);
    snprintf(path, sizeof path, "%s/ckpt-00000007.h5", dir);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/params/head/kernel", H5P_DEFAULT);
    ck_assert_int_gt(H5Aexists(d, "crc32"), 0);
    H5Dclose(d), H5Fclose(f);
    free(v);
    vit_free(&m);
}
END_TEST

START_TEST(test_prune_keep_every) {
    Config c;
    tiny(&c, NULL, NULL);
    Vit m;
    vit_build(&m, &c), vit_alloc(&m, 1);
    char *dir = tmpdir(), err[512];
    CkptOut o = {.world_size = 1, .config = "", .pt = &m.pt, .params = m.params};
    for (long s = 10; s <= 100; s += 10) {
        o.step = s;
        ck_assert_int_eq(ckpt_save(dir, &o, err, sizeof err), 0);
        ckpt_prune(dir, 2, 40);
    }
    char **paths;
    long *steps;
    int k = ckpt_list(dir, &paths, &steps);
    ck_assert_int_eq(k, 4);  // 100, 90 (newest two), 80 and 40 (every 40th)
    ck_assert(steps[0] == 100 && steps[1] == 90 && steps[2] == 80 && steps[3] == 40);
    ckpt_list_free(paths, steps, k);
    vit_free(&m);
}
END_TEST

static Suite *ckpt_suite(void) {
    Suite *s = suite_create("ckpt");
    TCase *t = tcase_create("hdf5");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_round_trip);
    tcase_add_test(t, test_resume_synthetic);
    tcase_add_test(t, test_resume_shards);
    tcase_add_test(t, test_load_errors);
    tcase_add_test(t, test_prune_keep_every);
    tcase_add_test(t, test_refuses_nonfinite);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(ckpt_suite)
