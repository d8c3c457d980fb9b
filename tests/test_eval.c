// Evaluation pieces around the model: position-embedding resizing for
// fine-tuning (identity at the same size, hand values for 2x2 -> 4x4),
// features that do not depend on the batch, few-shot datasets in config;
// eval.c itself: eval_correct on hand logits (multi-label too), eval_val over
// a held-out split of 23 shard images in rounds of 1, 5 (a short last round)
// and 23 with the same totals (the sums weight each round by its images),
// and eval_features' per-class cap. The rounds padded across ranks and the
// sums over ranks are tested under MPI (tests/test_mpi.sh: evaluation split
// over 2 ranks equals 1 rank over the same 160 images).
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "data/shards.h"
#include "eval/eval.h"
#include "gradcheck.h"
#include "model/layers.h"
#include "model/vit.h"
#include "testutil.h"

START_TEST(test_posemb_identity) {
    float in[3 * 3 * 5], out[3 * 3 * 5];
    gc_fill(in, 45, 1, 3);
    posemb_resize(out, 3, in, 3, 5);
    ck_assert_mem_eq(in, out, sizeof in);
}
END_TEST

START_TEST(test_posemb_2x2_to_4x4) {
    // one channel, grid [[0, 4], [8, 12]]; half-pixel centres sample the
    // input at -0.25, 0.25, 0.75, 1.25 -> clamped 0, 0.25, 0.75, 1 per axis
    const float in[4] = {0, 4, 8, 12};
    float out[16];
    posemb_resize(out, 4, in, 2, 1);
    const float want[16] = {0, 1, 3, 4, 2, 3, 5, 6, 6, 7, 9, 10, 8, 9, 11, 12};
    for (int i = 0; i < 16; i++) ck_assert_float_eq_tol(out[i], want[i], 1e-6f);
}
END_TEST

// Pre-logits features of an image are the same alone and inside a batch.
START_TEST(test_features_batch_independent) {
    Config c;
    char err[512];
    char *ov[] = {"model.width=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32",
                  "model.image_size=8", "model.patch=4", "model.channels=3", "model.classes=5",
                  "moe.experts=3", "moe.slots=1"};
    ck_assert_msg(config_load(&c, NULL, 10, ov, err, sizeof err) == 0, "%s", err);
    Vit m;
    vit_build(&m, &c);
    vit_alloc(&m, 6);
    gc_fill(m.params, m.pt.total, 0.5f, 9);
    size_t per = 8 * 8 * 3;
    float img[6 * 192], f[16];
    gc_fill(img, 6 * per, 1, 10);
    vit_forward(&m, img, NULL, 6);
    memcpy(f, m.a.pooled + 4 * 16, sizeof f);
    vit_forward(&m, img + 4 * per, NULL, 1);
    for (int j = 0; j < 16; j++) ck_assert_float_eq_tol(m.a.pooled[j], f[j], 1e-5f);
    vit_free(&m);
}
END_TEST

START_TEST(test_fewshot_config) {
    Config c;
    char err[512];
    char *ov[] = {"fewshot.imagenet=/data/imagenet/train|/data/imagenet/val",
                  "fewshot.cifar=c/train-{0..9}.tar|c/test-0.tar",
                  "fewshot.imagenet=/d/in/train|/d/in/val"};
    ck_assert_msg(config_load(&c, NULL, 3, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.n_fewshot, 2);
    ck_assert_str_eq(c.fewshot_name[0], "imagenet");
    ck_assert_str_eq(c.fewshot_data[0], "/d/in/train|/d/in/val");
    // the resolved config round-trips the datasets
    char text[1 << 15], path[] = "/tmp/softmoe-evalcfg-XXXXXX";
    config_to_ini(&c, text, sizeof text);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    Config back;
    ck_assert_msg(config_load(&back, path, 0, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(back.n_fewshot, 2);
    ck_assert_str_eq(back.fewshot_data[1], "c/train-{0..9}.tar|c/test-0.tar");
    unlink(path);
    char *bad[] = {"fewshot.x=only-one-source"};
    ck_assert_int_ne(config_load(&c, NULL, 1, bad, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "fewshot.x"));
}
END_TEST

// Top class among the labels: ties and multi-hot targets.
START_TEST(test_eval_correct) {
    const float logits[3 * 4] = {0, 3, 1, 2,   5, 1, 1, 1,   0, 0, 2, 2.5f};
    const float targets[3 * 4] = {0, 1, 0, 0,   0, 1, 0, 0,   0, 0, 1, 1};
    ck_assert_int_eq(eval_correct(logits, targets, 3, 4), 2);   // image 1's top is class 0
    ck_assert_int_eq(eval_correct(logits, targets, 1, 4), 1);
    ck_assert_int_eq(eval_correct(logits + 4, targets + 4, 1, 4), 0);
}
END_TEST

static char shard_dir[64];
// 23 synthetic 16 px RGB images of 4 classes in 3 shards (10, 10, 3).
static const char *val_shards(void) {
    static char pattern[128];
    if (!shard_dir[0]) {
        char err[512], prefix[96];
        snprintf(shard_dir, sizeof shard_dir, "/tmp/softmoe_eval_XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(shard_dir));
        snprintf(prefix, sizeof prefix, "%s/val", shard_dir);
        ck_assert_msg(shards_write_synthetic(prefix, 23, 10, 16, 16, 4, 7, err, sizeof err) == 23,
                      "%s", err);
        snprintf(pattern, sizeof pattern, "%s-{000000..000002}.tar", prefix);
    }
    return pattern;
}

static void eval_config(Config *c, const char *val) {
    char err[512], v[256];
    snprintf(v, sizeof v, "data.val=%s", val);
    char *ov[] = {"model.width=16", "model.depth=2", "model.heads=2", "model.mlp_dim=32",
                  "model.image_size=8", "model.patch=4", "model.channels=3", "model.classes=4",
                  "moe.experts=3", "moe.slots=1", "data.pp_eval=resize(8)|value_range(-1,1)",
                  "data.threads=1", v};
    ck_assert_msg(config_load(c, NULL, 13, ov, err, sizeof err) == 0, "%s", err);
}

// prec@1 and loss over the held-out split do not depend on the rounds: a
// last round of 3 of 5 images counts 3 images, not a fifth of the total.
START_TEST(test_eval_val_rounds) {
    Config c;
    eval_config(&c, val_shards());
    const int batches[3] = {1, 5, 23};
    double p1[3], loss[3];
    long n[3];
    for (int k = 0; k < 3; k++) {
        Vit m;
        vit_build(&m, &c);
        vit_alloc(&m, batches[k]);
        vit_init(&m, 3);
        gc_fill(m.w.head_w, (size_t)m.d.D * m.d.K, 1.0f, 11);  // a head that separates classes
        ck_assert_int_eq(eval_val(&m, &c, &p1[k], &loss[k], &n[k]), 1);
        vit_free(&m);
    }
    printf("eval_val over 23 images: prec@1 %.4f, loss %.6f (rounds of 1), %.6f (5), %.6f (23)\n",
           p1[0], loss[0], loss[1], loss[2]);
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(n[k], 23);
        ck_assert_double_eq(p1[k], p1[0]);
        ck_assert_double_eq_tol(loss[k], loss[0], 1e-6 * loss[0]);
    }
    ck_assert(loss[0] > 0);
    // without data.val there is nothing to evaluate
    Config none;
    eval_config(&none, "");
    Vit m;
    vit_build(&m, &none);
    vit_alloc(&m, 5);
    double a = -1, b = -1;
    ck_assert_int_eq(eval_val(&m, &none, &a, &b, NULL), 0);
    vit_free(&m);
}
END_TEST

// Features of the split: per_class caps each class, every feature is the
// image's own (row i equals the image run alone), labels in range.
START_TEST(test_eval_features_cap) {
    Config c;
    eval_config(&c, val_shards());
    Vit m;
    vit_build(&m, &c);
    vit_alloc(&m, 5);
    vit_init(&m, 3);
    float *X, *X1;
    int *y, *y1;
    int n = eval_features(&m, &c, val_shards(), 2, NULL, &X, &y);
    int cnt[4] = {0};
    for (int i = 0; i < n; i++) {
        ck_assert(y[i] >= 0 && y[i] < 4);
        cnt[y[i]]++;
    }
    // every image read (per_class 0): the cap keeps min(images, 2) of each class
    float *Xa;
    int *ya, all[4] = {0}, want = 0;
    int na = eval_features(&m, &c, val_shards(), 0, NULL, &Xa, &ya);
    ck_assert_int_eq(na, 23);
    for (int i = 0; i < na; i++) all[ya[i]]++;
    for (int k = 0; k < 4; k++) {
        ck_assert_int_eq(cnt[k], all[k] < 2 ? all[k] : 2);
        want += cnt[k];
    }
    ck_assert_int_eq(n, want);
    ck_assert_int_gt(n, 4);
    free(Xa), free(ya);
    vit_free(&m);
    vit_build(&m, &c);
    vit_alloc(&m, 1);
    vit_init(&m, 3);
    int n1 = eval_features(&m, &c, val_shards(), 2, NULL, &X1, &y1);
    ck_assert_int_eq(n1, n);
    for (int i = 0; i < n; i++) ck_assert_int_eq(y1[i], y[i]);
    ck_assert(sm_rel_err(X1, X, (size_t)n * m.d.D, 1e-6) < 1e-5);
    free(X), free(y), free(X1), free(y1);
    vit_free(&m);
}
END_TEST

static Suite *eval_suite(void) {
    Suite *s = suite_create("eval");
    TCase *t = tcase_create("eval");
    tcase_add_test(t, test_posemb_identity);
    tcase_add_test(t, test_posemb_2x2_to_4x4);
    tcase_add_test(t, test_features_batch_independent);
    tcase_add_test(t, test_fewshot_config);
    tcase_add_test(t, test_eval_correct);
    tcase_add_test(t, test_eval_val_rounds);
    tcase_add_test(t, test_eval_features_cap);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(eval_suite)
