// Evaluation pieces around the model: position-embedding resizing for
// fine-tuning (identity at the same size, hand values for 2x2 -> 4x4),
// features that do not depend on the batch, and few-shot datasets in config.
#include <string.h>
#include <unistd.h>

#include "core/config.h"
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

static Suite *eval_suite(void) {
    Suite *s = suite_create("eval");
    TCase *t = tcase_create("eval");
    tcase_add_test(t, test_posemb_identity);
    tcase_add_test(t, test_posemb_2x2_to_4x4);
    tcase_add_test(t, test_features_batch_independent);
    tcase_add_test(t, test_fewshot_config);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(eval_suite)
