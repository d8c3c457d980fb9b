// Tests for the user-facing side of the key table (src/core/config.c and
// config_doc.c): every key has one line of documentation for `softmoe keys`
// and every line names a key; `fewshot.<name> =` (empty) removes a set;
// fewshot.shots and fewshot.l2_sweep are validated; short runs of a long
// schedule are told which overrides to add.
#include "core/config.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[1024];

#define ASSERT_HAS(msg, part) \
    ck_assert_msg(strstr((msg), (part)) != NULL, "message '%s' lacks '%s'", (msg), (part))

START_TEST(test_every_key_documented) {
    int n = config_nkeys();
    ck_assert_int_gt(n, 50);
    for (int i = 0; i < n; i++) {
        ConfigKeyInfo k;
        config_key_info(i, &k);
        const char *doc = config_key_doc(k.section, k.key);
        ck_assert_msg(doc && strlen(doc) > 5, "%s.%s has no line in config_doc.c", k.section, k.key);
        ck_assert_ptr_nonnull(k.type);
        ck_assert_ptr_nonnull(k.def);
        ck_assert_int_eq(!strcmp(k.type, "enum"), k.choices != NULL);
    }
    // no stale lines: as many lines as keys, and each key found above once
    ck_assert_int_eq(config_doc_count(), n);
    ck_assert_ptr_null(config_key_doc("model", "widht"));
    ck_assert_ptr_null(config_key_doc("mode", "l.width"));
}
END_TEST

START_TEST(test_fewshot_remove) {
    Config c;
    char *ov[] = {"fewshot.a=x.tar|y.tar", "fewshot.b=p|q", "fewshot.c=r|s", "fewshot.b=",
                  "fewshot.zzz="};
    ck_assert_msg(config_load(&c, NULL, 5, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.n_fewshot, 2);
    ck_assert_str_eq(c.fewshot_name[0], "a");
    ck_assert_str_eq(c.fewshot_name[1], "c");
    ck_assert_str_eq(c.fewshot_data[1], "r|s");
    // the same sets given directly compare equal byte for byte (no stale tail)
    Config d;
    char *ov2[] = {"fewshot.a=x.tar|y.tar", "fewshot.c=r|s"};
    ck_assert_msg(config_load(&d, NULL, 2, ov2, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(memcmp(&c, &d, sizeof c), 0);
    // and a removed set is absent from the resolved config
    char buf[1 << 16];
    config_to_ini(&c, buf, sizeof buf);
    ck_assert_ptr_null(strstr(buf, "p|q"));
}
END_TEST

START_TEST(test_shots_validated) {
    Config c;
    const char *bad[] = {"fewshot.shots=ten", "fewshot.shots=1,,5", "fewshot.shots=0",
                         "fewshot.shots=2.5", "fewshot.shots=1,5x", "fewshot.l2_sweep=1,a",
                         "fewshot.l2_sweep=-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *ov[] = {(char *)bad[i]};
        ck_assert_msg(config_load(&c, NULL, 1, ov, err, sizeof err) == -1, "%s accepted", bad[i]);
        ASSERT_HAS(err, strchr(bad[i], '.') + 1 == NULL ? "" : "fewshot.");
        ASSERT_HAS(err, "positive");
    }
    char *good[] = {"fewshot.shots=1, 5,10,25", "fewshot.l2_sweep=0.5,32,1024"};
    ck_assert_msg(config_load(&c, NULL, 2, good, err, sizeof err) == 0, "%s", err);
}
END_TEST

START_TEST(test_short_run_hint) {
    Config c;
    char *ov[] = {"train.steps=10", "schedule.cooldown_steps=50000", "schedule.warmup_steps=10000"};
    ck_assert_int_eq(config_load(&c, NULL, 3, ov, err, sizeof err), -1);
    ASSERT_HAS(err, "schedule.cooldown_steps = 50000 exceeds train.steps = 10");
    ASSERT_HAS(err, "schedule.cooldown_steps=2 schedule.warmup_steps=2");
    char *ov2[] = {"train.steps=10", "schedule.warmup_steps=10000"};
    ck_assert_int_eq(config_load(&c, NULL, 2, ov2, err, sizeof err), -1);
    ASSERT_HAS(err, "e.g. schedule.warmup_steps=2");
    // the hinted overrides are accepted
    char *ov3[] = {"train.steps=10", "schedule.cooldown_steps=2", "schedule.warmup_steps=2"};
    ck_assert_msg(config_load(&c, NULL, 3, ov3, err, sizeof err) == 0, "%s", err);
}
END_TEST

// The test-only [debug] hooks are absent from a resolved config unless set;
// set, they are written and reload to the same values (bench.steps is an
// ordinary key, always written).
START_TEST(test_debug_keys_written_when_set) {
    Config c, back;
    char buf[1 << 16];
    config_defaults(&c);
    config_to_ini(&c, buf, sizeof buf);
    ck_assert_ptr_null(strstr(buf, "[debug]"));
    ASSERT_HAS(buf, "[bench]\nsteps = 5\n");
    char *ov[] = {"debug.stop_at_step=7", "debug.stop_rank=2", "bench.steps=3"};
    ck_assert_msg(config_load(&c, NULL, 3, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.debug_stop_at_step, 7);
    ck_assert_int_eq(c.debug_fail_rank, -1);
    config_to_ini(&c, buf, sizeof buf);
    ASSERT_HAS(buf, "[debug]\nstop_at_step = 7\nstop_rank = 2\n");
    char path[] = "/tmp/softmoe_keys_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(config_write(&c, path), 0);
    ck_assert_msg(config_load(&back, path, 0, NULL, err, sizeof err) == 0, "%s", err);
    unlink(path);
    ck_assert_int_eq(memcmp(&c, &back, sizeof c), 0);
    char *bad[] = {"debug.stop_rank=-2"};
    ck_assert_int_eq(config_load(&c, NULL, 1, bad, err, sizeof err), -1);
    ASSERT_HAS(err, "debug.stop_rank = -2 is out of range");
}
END_TEST

// The list-valued keys arrive parsed: shots as ints, the l2 sweep as
// doubles, optim.wd as rules, each fewshot.<name> split into train and test.
START_TEST(test_lists_parsed_at_load) {
    Config c;
    char *ov[] = {"fewshot.shots=1, 5,10", "fewshot.l2_sweep=0.5,32", "optim.wd=head/*:3, *:0.1",
                  "fewshot.a=tr-{0..1}.tar|te-0.tar"};
    ck_assert_msg(config_load(&c, NULL, 4, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.n_shots, 3);
    ck_assert_int_eq(c.shots[0], 1);
    ck_assert_int_eq(c.shots[2], 10);
    ck_assert_int_eq(c.n_l2_sweep, 2);
    ck_assert_double_eq(c.l2_sweep[0], 0.5);
    ck_assert_int_eq(c.n_wd, 2);
    ck_assert_str_eq(c.wd_rules[0].pattern, "head/*");
    ck_assert_double_eq(c.wd_rules[1].value, 0.1);
    ck_assert_str_eq(c.fewshot_train[0], "tr-{0..1}.tar");
    ck_assert_str_eq(c.fewshot_test[0], "te-0.tar");
    // config_set keeps them in step
    ck_assert_int_eq(config_set(&c, "fewshot", "shots", "25", "test", 0, err, sizeof err), 0);
    ck_assert_int_eq(c.n_shots, 1);
    ck_assert_int_eq(c.shots[0], 25);
    config_defaults(&c);
    ck_assert_int_eq(c.n_shots, 4);
    ck_assert_int_eq(c.n_wd, 2);   // head/kernel:3.0, */kernel:0.03
    ck_assert_int_eq(c.n_l2_sweep, 0);
}
END_TEST

// A config held in memory (a checkpoint's /config) loads like a file, its
// errors named by the caller's name and the line.
START_TEST(test_load_text) {
    Config c;
    char *ov[] = {"train.steps=700"};
    ck_assert_msg(config_load_text(&c, "checkpoint 'x.h5', dataset /config",
                                   "[model]\nwidth = 32\n", 1, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.width, 32);
    ck_assert_int_eq(c.steps, 700);
    ck_assert_int_eq(config_load_text(&c, "checkpoint 'x.h5', dataset /config",
                                      "[model]\nwidth = 32\nbogus = 1\n", 0, NULL, err, sizeof err), -1);
    ASSERT_HAS(err, "checkpoint 'x.h5', dataset /config:3: unknown key 'model.bogus'");
}
END_TEST

static Suite *keys_suite(void) {
    Suite *s = suite_create("keys");
    TCase *tc = tcase_create("keys");
    tcase_add_test(tc, test_every_key_documented);
    tcase_add_test(tc, test_fewshot_remove);
    tcase_add_test(tc, test_shots_validated);
    tcase_add_test(tc, test_short_run_hint);
    tcase_add_test(tc, test_debug_keys_written_when_set);
    tcase_add_test(tc, test_lists_parsed_at_load);
    tcase_add_test(tc, test_load_text);
    suite_add_tcase(s, tc);
    return s;
}

SM_TEST_MAIN(keys_suite)
