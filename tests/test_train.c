// End-to-end training on the synthetic task: the loss of a tiny ViT must
// fall by at least half within a few hundred steps, the run must write its
// resolved config and metrics, and two runs with one seed must agree exactly.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "train/train.h"
#include "testutil.h"

static void tiny(Config *c, const char *workdir, long steps) {
    char err[512];
    char *ov[] = {"model.width=32",      "model.depth=2",        "model.heads=2",
                  "model.mlp_dim=64",    "model.image_size=16",  "model.patch=4",
                  "model.channels=1",    "model.classes=4",      "train.batch_size=32",
                  "schedule.warmup_steps=20", "schedule.decay=cosine", "train.log_every=10"};
    ck_assert_int_eq(config_load(c, NULL, sizeof ov / sizeof *ov, ov, err, sizeof err), 0);
    c->steps = steps;
    snprintf(c->workdir, sizeof c->workdir, "%s", workdir);
}

static char *tmpdir(void) {
    static char buf[64];
    snprintf(buf, sizeof buf, "/tmp/softmoe_train_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(buf));
    return buf;
}

// The 300-step fp32 run, shared by the two tests that need it (no-fork mode:
// one process runs every case).
static TrainResult fp32_run;
static char fp32_dir[64];
static const TrainResult *fp32_300(void) {
    if (!fp32_dir[0]) {
        Config c;
        snprintf(fp32_dir, sizeof fp32_dir, "%s", tmpdir());
        tiny(&c, fp32_dir, 300);
        train_run(&c, 1, &fp32_run);
    }
    return &fp32_run;
}

START_TEST(test_loss_halves) {
    TrainResult r = *fp32_300();
    const char *dir = fp32_dir;
    printf("synthetic: first loss %.4f, last %.4f, val prec@1 %.3f\n", r.first_loss, r.last_loss,
           r.val_prec1);
    ck_assert_int_eq(r.steps_done, 300);
    ck_assert_double_lt(r.last_loss, 0.5 * r.first_loss);
    ck_assert_double_gt(r.val_prec1, 0.5);  // chance is 0.25
    // the resolved config reloads to the same values
    char path[512];
    snprintf(path, sizeof path, "%s/config.ini", dir);
    Config back;
    char err[512];
    ck_assert_msg(config_load(&back, path, 0, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(back.width, 32);
    ck_assert_int_eq(back.steps, 300);
    // metrics.jsonl: one line per log step plus the final evaluation
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[1024];
    int n = 0, val = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "val/prec@1")) { val++; continue; }
        n++;
        const char *keys[] = {"\"step\"", "\"loss\"", "\"lr\"", "\"img_per_s\"", "\"l2_grads\"",
                              "\"l2_params\""};
        for (int k = 0; k < 6; k++) ck_assert_msg(strstr(line, keys[k]), "missing %s", keys[k]);
    }
    fclose(f);
    ck_assert_int_eq(n, 30);
    ck_assert_int_eq(val, 1);
}
END_TEST

START_TEST(test_deterministic) {
    Config c;
    TrainResult a, b;
    tiny(&c, tmpdir(), 20);
    train_run(&c, 1, &a);
    tiny(&c, tmpdir(), 20);
    train_run(&c, 1, &b);
    ck_assert_double_eq(a.last_loss, b.last_loss);
    ck_assert_double_eq(a.val_loss, b.val_loss);
}
END_TEST

// train.precision = bf16 learns like fp32: the same 300-step run halves its
// loss, and its loss curve stays near the fp32 one. bf16 products perturb
// each step by ~2^-8 relative (tests/test_gemm.c); over 300 steps of Adam the
// runs drift apart like two fp32 runs of different seeds would not (same
// data, same init), so the final losses must agree within 25% of the fp32
// loss, and the bf16 run must still reach the accuracy bound above.
START_TEST(test_bf16_learns) {
    Config c;
    TrainResult a = *fp32_300(), b;
    tiny(&c, tmpdir(), 300);
    snprintf(c.precision, sizeof c.precision, "bf16");
    train_run(&c, 1, &b);
    printf("synthetic 300 steps: fp32 loss %.4f -> %.4f (val %.3f), bf16 %.4f -> %.4f (val %.3f)\n",
           a.first_loss, a.last_loss, a.val_prec1, b.first_loss, b.last_loss, b.val_prec1);
    ck_assert_double_lt(b.last_loss, 0.5 * b.first_loss);
    ck_assert_double_gt(b.val_prec1, 0.5);
    ck_assert_double_lt(fabs(b.last_loss - a.last_loss), 0.25 * a.last_loss);
    ck_assert_double_lt(fabs(b.first_loss - a.first_loss), 1e-2 * a.first_loss);
    ck_assert(b.last_loss != a.last_loss);  // the bf16 run did round
}
END_TEST

// loss, aux_loss (0 when absent) and l2_grads of every logged step of a run.
static int read_losses(const char *dir, double *loss, double *aux, double *gn, int max) {
    char path[512], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    int n = 0;
    while (fgets(line, sizeof line, f) && n < max) {
        const char *l = strstr(line, "\"loss\": "), *a = strstr(line, "\"aux_loss\": ");
        const char *g = strstr(line, "\"l2_grads\": ");
        if (!l || !g || strstr(line, "val/")) continue;
        loss[n] = atof(l + 8), aux[n] = a ? atof(a + 12) : 0, gn[n] = atof(g + 12);
        n++;
    }
    fclose(f);
    return n;
}

// train.microbatch: the 32-image step as 4 micro-steps of 8 (2 of 16 for
// Tokens Choice's groups of 8) equals the one-forward step for every router,
// noise included. The runs differ only in float summation order (gradient
// sums over micro-steps, loss means of means). metrics.jsonl prints 6
// digits, so each logged loss and l2_grads must agree to a relative 1e-4 and
// aux_loss to 1e-4 absolute over 12 steps (measured: equal as printed); the
// final held-out loss (a double, a function of the final parameters) to a
// relative 1e-6 (measured: 3e-10 to 2e-9; a gradient scale off by the
// micro-step count gives 2e-6 to 6e-6, routing noise drawn per micro-batch
// instead of per global image 1e-4 for Tokens Choice).
START_TEST(test_microbatch_same) {
    const char *routers[][3] = {
        {"moe.router=soft", "moe.slots=2", "8"},
        {"moe.router=identity", "moe.slots=4", "8"},
        {"moe.router=tokens_choice", "moe.group_size=8", "16"},
        {"moe.router=experts_choice", "moe.group_size=4", "8"},
    };
    for (int r = 0; r < 4; r++) {
        TrainResult res[2];
        double loss[2][16], aux[2][16], gn[2][16];
        int n[2];
        for (int k = 0; k < 2; k++) {
            char mb[64], *dir = tmpdir(), err[512];
            snprintf(mb, sizeof mb, "train.microbatch=%s", k ? routers[r][2] : "0");
            char *ov[] = {"model.width=32", "model.depth=2", "model.heads=2", "model.mlp_dim=64",
                          "model.image_size=16", "model.patch=4", "model.classes=4",
                          "moe.experts=4", (char *)routers[r][0], (char *)routers[r][1], mb,
                          "train.batch_size=32", "schedule.warmup_steps=3", "train.log_every=1",
                          "train.steps=12", "eval.synthetic_images=64"};
            Config c;
            ck_assert_msg(config_load(&c, NULL, sizeof ov / sizeof *ov, ov, err, sizeof err) == 0,
                          "%s", err);
            snprintf(c.workdir, sizeof c.workdir, "%s", dir);
            train_run(&c, 1, &res[k]);
            n[k] = read_losses(dir, loss[k], aux[k], gn[k], 16);
        }
        ck_assert_int_eq(n[0], 12);
        ck_assert_int_eq(n[1], 12);
        double dl = 0, da = 0, dg = 0;
        for (int i = 0; i < 12; i++) {
            dl = fmax(dl, fabs(loss[1][i] - loss[0][i]) / loss[0][i]);
            dg = fmax(dg, fabs(gn[1][i] - gn[0][i]) / gn[0][i]);
            da = fmax(da, fabs(aux[1][i] - aux[0][i]));
        }
        double dv = fabs(res[1].val_loss - res[0].val_loss) / res[0].val_loss;
        printf("microbatch %s: max rel. diff loss %.2g, l2_grads %.2g, aux %.2g, val loss %.2g\n",
               routers[r][0], dl, dg, da, dv);
        ck_assert_msg(dl < 1e-4, "%s: loss differs by %g", routers[r][0], dl);
        ck_assert_msg(da < 1e-4, "%s: aux_loss differs by %g", routers[r][0], da);
        ck_assert_msg(dg < 1e-4, "%s: l2_grads differs by %g", routers[r][0], dg);
        ck_assert_msg(dv < 1e-6, "%s: val loss differs by %g", routers[r][0], dv);
        ck_assert(fabs(res[1].val_prec1 - res[0].val_prec1) <= 1.0 / 64 + 1e-9);
    }
}
END_TEST

// A microbatch that does not divide the per-rank batch, or that splits a
// routing group, is refused naming the key.
START_TEST(test_microbatch_refused) {
    Config c;
    char err[512];
    char *ov[] = {"train.batch_size=32", "moe.experts=4", "moe.router=tokens_choice",
                  "moe.group_size=8", "train.microbatch=12"};
    ck_assert_msg(config_load(&c, NULL, 5, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(train_micro_batch(&c, 1, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "train.microbatch = 12 must divide the images per rank"), "%s", err);
    c.microbatch = 4;
    ck_assert_int_eq(train_micro_batch(&c, 1, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "multiple of moe.group_size = 8"), "%s", err);
    c.microbatch = 8;
    ck_assert_int_eq(train_micro_batch(&c, 2, err, sizeof err), 8);
    ck_assert_int_eq(train_micro_batch(&c, 4, err, sizeof err), 8);
    c.microbatch = 0;  // default: the per-rank batch
    ck_assert_int_eq(train_micro_batch(&c, 2, err, sizeof err), 16);
}
END_TEST

static Suite *train_suite(void) {
    Suite *s = suite_create("train");
    TCase *t = tcase_create("synthetic");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, test_loss_halves);
    tcase_add_test(t, test_deterministic);
    tcase_add_test(t, test_bf16_learns);
    tcase_add_test(t, test_microbatch_same);
    tcase_add_test(t, test_microbatch_refused);
    suite_add_tcase(s, t);
    return s;
}

SM_TEST_MAIN(train_suite)
