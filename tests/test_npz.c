// .npz interop (src/train/npz.c): a tiny ViT in big_vision's layout and in
// the older vision_transformer layout (scripts/make_npz_fixture.py, made with
// numpy) loads into our parameter table and gives the logits of the float64
// PyTorch reference computed from the same arrays; both layouts give the same
// parameters; export writes every tensor so that it reads back bit-exactly;
// shape changes go to the adaptation callback (head, position embedding);
// missing arrays and non-zip files are named.
//
// Tolerance: as test_reference (float32 against float64 from identical
// float32 inputs, ~10 reductions of length <= 64): relative error near 1e-6
// expected, 1e-4 accepted; a wrongly mapped or transposed tensor gives O(1).
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "fixture.h"
#include "model/vit.h"
#include "testutil.h"
#include "train/npz.h"

#define DIR "tests/data"

static char err[2048];

static void build(Vit *m, const Fixture *f, int nextra, char **extra) {
    const FixTensor *t = fixture_need(f, "config", FIX_TEXT);
    char *text = strdup(t->text), *save = NULL, *ov[64];
    int n = 0;
    for (char *line = strtok_r(text, "\n", &save); line && n < 60; line = strtok_r(NULL, "\n", &save))
        if (*line) ov[n++] = line;
    for (int i = 0; i < nextra; i++) ov[n++] = extra[i];
    Config c;
    ck_assert_msg(config_load(&c, NULL, n, ov, err, sizeof err) == 0, "%s", err);
    free(text);
    vit_build(m, &c);
    vit_alloc(m, 3);
    vit_init(m, 7);  // every tensor must then be overwritten by the load
}

// Records which tensors needed adapting, and the shape offered.
typedef struct { int n; char names[8][PARAM_NAME]; long dim1[8]; } Adapted;
static void record(void *ctx, const ParamSpec *s, const float *src, int nd, const long *dims,
                   const char *path) {
    Adapted *a = ctx;
    (void)src, (void)path;
    if (a->n < 8) {
        snprintf(a->names[a->n], PARAM_NAME, "%s", s->name);
        a->dim1[a->n] = nd > 1 ? dims[1] : dims[0];
    }
    a->n++;
}

static double logits_err(Vit *m, const Fixture *f) {
    const FixTensor *img = fixture_need(f, "input/images", FIX_F32);
    const FixTensor *rz = fixture_need(f, "output/logits", FIX_F32);
    vit_forward(m, img->data, NULL, (int)img->dims[0]);
    return sm_rel_err(m->a.logits, rz->data, rz->numel, 0);
}

START_TEST(test_layouts_give_reference_logits) {
    Fixture *f = fixture_load(DIR "/ref_npz_bv.bin");
    Vit a, b;
    build(&a, f, 0, NULL);
    build(&b, f, 0, NULL);
    Adapted ad = {0};
    ck_assert_msg(npz_load_params(DIR "/bv_vit_tiny.npz", &a.pt, a.params, 1, record, &ad, err,
                                  sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ad.n, 0);
    ck_assert_msg(npz_load_params(DIR "/bv_vit_tiny_old.npz", &b.pt, b.params, 1, record, &ad, err,
                                  sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ad.n, 0);
    ck_assert_int_eq(memcmp(a.params, b.params, a.pt.total * sizeof(float)), 0);
    // the cls row of the position embedding: big_vision has none, so zero
    int pi = ptable_find(&a.pt, "Encoder/posembed_input/pos_embedding");
    ck_assert_int_ge(pi, 0);
    for (int k = 0; k < a.d.D; k++) ck_assert(a.params[a.pt.t[pi].offset + k] == 0.0f);
    double ea = logits_err(&a, f), eb = logits_err(&b, f);
    printf("npz logits: big_vision layout %.2e, old layout %.2e\n", ea, eb);
    ck_assert_msg(ea < 1e-4 && eb < 1e-4, "logits differ from the reference: %g %g", ea, eb);
    vit_free(&a), vit_free(&b);
    fixture_free(f);
}
END_TEST

START_TEST(test_export_round_trip) {
    Fixture *f = fixture_load(DIR "/ref_npz_bv.bin");
    Vit a, b;
    build(&a, f, 0, NULL);
    build(&b, f, 0, NULL);
    Adapted ad = {0};
    ck_assert_msg(npz_load_params(DIR "/bv_vit_tiny.npz", &a.pt, a.params, 1, record, &ad, err,
                                  sizeof err) == 0, "%s", err);
    char path[] = "/tmp/test_npz_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_msg(npz_write_params(path, &a.pt, a.params, err, sizeof err) == 0, "%s", err);
    // each tensor under our (vmoe) name, its shape and bytes
    Npz *z = npz_open(path, err, sizeof err);
    ck_assert_msg(z != NULL, "%s", err);
    for (int i = 0; i < a.pt.n; i++) {
        const ParamSpec *s = &a.pt.t[i];
        float *d;
        int nd;
        long dims[8];
        ck_assert_msg(npz_read(z, s->name, &d, &nd, dims, err, sizeof err) == 0, "%s: %s", s->name, err);
        ck_assert_int_eq(nd, s->ndim);
        for (int k = 0; k < nd; k++) ck_assert_int_eq(dims[k], s->shape[k]);
        ck_assert_int_eq(memcmp(d, a.params + s->offset, s->numel * sizeof(float)), 0);
        free(d);
    }
    float *d;
    int nd;
    long dims[8];
    ck_assert_int_eq(npz_read(z, "no/such/array", &d, &nd, dims, err, sizeof err), 1);
    npz_close(z);
    // and train.init from it gives the same parameters
    ck_assert_msg(npz_load_params(path, &b.pt, b.params, 1, record, &ad, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ad.n, 0);
    ck_assert_int_eq(memcmp(a.params, b.params, a.pt.total * sizeof(float)), 0);
    unlink(path);
    vit_free(&a), vit_free(&b);
    fixture_free(f);
}
END_TEST

START_TEST(test_shape_changes_adapted) {
    Fixture *f = fixture_load(DIR "/ref_npz_bv.bin");
    Vit a;
    char *ov[] = {"model.classes=7", "model.image_size=12"};
    build(&a, f, 2, ov);
    Adapted ad = {0};
    ck_assert_msg(npz_load_params(DIR "/bv_vit_tiny.npz", &a.pt, a.params, 1, record, &ad, err,
                                  sizeof err) == 0, "%s", err);
    // the posemb (2x2 patches + the inserted cls row) and the head's two tensors
    ck_assert_int_eq(ad.n, 3);
    ck_assert_str_eq(ad.names[0], "Encoder/posembed_input/pos_embedding");
    ck_assert_int_eq(ad.dim1[0], 5);
    ck_assert_str_eq(ad.names[1], "head/kernel");
    ck_assert_str_eq(ad.names[2], "head/bias");
    vit_free(&a);
    fixture_free(f);
}
END_TEST

START_TEST(test_errors_named) {
    Fixture *f = fixture_load(DIR "/ref_npz_bv.bin");
    Vit a;
    char *ov[] = {"model.depth=3"};
    build(&a, f, 1, ov);
    Adapted ad = {0};
    ck_assert_int_eq(npz_load_params(DIR "/bv_vit_tiny.npz", &a.pt, a.params, 1, record, &ad, err,
                                     sizeof err), -1);
    ck_assert_msg(strstr(err, "bv_vit_tiny.npz' has no array for Encoder/encoderblock_2/LayerNorm_0/scale") &&
                  strstr(err, "Transformer/encoderblock_2/LayerNorm_0/scale"), "%s", err);
    ck_assert_int_eq(npz_load_params(DIR "/ref_npz_bv.bin", &a.pt, a.params, 1, record, &ad, err,
                                     sizeof err), -1);
    ck_assert_msg(strstr(err, "ref_npz_bv.bin' as .npz"), "%s", err);
    vit_free(&a);
    fixture_free(f);
}
END_TEST

START_TEST(test_names) {
    char out[12][PARAM_NAME];
    int n = npz_names("Encoder/encoderblock_3/SelfAttention/query/kernel", out, 12);
    ck_assert_int_eq(n, 6);
    ck_assert_str_eq(out[1], "Transformer/encoderblock_3/MultiHeadDotProductAttention_0/query/kernel");
    ck_assert_str_eq(out[2], "Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel");
    ck_assert_str_eq(out[3], "params/Encoder/encoderblock_3/SelfAttention/query/kernel");
    n = npz_names("Encoder/encoderblock_11/LayerNorm_1/bias", out, 12);
    ck_assert_str_eq(out[2], "Transformer/encoderblock_11/LayerNorm_2/bias");
    n = npz_names("Encoder/encoderblock_0/Mlp/Dense_1/kernel", out, 12);
    ck_assert_str_eq(out[1], "Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel");
    ck_assert_str_eq(out[2], "Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel");
    n = npz_names("Encoder/encoderblock_0/Moe/Mlp/Dense_1/kernel", out, 12);
    ck_assert_int_eq(n, 2);  // vmoe's own name (and with params/)
    n = npz_names("head/kernel", out, 12);
    ck_assert_int_eq(n, 2);
}
END_TEST

static Suite *npz_suite(void) {
    Suite *s = suite_create("npz");
    TCase *tc = tcase_create("npz");
    tcase_add_test(tc, test_layouts_give_reference_logits);
    tcase_add_test(tc, test_export_round_trip);
    tcase_add_test(tc, test_shape_changes_adapted);
    tcase_add_test(tc, test_errors_named);
    tcase_add_test(tc, test_names);
    suite_add_tcase(s, tc);
    return s;
}

SM_TEST_MAIN(npz_suite)
