// Tests for src/core/config.c: defaults, includes and override precedence,
// variant resolution, error messages naming file:line:key, validation, and
// the written config reloading to an identical Config.
#include "core/config.h"
#include "testutil.h"

#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];
static char err[1024];

static void make_dir(void) {
    snprintf(dir, sizeof dir, "/tmp/test_config.XXXXXX");
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

// Writes text to dir/name and returns the full path (static buffer per slot).
static const char *put(const char *name, const char *text) {
    static char paths[8][512];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 512, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
    return p;
}

// Loads one file with no overrides and expects failure; returns the message.
static const char *load_fails(const char *name, const char *text) {
    Config c;
    ck_assert_msg(config_load(&c, put(name, text), 0, NULL, err, sizeof err) == -1,
                  "%s loaded but should have failed", name);
    return err;
}

#define ASSERT_HAS(msg, part) \
    ck_assert_msg(strstr((msg), (part)) != NULL, "message '%s' lacks '%s'", (msg), (part))

START_TEST(test_defaults) {
    Config c;
    config_defaults(&c);
    ck_assert_int_eq(c.width, 64);
    ck_assert_int_eq(c.depth, 4);
    ck_assert_int_eq(c.heads, 4);
    ck_assert_int_eq(c.mlp_dim, 256);
    ck_assert_int_eq(c.image_size, 28);
    ck_assert_int_eq(c.slots, 1);
    ck_assert_int_eq(c.shared_init, 1);
    ck_assert_int_eq(c.qk_norm, 0);
    ck_assert_str_eq(c.pool, "gap");
    ck_assert_str_eq(c.source, "synthetic");
    ck_assert_str_eq(c.wd, "head/kernel:3.0, */kernel:0.03");
    ck_assert_str_eq(c.resume, "latest");
    ck_assert_double_eq(c.lr, 1e-3);
    ck_assert_double_eq(c.b2, 0.999);
    ck_assert_int_eq(c.warmup_steps, 100);
    ck_assert_int_eq(c.steps, 1000);
    ck_assert_int_eq(c.eval_batch_size, 64);
    ck_assert_str_eq(c.fewshot_shots, "1,5,10,25");
    ck_assert_double_eq(c.fewshot_l2, 1024);
    // No file at all: the defaults must pass validation.
    Config d;
    ck_assert_msg(config_load(&d, NULL, 0, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(memcmp(&c, &d, sizeof c), 0);
}
END_TEST

START_TEST(test_include_precedence) {
    char sub[128];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    put("sub/inner.ini", "[optim]\nwd = inner:1\nb1 = 0.5\n");
    // inner.ini is found next to base.ini, not in the current directory.
    put("sub/base.ini", "include = inner.ini\n[model]\nwidth = 128\ndepth = 2\nheads = 8\n"
                        "[optim]\nlr = 0.5\nwd = base:2\n");
    const char *main_ini = put("main.ini", "include = sub/base.ini\n; comment\n[model]\n"
                                           "width = 96  ; inline comment\n[optim]\nlr = 0.125\n");
    char *ov[] = {"optim.lr=0.25", "model.depth = 3"};
    Config c;
    ck_assert_msg(config_load(&c, main_ini, 2, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.width, 96);        // main file beats its include
    ck_assert_int_eq(c.depth, 3);         // override beats both
    ck_assert_int_eq(c.heads, 8);         // only in the include
    ck_assert_double_eq(c.lr, 0.25);      // override beats the file
    ck_assert_str_eq(c.wd, "base:2");       // includer beats nested include
    ck_assert_double_eq(c.b1, 0.5);       // only in the nested include
    ck_assert_int_eq(c.mlp_dim, 256);     // untouched default
}
END_TEST

START_TEST(test_variant) {
    Config c;
    const char *p = put("v.ini", "[model]\nvariant = S/16\nimage_size = 224\n");
    ck_assert_msg(config_load(&c, p, 0, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.width, 384);
    ck_assert_int_eq(c.depth, 12);
    ck_assert_int_eq(c.heads, 6);
    ck_assert_int_eq(c.mlp_dim, 1536);
    ck_assert_int_eq(c.patch, 16);

    // Explicit keys win, whether given before the variant or as an override.
    p = put("v2.ini", "[model]\nwidth = 768\ndepth = 2\nvariant = B\nimage_size = 224\n");
    char *ov[] = {"model.heads=4", "model.variant=S/32"};
    ck_assert_msg(config_load(&c, p, 2, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.width, 768);
    ck_assert_int_eq(c.depth, 2);
    ck_assert_int_eq(c.heads, 4);
    ck_assert_int_eq(c.mlp_dim, 1536);  // from S, the last variant given
    ck_assert_int_eq(c.patch, 32);

    ASSERT_HAS(load_fails("v3.ini", "[model]\nvariant = X/16\n"), "v3.ini:2:");
    ASSERT_HAS(err, "model.variant");
    ASSERT_HAS(load_fails("v4.ini", "[model]\nvariant = S/abc\n"), "model.variant");
}
END_TEST

START_TEST(test_unknown_key) {
    const char *m = load_fails("typo.ini", "[model]\nwidth = 32\nwidht = 64\n");
    ASSERT_HAS(m, "typo.ini:3:");
    ASSERT_HAS(m, "'model.widht'");
    ASSERT_HAS(m, "did you mean 'model.width'");
    // Nothing close: no suggestion at all.
    m = load_fails("far.ini", "[train]\nzzzzzzzzzz = 1\n");
    ASSERT_HAS(m, "far.ini:2:");
    ck_assert_ptr_null(strstr(m, "did you mean"));
    // Per-dataset fewshot keys must name a train and a test source.
    ASSERT_HAS(load_fails("fs.ini", "[fewshot]\ncifar10 = x\n"), "fs.ini:2: fewshot.cifar10 = 'x'");
    // A key before any section other than include.
    ASSERT_HAS(load_fails("top.ini", "width = 3\n"), "top.ini:1:");
}
END_TEST

START_TEST(test_unknown_section) {
    const char *m = load_fails("sec.ini", "[model]\nwidth = 32\n\n[modle]\ndepth = 2\n");
    ASSERT_HAS(m, "sec.ini:4:");  // the header line, before any of its keys
    ASSERT_HAS(m, "[modle]");
    ASSERT_HAS(m, "did you mean [model]");
}
END_TEST

START_TEST(test_bad_values) {
    ASSERT_HAS(load_fails("i.ini", "[model]\nwidth = 12x\n"), "i.ini:2: model.width = '12x'");
    ASSERT_HAS(load_fails("e.ini", "[model]\npool = avg\n"), "e.ini:2: model.pool = 'avg'");
    ASSERT_HAS(err, "gap|tok|map");
    ASSERT_HAS(load_fails("b.ini", "[moe]\nshared_init = maybe\n"), "b.ini:2: moe.shared_init");
    ASSERT_HAS(load_fails("n.ini", "[model]\n\nwidth = -4\n"), "n.ini:3: model.width");
    ASSERT_HAS(load_fails("d.ini", "[optim]\nlr = 1e-3x\n"), "optim.lr");
    ASSERT_HAS(load_fails("u.ini", "[train]\nseed = -1\n"), "train.seed");
    ASSERT_HAS(load_fails("s.ini", "[model]\nwidth = 32\n[model\n"), "s.ini:3: syntax error");
    // An indented line is not a continuation of the previous value.
    ASSERT_HAS(load_fails("c.ini", "[data]\ntrain = a\n  b\n"), "c.ini:3:");
    Config c;
    char *ov[] = {"moe.shared_init=no", "moe.slots=auto", "data.source=shards"};
    ck_assert_msg(config_load(&c, NULL, 3, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.shared_init, 0);
    ck_assert_int_eq(c.slots, 0);
    ck_assert_str_eq(c.source, "shards");
}
END_TEST

START_TEST(test_include_errors) {
    const char *m = load_fails("inc.ini", "; base first\ninclude = missing.ini\n[model]\n");
    ASSERT_HAS(m, "inc.ini:2:");
    ASSERT_HAS(m, "missing.ini");
    put("b.ini", "[model]\nwidth = 32\ninclude = a.ini\n");  // not at the top: is model.include
    ASSERT_HAS(load_fails("a.ini", "include = b.ini\n"), "model.include");
    put("y.ini", "include = x.ini\n");
    m = load_fails("x.ini", "include = y.ini\n[model]\n");
    ASSERT_HAS(m, "y.ini:1:");
    ASSERT_HAS(m, "cycle");
    // Only missing top-level file: names it.
    Config c;
    ck_assert_int_eq(config_load(&c, "/nonexistent/none.ini", 0, NULL, err, sizeof err), -1);
    ASSERT_HAS(err, "/nonexistent/none.ini");
}
END_TEST

START_TEST(test_overrides) {
    Config c;
    char *bad[] = {"modelwidth=3", "model.width", ".width=3", "model.=3", "width=3.x"};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(config_load(&c, NULL, 1, &bad[i], err, sizeof err), -1);
        ASSERT_HAS(err, "command line: malformed override");
    }
    char *typo[] = {"model.widht=3"};
    ck_assert_int_eq(config_load(&c, NULL, 1, typo, err, sizeof err), -1);
    ASSERT_HAS(err, "command line: unknown key 'model.widht' (did you mean 'model.width'?)");
    char *val[] = {"model.width=abc"};
    ck_assert_int_eq(config_load(&c, NULL, 1, val, err, sizeof err), -1);
    ASSERT_HAS(err, "command line: model.width = 'abc'");
    // config_set on its own, as other modules may call it.
    config_defaults(&c);
    ck_assert_int_eq(config_set(&c, "train", "steps", "77", "test", 0, err, sizeof err), 0);
    ck_assert_int_eq(c.steps, 77);
}
END_TEST

START_TEST(test_validation) {
    const char *m = load_fails("w.ini", "[model]\nwidth = 30\nheads = 4\n");
    ASSERT_HAS(m, "w.ini");
    ASSERT_HAS(m, "model.width = 30");
    ASSERT_HAS(m, "model.heads = 4");
    ASSERT_HAS(load_fails("p.ini", "[model]\npatch = 5\n"), "model.image_size");
    ASSERT_HAS(load_fails("sc.ini", "[model]\nwidth = 30\nheads = 6\nposemb = sincos2d\n"), "sincos2d");
    ASSERT_HAS(load_fails("b1.ini", "[optim]\nb1 = 1.0\n"), "optim.b1");
    ASSERT_HAS(load_fails("ep.ini", "[optim]\neps = 0\n"), "optim.eps");
    ASSERT_HAS(load_fails("cd.ini", "[train]\nsteps = 10\n[schedule]\nwarmup_steps = 0\ncooldown_steps = 11\n"),
               "schedule.cooldown_steps");
    ASSERT_HAS(load_fails("wu.ini", "[train]\nsteps = 50\n"), "schedule.warmup_steps");
    ASSERT_HAS(load_fails("bs.ini", "[train]\nbatch_size = 0\n"), "train.batch_size");
    // warmup beyond steps is fine when steps = 0 (nothing to train).
    Config c;
    char *ov[] = {"train.steps=0"};
    ck_assert_msg(config_load(&c, NULL, 1, ov, err, sizeof err) == 0, "%s", err);
}
END_TEST

START_TEST(test_round_trip) {
    char longpath[700];
    memset(longpath, 'p', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    char text[2048];
    // Lines longer than inih's default 200 bytes must survive whole.
    snprintf(text, sizeof text,
             "[model]\nvariant = Ti/4\nqk_norm = yes\npool = map\n[moe]\nexperts = 8\nslots = auto\n"
             "capacity_factor = 1.5\nlayers = every:2\n[data]\ntrain = %s\n[optim]\nlr = 0.1\n"
             "b2 = 0.95\nclip = 0.33333333333333331\n"
             "[train]\nseed = 18446744073709551615\nworkdir = runs/x y\n[schedule]\ndecay = cosine\n",
             longpath);
    Config a, b;
    ck_assert_msg(config_load(&a, put("r.ini", text), 0, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(a.train, longpath);
    ck_assert_int_eq(a.width, 192);
    ck_assert_int_eq(a.slots, 0);
    ck_assert_uint_eq(a.seed, UINT64_MAX);

    size_t need = config_to_ini(&a, NULL, 0);
    char *full = malloc(need + 1), small[16];
    ck_assert_ptr_nonnull(full);
    ck_assert_uint_eq(config_to_ini(&a, full, need + 1), need);
    ck_assert_uint_eq(strlen(full), need);
    ck_assert_uint_eq(config_to_ini(&a, small, sizeof small), need);  // snprintf-like
    ck_assert_uint_eq(strlen(small), sizeof small - 1);
    ASSERT_HAS(full, "slots = auto\n");
    ASSERT_HAS(full, "b2 = 0.95\n");
    ASSERT_HAS(full, "[eval]\nevery = 0\n");

    char out[600];
    snprintf(out, sizeof out, "%s/resolved.ini", dir);
    ck_assert_int_eq(config_write(&a, out), 0);
    ck_assert_msg(config_load(&b, out, 0, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
    // The written file with the defaults reloads identically too.
    config_defaults(&a);
    ck_assert_int_eq(config_write(&a, out), 0);
    ck_assert_msg(config_load(&b, out, 0, NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
    ck_assert_int_eq(config_write(&a, "/nonexistent/dir/x.ini"), -1);
    free(full);
}
END_TEST

// Loads text as a config plus overrides, writes the resolved config, reloads
// it and requires the identical Config (bytes, so every value).
static void round_trips(const char *text, int n, char **ov) {
    Config a, b;
    const char *in = put("rt_in.ini", text);
    ck_assert_msg(config_load(&a, in, n, ov, err, sizeof err) == 0, "%s", err);
    char out[600];
    snprintf(out, sizeof out, "%s/rt_out.ini", dir);
    ck_assert_int_eq(config_write(&a, out), 0);
    ck_assert_msg(config_load(&b, out, 0, NULL, err, sizeof err) == 0, "reload: %s", err);
    ck_assert_msg(memcmp(&a, &b, sizeof a) == 0, "'%s' did not reload to the same values", text);
}

static void override_fails(const char *ov, const char *part) {
    Config c;
    char *v[] = {(char *)ov};
    ck_assert_msg(config_load(&c, NULL, 1, v, err, sizeof err) == -1, "'%s' was accepted", ov);
    ASSERT_HAS(err, "command line: ");
    ASSERT_HAS(err, part);
}

// Item 7 of issue 11: values an INI line cannot carry are refused where they
// are given; everything accepted reloads to the same values.
START_TEST(test_round_trip_values) {
    override_fails("data.train=;x.tar", "data.train");
    ASSERT_HAS(err, "begins with ';' or '#'");
    override_fails("data.train=#x.tar", "data.train");
    override_fails("data.train=a.tar ;b.tar", "' ;' or ' #'");
    override_fails("data.val=a.tar\t#b", "data.val");
    override_fails("train.workdir=a\nb", "control character");
    override_fails("train.workdir=a\rb", "train.workdir");
    override_fails("train.workdir=a\x0b", "train.workdir");  // inih strips \v as white space
    override_fails("model.width=\x0c" "5", "model.width");
    override_fails("fewshot.pets=a|b ;c", "fewshot.pets");
    override_fails("fewshot.pets=;a|b", "fewshot.pets");
    override_fails("fewshot.a:b=x|y", "letters, digits");  // ':' would split the written key
    override_fails("fewshot.[x]=x|y", "letters, digits");
    override_fails("fewshot.\"q\"=x|y", "letters, digits");  // would break metrics.jsonl
    // In a file the same characters are comments or stripped white space,
    // and a comment-only value is an empty one.
    round_trips("[data]\ntrain = ;x.tar\nval = a.tar ;b\n", 0, NULL);
    char *ok[] = {"data.train=a;b#c.tar", "train.workdir=runs/a\tb  ", "data.val=  x,y ",
                  "fewshot.pets=a;b|c#d", "fewshot.x.y=p|q", "optim.lr=-0", "optim.clip=+1e-300",
                  "train.seed=007", "moe.shared_init=YES", "schedule.timescale=1e300",
                  "model.variant=S/+16", "model.image_size=224"};
    round_trips("[train]\nsteps = 100\n", 12, ok);
    // A shorter value replacing a longer one leaves no stale bytes behind.
    char *shorter[] = {"fewshot.pets=short|s"};
    round_trips("[fewshot]\npets = a-much-longer-train-set|and-test-set\n", 1, shorter);
}
END_TEST

// Item 8: a key or section given twice in one file is an error naming both
// lines; an including file or the command line overriding is not.
START_TEST(test_duplicates) {
    const char *m = load_fails("dk.ini", "[model]\nwidth = 32\ndepth = 2\nwidth = 64\n");
    ASSERT_HAS(m, "dk.ini:4: duplicate key 'model.width'");
    ASSERT_HAS(m, "line 2");
    m = load_fails("ds.ini", "[model]\nwidth = 32\n[train]\nsteps = 5000\n[model]\ndepth = 2\n");
    ASSERT_HAS(m, "ds.ini:5: duplicate section [model]");
    ASSERT_HAS(m, "line 1");
    m = load_fails("df.ini", "[fewshot]\npets = a|b\nshots = 1\npets = c|d\n");
    ASSERT_HAS(m, "df.ini:4: duplicate key 'fewshot.pets'");
    ASSERT_HAS(m, "line 2");
    Config c;  // an empty known section is fine

    ck_assert_msg(config_load(&c, put("em.ini", "[moe]\n[model]\nwidth = 32\n"), 0, NULL, err,
                              sizeof err) == 0, "%s", err);
    m = load_fails("us.ini", "[model]\nwidth = 32\n[modle]\n");  // unknown even without keys
    ASSERT_HAS(m, "us.ini:3: unknown section [modle]");
    // Overrides: an including file, and the command line, twice.
    put("base_d.ini", "[model]\nwidth = 32\n[fewshot]\npets = a|b\n");
    const char *top = put("top_d.ini", "include = base_d.ini\n[model]\nwidth = 48\n[fewshot]\npets = c|d\n");
    char *ov[] = {"model.width=64", "model.width=96", "fewshot.pets=e|f", "fewshot.pets=g|h"};
    ck_assert_msg(config_load(&c, top, 4, ov, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(c.width, 96);
    ck_assert_int_eq(c.n_fewshot, 1);
    ck_assert_str_eq(c.fewshot_data[0], "g|h");
}
END_TEST

// Item 8: what is not a small regular text file is refused, naming it.
START_TEST(test_not_a_config_file) {
    Config c;
    ck_assert_int_eq(config_load(&c, "/dev/zero", 0, NULL, err, sizeof err), -1);
    ASSERT_HAS(err, "/dev/zero: cannot read config file: is a character device");
    const char *m = load_fails("iz.ini", "include = /dev/zero\n[model]\n");
    ASSERT_HAS(m, "iz.ini:1: cannot read included file '/dev/zero': is a character device");
    char fifo[600];
    snprintf(fifo, sizeof fifo, "%s/fifo.ini", dir);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);  // no writer: a blocking open would hang
    ck_assert_int_eq(config_load(&c, fifo, 0, NULL, err, sizeof err), -1);
    ASSERT_HAS(err, "fifo.ini: cannot read config file: is a FIFO");
    ASSERT_HAS(load_fails("if.ini", "include = fifo.ini\n"), "if.ini:1: cannot read included file");
    ASSERT_HAS(err, "is a FIFO");
    m = load_fails("idir.ini", "include = .\n[model]\n");
    ASSERT_HAS(m, "idir.ini:1: cannot read included file");
    ASSERT_HAS(m, "is a directory");
    // Over the 1 MiB cap: one long comment makes a big but otherwise fine file.
    size_t big = ((size_t)1 << 20) + 1;
    char *text = malloc(big + 1);
    ck_assert_ptr_nonnull(text);
    memset(text, '\n', big);
    text[big] = '\0';
    m = load_fails("big.ini", text);
    ASSERT_HAS(m, "big.ini: cannot read config file: is 1048577 bytes");
    ASSERT_HAS(m, "1 MiB");
    text[big - 1] = '\0';  // exactly 1 MiB of empty lines loads
    ck_assert_msg(config_load(&c, put("cap.ini", text), 0, NULL, err, sizeof err) == 0, "%s", err);
    free(text);
    // A NUL byte inside a value: "width = 6\0 4" must not read as 6.
    char nul_path[600];
    snprintf(nul_path, sizeof nul_path, "%s/nul.ini", dir);
    FILE *f = fopen(nul_path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite("[model]\nwidth = 6\0 4\n", 1, 21, f), 21);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(config_load(&c, nul_path, 0, NULL, err, sizeof err), -1);
    ASSERT_HAS(err, "nul.ini:2: contains a NUL byte");
}
END_TEST

// Item 8: keys whose values other modules parse name their file and line
// (or the command line) too.
START_TEST(test_module_key_origin) {
    const char *m = load_fails("ml.ini", "[moe]\nexperts = 4\nlayers = every:x\n");
    ASSERT_HAS(m, "ml.ini:3: moe.layers");
    Config c;
    char *layers[] = {"moe.experts=4", "moe.layers=1,x"};
    ck_assert_int_eq(config_load(&c, NULL, 2, layers, err, sizeof err), -1);
    ASSERT_HAS(err, "command line: moe.layers");
    m = load_fails("wd.ini", "[model]\nwidth = 32\n[optim]\nwd = head/kernel\n");
    ASSERT_HAS(m, "wd.ini:4: optim.wd");
    override_fails("optim.wd=*/kernel:x", "optim.wd");
    m = load_fails("pp.ini", "[data]\nsource = shards\npp_train = resize(28)|spin(3)\n");
    ASSERT_HAS(m, "pp.ini:3: data.pp_train");
    ASSERT_HAS(m, "spin");
    override_fails("data.pp_eval=central_crop(", "data.pp_eval");
    ASSERT_HAS(load_fails("ro.ini", "[moe]\nexperts = 4\n\nrouter = bogus\n"), "ro.ini:4: moe.router");
    // If the model refuses a router setting, the error names where it was given.
    char *ov[] = {"moe.experts=4", "moe.router=tokens_choice"};
    if (config_load(&c, NULL, 2, ov, err, sizeof err) != 0) ASSERT_HAS(err, "command line: moe.router");
    ASSERT_HAS(load_fails("dp.ini", "[model]\ndepth = 100000\n"), "dp.ini:2: model.depth");
}
END_TEST

static Suite *config_suite(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, make_dir, remove_dir);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_include_precedence);
    tcase_add_test(tc, test_variant);
    tcase_add_test(tc, test_unknown_key);
    tcase_add_test(tc, test_unknown_section);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_include_errors);
    tcase_add_test(tc, test_overrides);
    tcase_add_test(tc, test_validation);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_round_trip_values);
    tcase_add_test(tc, test_duplicates);
    tcase_add_test(tc, test_not_a_config_file);
    tcase_add_test(tc, test_module_key_origin);
    suite_add_tcase(s, tc);
    return s;
}

SM_TEST_MAIN(config_suite)
