// The `softmoe` command: train, params, bench, eval, predict, export, inspect,
// shards, keys.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <unistd.h>

#include "core/common.h"
#include "core/config.h"
#include "core/jsonl.h"
#include "data/classes.h"
#include "data/shards.h"
#include "model/vit.h"
#include "train/bench.h"
#include "train/ckpt.h"
#include "train/memory.h"
#include "eval/eval.h"
#include "eval/predict.h"
#include "train/npz.h"
#include "train/train.h"
#include "dist/dist.h"

// One entry per command: its synopsis and what `softmoe CMD --help` says.
typedef struct { const char *name, *synopsis, *help; } Cmd;
static const Cmd CMDS[] = {
    {"train", "train CONFIG.ini [section.key=value ...]",
     "Trains the configured model. Writes train.workdir/config.ini (the resolved config),\n"
     "metrics.jsonl and ckpt-{step}.h5; re-running the same command resumes from the newest\n"
     "checkpoint. SIGTERM/SIGINT: finish the step, checkpoint, exit 0. Under mpirun: data\n"
     "and expert parallel over the ranks.\n"
     "example: softmoe train configs/fmnist_softmoe.ini train.steps=100 schedule.warmup_steps=20 "
     "optim.lr=5e-4\n"},
    {"params", "params CONFIG.ini [overrides]",
     "Parameters per group, `params: N`, forward GFLOP per image and the bytes one rank sends\n"
     "per step under MPI; builds the parameter table only, so any size works.\n"},
    {"bench", "bench CONFIG.ini [overrides]",
     "Times forward+backward+clip+Adam on random images (and the loader on shards):\n"
     "img/s, GFLOP/s and MFU against this machine's sgemm peak, measured between the steps.\n"
     "bench.steps=N sets the timed steps (default 5).\n"},
    {"eval", "eval CKPT.h5|CONFIG.ini [overrides]",
     "val/prec@1 and val/loss on data.val and few-shot accuracy on every\n"
     "fewshot.<name> = <train>|<test>, as JSON lines; the checkpoint's own config plus the\n"
     "overrides. A CONFIG.ini evaluates the freshly initialised model (a baseline).\n"},
    {"predict", "predict CKPT.h5 IMAGE|FOLDER... [--top K] [--json] [overrides]",
     "The top K (default 5) classes and probabilities of each image (JPEG or PNG; a folder:\n"
     "every file under it, sorted) under the checkpoint's model and data.pp_eval, in batches\n"
     "of eval.batch_size: softmax probabilities (sigmoid for sigmoid_xent). Class names come\n"
     "from the training data: classes.txt beside the shards, or a folder's class subfolders.\n"
     "One line per image: FILE:  CLASS NAME PROB ...; --json: one JSON object per image.\n"
     "Exit 1 when an image could not be read (the others are still reported).\n"},
    {"export", "export CKPT.h5 OUT.npz",
     "Writes the checkpoint's parameters to an .npz (numpy.load reads it): one float32 array\n"
     "per tensor under vmoe's names and shapes (Encoder/encoderblock_3/Moe/Mlp/Dense_0/kernel\n"
     "(E,D,M), ...), experts whole. train.init = OUT.npz loads it back.\n"},
    {"inspect", "inspect CKPT.h5",
     "Format version, step, world size, config and every parameter's name, shape, count.\n"},
    {"shards", "shards fmnist|folder|synth ...",
     "Writes WebDataset shards (PNG or JPEG + .cls members):\n"
     "  softmoe shards fmnist IDX_DIR OUT_DIR [PER_SHARD]   Fashion-MNIST idx files\n"
     "    -> OUT_DIR/train-000000.tar... and OUT_DIR/test-000000.tar...\n"
     "  softmoe shards folder ROOT OUT_PREFIX [PER_SHARD [SEED]]   ROOT/<class>/<image>,\n"
     "    samples shuffled across the shards (seeded), classes.txt beside them\n"
     "  softmoe shards synth OUT_PREFIX N [PER_SHARD]       N synthetic 320x240 JPEGs\n"},
    {"keys", "keys [SECTION]",
     "Every config key with its type, default and one line of documentation.\n"},
};
#define NCMDS (sizeof CMDS / sizeof *CMDS)

static void usage(FILE *f) {
    fprintf(f, "usage: softmoe <command> ... (softmoe <command> --help for one command)\n"
               "commands:\n");
    for (size_t i = 0; i < NCMDS; i++) fprintf(f, "  softmoe %s\n", CMDS[i].synopsis);
    fprintf(f, "example: softmoe train configs/fmnist_softmoe.ini train.steps=100 "
               "schedule.warmup_steps=20 optim.lr=5e-4\n");
}

static const Cmd *find_cmd(const char *name) {
    for (size_t i = 0; i < NCMDS; i++)
        if (!strcmp(CMDS[i].name, name)) return &CMDS[i];
    return NULL;
}

// A user-facing error that every MPI rank may meet at once (a bad config):
// printed once, by rank 0 (common.h), then the job ends.
static void user_error(int code, const char *msg) {
    if (sm_rank_nonzero) sleep(2);
    fprintf(stderr, "softmoe: error: %s\n", msg);
    fflush(stderr);
    if (sm_fatal_exit) sm_fatal_exit(code);
    exit(code);
}

static int is_ini(const struct dirent *e) {
    size_t len = strlen(e->d_name);
    return len > 4 && !strcmp(e->d_name + len - 4, ".ini");
}

// A config path that does not exist: say which configs do (in its directory,
// else in configs/), e.g. after `make train CONFIG=vit_s61`.
static void check_config_path(const char *path) {
    if (access(path, R_OK) == 0) return;
    char dir[4096], msg[8192];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    int n = snprintf(msg, sizeof msg, "config file '%s' cannot be read (%s)", path, strerror(errno));
    struct dirent **names = NULL;
    int k = scandir(dir, &names, is_ini, alphasort);
    if (k < 0) snprintf(dir, sizeof dir, "configs"), k = scandir(dir, &names, is_ini, alphasort);
    if (k > 0 && n > 0 && (size_t)n < sizeof msg)
        n += snprintf(msg + n, sizeof msg - (size_t)n, "; configs in %s/:", dir);
    for (int i = 0; i < k; i++) {
        const char *name = names[i]->d_name;
        if (n > 0 && (size_t)n < sizeof msg)
            n += snprintf(msg + n, sizeof msg - (size_t)n, " %.*s", (int)strlen(name) - 4, name);
        free(names[i]);
    }
    if (k >= 0) free(names);
    user_error(2, msg);
}

static void load_config(Config *c, int argc, char **argv) {
    char err[1024];
    check_config_path(argv[2]);
    if (config_load(c, argv[2], argc - 3, argv + 3, err, sizeof err) != 0 ||
        vit_check_config(c, err, sizeof err) != 0)
        user_error(2, err);
}

// `softmoe keys [SECTION]`: the key table with its documentation.
static int cmd_keys(int argc, char **argv) {
    const char *only = argc > 2 ? argv[2] : NULL;
    int shown = 0;
    for (int i = 0; i < config_nkeys(); i++) {
        ConfigKeyInfo k;
        config_key_info(i, &k);
        if (only && strcmp(only, k.section)) continue;
        char name[128];
        snprintf(name, sizeof name, "%s.%s", k.section, k.key);
        const char *doc = config_key_doc(k.section, k.key);
        printf("%-24s %-8s %-12s %s%s%s%s\n", name, k.type, k.def[0] ? k.def : "\"\"",
               doc ? doc : "(undocumented)", k.choices ? " [" : "", k.choices ? k.choices : "",
               k.choices ? "]" : "");
        shown++;
        if (!strcmp(k.section, "fewshot") && !strcmp(k.key, "per_class"))
            printf("%-24s %-8s %-12s %s\n", "fewshot.<name>", "string", "\"\"",
                   "a few-shot dataset: <train source>|<test source>; empty removes the set");
    }
    if (!shown) {
        fprintf(stderr, "softmoe: error: no config section [%s]\n", only);
        return 2;
    }
    return 0;
}

// Which group a tensor's parameters count towards in `softmoe params`.
static const char *group_of(const char *name) {
    if (!strncmp(name, "embedding/", 10)) return "embedding";
    if (!strcmp(name, "cls") || strstr(name, "posembed")) return "posemb+cls";
    if (!strncmp(name, "MAPHead_0/", 10)) return "map_head";
    if (!strncmp(name, "head/", 5)) return "head";
    if (strstr(name, "SelfAttention/")) return "attention";
    if (strstr(name, "/Moe/")) return "moe";
    if (strstr(name, "/Mlp/")) return "mlp";
    return "layernorm";
}

// What one rank sends per training step over MPI, for several rank counts
// at the config's global batch. All-to-alls: each Soft MoE block moves this
// rank's slots (E,B*P,D floats) to the experts' owners and back, forward and
// backward (4 all-to-alls), of which the share (ep-1)/ep leaves the rank;
// that is also the minimum, since a slot must reach its expert and return.
// Allreduces: the dense gradients over all W ranks, the expert gradients over
// the W/ep replicas; a ring allreduce sends 2(n-1)/n of the payload.
static void print_comm(const Vit *m, const Config *c) {
    const VitDims *d = &m->d;
    double dense = 0, expert = 0;
    for (int i = 0; i < m->pt.n; i++) {
        const ParamSpec *s = &m->pt.t[i];
        if (ptable_is_expert(s)) expert += (double)ptable_global_numel(s);
        else dense += (double)s->numel;
    }
    printf("communication per rank per step, global batch %d, dist.expert_parallel = %s:\n",
           c->batch_size, c->expert_parallel ? "as set" : "all ranks");
    printf("  %6s %10s %8s %18s %18s\n", "ranks", "batch/rank", "experts", "all-to-all MB",
           "allreduce MB");
    const int Ws[] = {2, 4, 8, 16, 32, 64, 128, 256};
    for (size_t k = 0; k < sizeof Ws / sizeof *Ws; k++) {
        int W = Ws[k], ep = c->expert_parallel ? c->expert_parallel : W;
        if (d->E == 0) ep = 1;
        if (c->batch_size % W || W % ep || (d->E && d->E % ep)) continue;
        double B = c->batch_size / W, rep = W / ep;
        // every router moves E * (groups per rank) * P rows (P: slots or capacity)
        double groups = d->E ? ceil(B / d->group) : 0;
        double a2a = 4.0 * d->n_moe * d->E * groups * d->rows * d->D * 4 * (ep - 1) / ep;
        double ar = dense * 4 * 2 * (W - 1) / W + expert / ep * 4 * 2 * (rep - 1) / rep;
        printf("  %6d %10.0f %8d %18.4f %18.4f\n", W, B, d->E ? d->E / ep : 0, a2a / 1e6, ar / 1e6);
    }
}

static int cmd_params(const Config *c) {
    Vit m;
    vit_build(&m, c);
    const char *groups[] = {"embedding", "posemb+cls", "attention", "mlp", "moe",
                            "layernorm", "map_head",   "head"};
    size_t total = 0;
    for (size_t g = 0; g < sizeof groups / sizeof *groups; g++) {
        size_t s = 0;
        for (int i = 0; i < m.pt.n; i++)
            if (!strcmp(group_of(m.pt.t[i].name), groups[g])) s += m.pt.t[i].numel;
        if (s) printf("  %-12s %14zu\n", groups[g], s);
        total += s;
    }
    printf("params: %zu\n", total);
    printf("tensors: %d\n", m.pt.n);
    printf("tokens: %d\n", m.d.N);
    printf("gflops_per_image: %.4f\n", vit_flops_per_image(&m.d) / 1e9);
    if (m.d.E)
        printf("moe: router %s, %d experts x %d rows per group of %d image%s (%s)\n",
               m.d.router->name, m.d.E, m.d.rows, m.d.group, m.d.group > 1 ? "s" : "",
               m.d.router->rows_are);
    MemEstimate me;
    char mem[256], err[512];
    int mb = train_micro_batch(c, 1, err, sizeof err);
    if (mb < 0) sm_die("%s", err);
    mem_estimate(&m, c, c->batch_size, mb, &me);
    mem_format(&me, mem, sizeof mem);
    printf("memory: %s, at train.batch_size %d, micro-batch %d, on one rank\n", mem,
           c->batch_size, mb);
    print_comm(&m, c);
    ptable_free(&m.pt);
    return 0;
}

static int cmd_shards(int argc, char **argv) {
    if (argc < 5 || (strcmp(argv[2], "fmnist") && strcmp(argv[2], "folder") &&
                     strcmp(argv[2], "synth"))) {
        fprintf(stderr, "softmoe: error: usage: softmoe shards fmnist IDX_DIR OUT_DIR [PER_SHARD]"
                        " | softmoe shards folder ROOT OUT_PREFIX [PER_SHARD [SEED]]"
                        " | softmoe shards synth OUT_PREFIX N [PER_SHARD]\n");
        return 2;
    }
    int per = argc > 5 ? atoi(argv[5]) : 10000;
    if (per < 1) {
        fprintf(stderr, "softmoe: error: PER_SHARD must be a positive integer, got '%s'\n", argv[5]);
        return 2;
    }
    char err[1024], prefix[4096];
    if (!strcmp(argv[2], "synth")) {
        long want = atol(argv[4]);
        if (want < 1) {
            fprintf(stderr, "softmoe: error: N must be a positive integer, got '%s'\n", argv[4]);
            return 2;
        }
        long n = shards_write_synthetic(argv[3], want, per, 320, 240, 10, 0, err, sizeof err);
        if (n < 0) sm_die("%s", err);
        printf("wrote %ld synthetic JPEG samples to %s-*.tar\n", n, argv[3]);
        return 0;
    }
    if (!strcmp(argv[2], "folder")) {
        uint64_t seed = argc > 6 ? strtoull(argv[6], NULL, 10) : 0;
        long n = shards_write_folder(argv[3], argv[4], per, seed, err, sizeof err);
        if (n < 0) sm_die("%s", err);
        printf("wrote %ld samples from %s to %s-*.tar (shuffled, seed %llu) and classes.txt beside "
               "them\n", n, argv[3], argv[4], (unsigned long long)seed);
        return 0;
    }
    const char *split[2][2] = {{"train", "train"}, {"t10k", "test"}};
    for (int i = 0; i < 2; i++) {
        snprintf(prefix, sizeof prefix, "%s/%s", argv[4], split[i][1]);
        long n = shards_write_idx(argv[3], split[i][0], prefix, per, err, sizeof err);
        if (n < 0) sm_die("%s", err);
        printf("wrote %ld %s samples to %s-*.tar\n", n, split[i][1], prefix);
    }
    // Fashion-MNIST's label names (its README), for predict and warnings
    char *names[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot"};
    snprintf(prefix, sizeof prefix, "%s/classes.txt", argv[4]);
    if (classes_write(prefix, names, 10, err, sizeof err) != 0) sm_die("%s", err);
    printf("wrote %s\n", prefix);
    return 0;
}

// `softmoe eval`: the checkpoint's own config (plus overrides) and params.
static int cmd_eval(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "softmoe: error: usage: softmoe eval CKPT.h5|CONFIG.ini [overrides]\n");
        return 2;
    }
    const char *src = argv[2];
    int from_ini = strlen(src) > 4 && !strcmp(src + strlen(src) - 4, ".ini");
    if (from_ini) check_config_path(src);
    char err[1024];
    CkptInfo info = {0};
    Config c;
    int rc;
    if (from_ini) {
        rc = config_load(&c, src, argc - 3, argv + 3, err, sizeof err);
    } else {
        // the config stored in the checkpoint, through the normal loader
        Vit probe;
        memset(&probe, 0, sizeof probe);
        if (ckpt_load(src, &probe.pt, NULL, NULL, NULL, &info, err, sizeof err) != 0) {
            fprintf(stderr, "softmoe: error: %s\n", err);
            return 1;
        }
        char name[CFG_PATH + 64];
        snprintf(name, sizeof name, "checkpoint '%s', dataset /config", src);
        rc = config_load_text(&c, name, info.config, argc - 3, argv + 3, err, sizeof err);
        ckpt_info_free(&info);  // loaded again below, with the parameters
        info = (CkptInfo){0};
    }
    if (rc != 0 || vit_check_config(&c, err, sizeof err) != 0) {
        fprintf(stderr, "softmoe: error: %s\n", err);
        return 2;
    }
    Vit m;
    vit_build(&m, &c);
    vit_alloc(&m, c.eval_batch_size);
    vit_init(&m, c.seed);
    if (!from_ini && ckpt_load(src, &m.pt, m.params, NULL, NULL, &info, err, sizeof err) != 0) {
        fprintf(stderr, "softmoe: error: %s\n", err);
        return 1;
    }
    long step = from_ini ? 0 : info.step;
    ckpt_info_free(&info);
    double p1, loss;
    if (eval_val(&m, &c, &p1, &loss, NULL)) {
        JsonLine j;
        jsonl_begin(&j, stdout, "standard output");
        jsonl_int(&j, "step", step);
        jsonl_num(&j, "val/prec@1", p1, 6);
        jsonl_num(&j, "val/loss", loss, 6);
        jsonl_end(&j);
    }
    eval_fewshot(&m, &c, step, stdout, "standard output", 0);
    if (!c.val[0] && !c.n_fewshot)
        fprintf(stderr, "softmoe: nothing to evaluate: set data.val or fewshot.<name>\n");
    vit_free(&m);
    return 0;
}

// `softmoe export CKPT.h5 OUT.npz`: parameters under vmoe's names.
static int cmd_export(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "softmoe: error: usage: softmoe export CKPT.h5 OUT.npz\n");
        return 2;
    }
    Config c;
    long step;
    char err[1024];
    if (predict_ckpt_config(argv[2], 0, NULL, &c, &step, err, sizeof err) != 0) {
        fprintf(stderr, "softmoe: error: %s\n", err);
        return 1;
    }
    Vit m;
    vit_build(&m, &c);
    m.params = sm_aligned(m.pt.total * sizeof(float));
    CkptInfo info = {0};
    if (ckpt_load(argv[2], &m.pt, m.params, NULL, NULL, &info, err, sizeof err) != 0 ||
        npz_write_params(argv[3], &m.pt, m.params, err, sizeof err) != 0) {
        fprintf(stderr, "softmoe: error: %s\n", err);
        return 1;
    }
    ckpt_info_free(&info);
    printf("wrote %d arrays (%zu parameters, step %ld) to %s\n", m.pt.n, ptable_global_total(&m.pt),
           step, argv[3]);
    free(m.params);
    ptable_free(&m.pt);
    return 0;
}

// The environment variables that were test hooks before the [debug] keys
// and bench.steps: set, they would now be ignored without a word.
static void refuse_old_hooks(void) {
    static const char *old[][2] = {
        {"SOFTMOE_STOP_AT_STEP", "debug.stop_at_step"}, {"SOFTMOE_STOP_RANK", "debug.stop_rank"},
        {"SOFTMOE_FAIL_AT_STEP", "debug.fail_at_step"}, {"SOFTMOE_FAIL_RANK", "debug.fail_rank"},
        {"SOFTMOE_POISON_AT_STEP", "debug.poison_at_step"},
        {"SOFTMOE_CRASH_BEFORE_RENAME", "debug.crash_before_rename"},
        {"SOFTMOE_BENCH_STEPS", "bench.steps"}};
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++)
        if (getenv(old[i][0]))
            sm_die("%s is no longer read: pass %s=%s as an override instead", old[i][0],
                   old[i][1], getenv(old[i][0]));
}

static int run(int argc, char **argv) {
    refuse_old_hooks();
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        (!strcmp(argv[1], "help") && argc < 3)) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    // softmoe CMD --help, softmoe help CMD
    int want_help = !strcmp(cmd, "help") || (argc > 2 && (!strcmp(argv[2], "--help") ||
                                                          !strcmp(argv[2], "-h")));
    if (want_help) {
        const Cmd *h = find_cmd(!strcmp(cmd, "help") ? argv[2] : cmd);
        if (!h) {
            fprintf(stderr, "softmoe: error: unknown command '%s'\n", !strcmp(cmd, "help") ? argv[2] : cmd);
            usage(stderr);
            return 2;
        }
        printf("usage: softmoe %s\n%s", h->synopsis, h->help);
        return 0;
    }
    if (!strcmp(cmd, "keys")) return cmd_keys(argc, argv);
    if (!strcmp(cmd, "predict")) return predict_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "export")) return cmd_export(argc, argv);
    if (!strcmp(cmd, "shards")) return cmd_shards(argc, argv);
    if (!strcmp(cmd, "eval")) return cmd_eval(argc, argv);
    if (!strcmp(cmd, "inspect")) {
        char err[1024];
        if (argc < 3) {
            fprintf(stderr, "softmoe: error: usage: softmoe inspect CKPT.h5\n");
            return 2;
        }
        if (ckpt_inspect(argv[2], err, sizeof err) != 0) {
            fprintf(stderr, "softmoe: error: %s\n", err);
            return 1;
        }
        return 0;
    }
    if (strcmp(cmd, "train") && strcmp(cmd, "params") && strcmp(cmd, "bench")) {
        fprintf(stderr, "softmoe: error: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    if (argc < 3) {
        fprintf(stderr, "softmoe: error: '%s' needs a config file\n", cmd);
        usage(stderr);
        return 2;
    }
    Config c;
    load_config(&c, argc, argv);
    if (!strcmp(cmd, "params")) return cmd_params(&c);
    if (!strcmp(cmd, "bench")) {
        bench_run(&c);
        return 0;
    }
    TrainResult r;
    train_run(&c, 0, &r);
    return 0;
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    // Only training is distributed; under mpirun every other command runs
    // once, on rank 0, as a single process holding every expert.
    if (dist_world() > 1 && (argc < 2 || strcmp(argv[1], "train"))) {
        if (dist_rank() != 0) {
            dist_finalize();
            return 0;
        }
        fprintf(stderr, "softmoe: only train runs distributed; rank 0 runs this command alone\n");
        dist_solo();
    }
    int rc = run(argc, argv);
    dist_finalize();
    return rc;
}
