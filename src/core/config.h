// The run configuration: every key of the config files (softmoe keys), typed, with
// defaults. Parsed from INI files with libinih (config.c), `include = base.ini`
// pulls a base file first, `section.key=value` overrides come last. Unknown
// sections/keys and unparsable values stop the program naming file:line:key.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define CFG_STR 256   // short strings (names, patterns, pp chains)
#define CFG_PATH 1024 // paths and shard lists
#define CFG_MAX_FEWSHOT 8

typedef struct {
    // [model]
    char variant[CFG_STR];  // "" or Ti|S|B|L|H with optional "/patch", e.g. "S/16"
    int width;              // D
    int depth;              // L
    int heads;              // H
    int mlp_dim;            // M
    int patch;              // patch size (pixels)
    int image_size;         // square input resolution
    int channels;           // C
    int classes;            // K
    char pool[CFG_STR];     // gap | tok | map
    char posemb[CFG_STR];   // learn | sincos2d
    int qk_norm;            // bool
    char loss[CFG_STR];     // softmax_xent | sigmoid_xent

    // [moe]
    int experts;              // E (0 = dense)
    int slots;                // P (0 when "auto")
    double capacity_factor;   // used when slots = auto
    char layers[CFG_STR];     // last_half | last:K | every:K | list "6,7,8"
    int shared_init;          // bool
    char router[CFG_STR];     // one of SM_ROUTER_CHOICES (src/model/router_*.c)
    int k;                    // tokens_choice: experts per token (1|2)
    int bpr;                  // tokens_choice: batch priority routing (bool)
    int group_size;           // sparse routers: images per routing group
    int capacity_multiple_of; // sparse routers: capacity rounded up to a multiple
    double noise_std;         // sparse routers: train-time logit noise std = noise_std / E
    double importance_weight; // tokens_choice: importance loss weight
    double load_weight;       // tokens_choice: load loss weight
    char dispatch[CFG_STR];   // soft | uniform (ablation)
    char combine[CFG_STR];    // soft | uniform (ablation)

    // [data]
    char source[CFG_STR];        // synthetic | shards | folder
    char train[CFG_PATH];
    char val[CFG_PATH];
    char val_labels[CFG_PATH];   // labels file of a flat validation folder
    char pp_train[CFG_STR];
    char pp_eval[CFG_STR];
    int threads;
    int shuffle_buffer;

    // [optim]
    double lr, b1, b2, eps;
    double clip;                 // 0 = off
    char wd[CFG_PATH];           // "pattern:value, pattern:value"

    // [schedule]
    long warmup_steps;
    char decay[CFG_STR];         // rsqrt | cosine | linear | constant
    double timescale;            // rsqrt timescale (steps)
    long cooldown_steps;

    // [train]
    int batch_size;              // global
    int microbatch;              // images per rank per forward/backward (0: the per-rank batch)
    long steps;
    uint64_t seed;
    char workdir[CFG_PATH];
    int log_every;
    int ckpt_every;
    int keep_ckpts;
    int keep_every;
    char init[CFG_PATH];
    char resume[CFG_STR];        // latest | latest_valid | none
    char precision[CFG_STR];     // fp32 | bf16 (GEMM inputs; see src/model/gemm.h)
    int allow_config_change;     // bool: resume although optimisation keys changed
    int allow_oversubscribe_memory;  // bool: start although the estimate exceeds RAM

    // [eval]
    int eval_every;
    int eval_batch_size;
    int eval_synthetic;          // held-out images of data.source = synthetic

    // [fewshot]
    int fewshot_every;
    char fewshot_shots[CFG_STR]; // "1,5,10,25"
    int fewshot_seeds;
    double fewshot_l2;
    char fewshot_l2_sweep[CFG_STR];  // "" = fewshot.l2 only, else e.g. "1,32,1024"
    int fewshot_per_class;           // train images read per class
    // fewshot.<name> = <train source>|<test source> (shards pattern or folder)
    int n_fewshot;
    char fewshot_name[CFG_MAX_FEWSHOT][64];
    char fewshot_data[CFG_MAX_FEWSHOT][CFG_PATH];

    // [dist]
    int expert_parallel;         // 0 = all ranks

    // [bench]
    int bench_steps;             // timed steps of softmoe bench

    // [debug]: test-only hooks (the tests set them as overrides). Not part of
    // the recipe: written to the resolved config only when one is set.
    long debug_stop_at_step;     // as if SIGTERM arrived during this step (0: off)
    int debug_stop_rank;         // ... on this rank only (-1: every rank)
    long debug_fail_at_step;     // a fatal error at this step (0: off)
    int debug_fail_rank;         // ... on this rank only (-1: every rank)
    long debug_poison_at_step;   // a NaN into Adam's v after this step's update (0: off)
    long debug_crash_before_rename;  // exit(3) before renaming this step's checkpoint (0: off)
} Config;

// Fills every field with its default (the defaults describe a small dense ViT
// trained on synthetic data).
void config_defaults(Config *c);

// Loads `path` (following includes), then applies `noverrides` strings of the
// form "section.key=value". On any error writes a message naming file:line and
// key into err (size errlen) and returns -1; returns 0 on success. Also
// resolves model.variant into width/depth/heads/mlp_dim/patch and validates
// cross-key constraints (e.g. width divisible by heads, image_size by patch).
int config_load(Config *c, const char *path, int noverrides, char **overrides,
                char *err, size_t errlen);

// Applies a single "section.key=value"; origin names where it came from in
// error messages (e.g. "command line"). Returns 0 or -1 with err filled.
int config_set(Config *c, const char *section, const char *key, const char *value,
               const char *origin, int line, char *err, size_t errlen);

// Writes the resolved config as INI text (every key, one section each) into
// buf; returns the length it needs (like snprintf).
size_t config_to_ini(const Config *c, char *buf, size_t buflen);
// Writes it to a file; returns 0 or -1 with errno set.
int config_write(const Config *c, const char *path);

// The key table, for `softmoe keys`: section, key, type name ("int",
// "number", "bool", "string", "enum", ...), default as INI text, and for
// enums the choices "a|b|c" (else NULL).
typedef struct { const char *section, *key, *type, *def, *choices; } ConfigKeyInfo;
int config_nkeys(void);
void config_key_info(int i, ConfigKeyInfo *out);
// One line of documentation per key (config_doc.c); NULL for a key without.
const char *config_key_doc(const char *section, const char *key);
int config_doc_count(void);  // lines in the doc list (each must name a key)
