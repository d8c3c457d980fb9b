// The run configuration: one table of every key (section, name, type, field,
// default) drives defaults, INI parsing (libinih), overrides, validation and
// writing the resolved config back out, so the five can never disagree.
// Here: the table, value parsing and the key lookups; config_parse.c reads
// files and overrides and validates, config_write.c writes the INI text.
#include "config.h"
#include "common.h"
#include "config_io.h"
#include "config_table.h"

#include "../data/image.h"
#include "../model/vit.h"
#include "../optim/optim.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#define F(field) offsetof(Config, field), sizeof(((Config *)0)->field)
#define NOMIN 0

const KeyDef config_keys[] = {
    {"model", "variant", T_VARIANT, F(variant), "", NULL, NOMIN},
    {"model", "width", T_INT, F(width), "64", NULL, 1},
    {"model", "depth", T_INT, F(depth), "4", NULL, 1},
    {"model", "heads", T_INT, F(heads), "4", NULL, 1},
    {"model", "mlp_dim", T_INT, F(mlp_dim), "256", NULL, 1},
    {"model", "patch", T_INT, F(patch), "4", NULL, 1},
    {"model", "image_size", T_INT, F(image_size), "28", NULL, 1},
    {"model", "channels", T_INT, F(channels), "1", NULL, 1},
    {"model", "classes", T_INT, F(classes), "10", NULL, 1},
    {"model", "pool", T_ENUM, F(pool), "gap", "gap|tok|map", NOMIN},
    {"model", "posemb", T_ENUM, F(posemb), "learn", "learn|sincos2d", NOMIN},
    {"model", "qk_norm", T_BOOL, F(qk_norm), "false", NULL, NOMIN},
    {"model", "loss", T_ENUM, F(loss), "softmax_xent", "softmax_xent|sigmoid_xent", NOMIN},
    {"moe", "experts", T_INT, F(experts), "0", NULL, 0},
    {"moe", "slots", T_SLOTS, F(slots), "1", NULL, 1},
    {"moe", "capacity_factor", T_DOUBLE, F(capacity_factor), "1.0", NULL, 0},
    {"moe", "layers", T_STR, F(layers), "last_half", NULL, NOMIN},
    {"moe", "shared_init", T_BOOL, F(shared_init), "true", NULL, NOMIN},
    {"moe", "router", T_ENUM, F(router), "soft", "soft|tokens_choice|experts_choice|identity", NOMIN},
    {"moe", "k", T_INT, F(k), "1", NULL, 1},
    {"moe", "bpr", T_BOOL, F(bpr), "true", NULL, NOMIN},
    {"moe", "group_size", T_INT, F(group_size), "1", NULL, 1},
    {"moe", "capacity_multiple_of", T_INT, F(capacity_multiple_of), "1", NULL, 1},
    {"moe", "noise_std", T_DOUBLE, F(noise_std), "1.0", NULL, 0},
    {"moe", "importance_weight", T_DOUBLE, F(importance_weight), "0.005", NULL, 0},
    {"moe", "load_weight", T_DOUBLE, F(load_weight), "0.005", NULL, 0},
    {"moe", "dispatch", T_ENUM, F(dispatch), "soft", "soft|uniform", NOMIN},
    {"moe", "combine", T_ENUM, F(combine), "soft", "soft|uniform", NOMIN},
    {"data", "source", T_ENUM, F(source), "synthetic", "synthetic|shards|folder", NOMIN},
    {"data", "train", T_STR, F(train), "", NULL, NOMIN},
    {"data", "val", T_STR, F(val), "", NULL, NOMIN},
    {"data", "val_labels", T_STR, F(val_labels), "", NULL, NOMIN},
    {"data", "pp_train", T_STR, F(pp_train), "inception_crop(224)|flip_lr|value_range(-1,1)", NULL, NOMIN},
    {"data", "pp_eval", T_STR, F(pp_eval), "resize_small(256)|central_crop(224)|value_range(-1,1)", NULL, NOMIN},
    {"data", "threads", T_INT, F(threads), "2", NULL, 1},
    {"data", "shuffle_buffer", T_INT, F(shuffle_buffer), "10000", NULL, 0},
    {"optim", "lr", T_DOUBLE, F(lr), "1e-3", NULL, 0},
    {"optim", "b1", T_DOUBLE, F(b1), "0.9", NULL, 0},
    {"optim", "b2", T_DOUBLE, F(b2), "0.999", NULL, 0},
    {"optim", "eps", T_DOUBLE, F(eps), "1e-8", NULL, 0},
    {"optim", "clip", T_DOUBLE, F(clip), "1.0", NULL, 0},
    {"optim", "wd", T_STR, F(wd), "head/kernel:3.0, */kernel:0.03", NULL, NOMIN},
    {"schedule", "warmup_steps", T_LONG, F(warmup_steps), "100", NULL, 0},
    {"schedule", "decay", T_ENUM, F(decay), "rsqrt", "rsqrt|cosine|linear|constant", NOMIN},
    {"schedule", "timescale", T_DOUBLE, F(timescale), "10000", NULL, 0},
    {"schedule", "cooldown_steps", T_LONG, F(cooldown_steps), "0", NULL, 0},
    {"train", "batch_size", T_INT, F(batch_size), "64", NULL, 1},
    {"train", "microbatch", T_INT, F(microbatch), "0", NULL, 0},
    {"train", "steps", T_LONG, F(steps), "1000", NULL, 0},
    {"train", "seed", T_U64, F(seed), "0", NULL, 0},
    {"train", "workdir", T_STR, F(workdir), "runs/default", NULL, NOMIN},
    {"train", "log_every", T_INT, F(log_every), "10", NULL, 1},
    {"train", "ckpt_every", T_INT, F(ckpt_every), "1000", NULL, 0},
    {"train", "keep_ckpts", T_INT, F(keep_ckpts), "3", NULL, 0},
    {"train", "keep_every", T_INT, F(keep_every), "0", NULL, 0},
    {"train", "init", T_STR, F(init), "", NULL, NOMIN},
    {"train", "resume", T_ENUM, F(resume), "latest", "latest|latest_valid|none", NOMIN},
    {"train", "precision", T_ENUM, F(precision), "fp32", "fp32|bf16", NOMIN},
    {"train", "allow_config_change", T_BOOL, F(allow_config_change), "false", NULL, NOMIN},
    {"train", "allow_oversubscribe_memory", T_BOOL, F(allow_oversubscribe_memory), "false", NULL, NOMIN},
    {"eval", "every", T_INT, F(eval_every), "0", NULL, 0},
    {"eval", "batch_size", T_INT, F(eval_batch_size), "64", NULL, 1},
    {"eval", "synthetic_images", T_INT, F(eval_synthetic), "1024", NULL, 1},
    {"fewshot", "every", T_INT, F(fewshot_every), "0", NULL, 0},
    {"fewshot", "shots", T_STR, F(fewshot_shots), "1,5,10,25", NULL, NOMIN},
    {"fewshot", "seeds", T_INT, F(fewshot_seeds), "3", NULL, 1},
    {"fewshot", "l2", T_DOUBLE, F(fewshot_l2), "1024", NULL, 0},
    {"fewshot", "l2_sweep", T_STR, F(fewshot_l2_sweep), "", NULL, NOMIN},
    {"fewshot", "per_class", T_INT, F(fewshot_per_class), "50", NULL, 1},
    {"dist", "expert_parallel", T_INT, F(expert_parallel), "0", NULL, 0},
    {"bench", "steps", T_INT, F(bench_steps), "5", NULL, 1},
    {"debug", "stop_at_step", T_LONG, F(debug_stop_at_step), "0", NULL, 0},
    {"debug", "stop_rank", T_INT, F(debug_stop_rank), "-1", NULL, -1},
    {"debug", "fail_at_step", T_LONG, F(debug_fail_at_step), "0", NULL, 0},
    {"debug", "fail_rank", T_INT, F(debug_fail_rank), "-1", NULL, -1},
    {"debug", "poison_at_step", T_LONG, F(debug_poison_at_step), "0", NULL, 0},
    {"debug", "crash_before_rename", T_LONG, F(debug_crash_before_rename), "0", NULL, 0},
};
const size_t config_nkeys_n = sizeof config_keys / sizeof config_keys[0];
_Static_assert(sizeof config_keys / sizeof config_keys[0] <= CONFIG_MAX_KEYS,
               "CONFIG_MAX_KEYS (config_table.h) must hold every key");

// ViT sizes from "Scaling Vision Transformers" (Zhai et al.), as used by big_vision.
const ConfigVariant config_variants[] = {
    {"Ti", 192, 12, 3, 768},   {"S", 384, 12, 6, 1536},   {"B", 768, 12, 12, 3072},
    {"L", 1024, 24, 16, 4096}, {"H", 1280, 32, 16, 5120},
};

const size_t config_nvariants = sizeof config_variants / sizeof config_variants[0];

// ---------------------------------------------------------------- errors

// Writes "origin:line: message" (or "origin: message" when line <= 0, as for
// the command line) into err; always returns -1 so callers can `return config_fail(...)`.
__attribute__((format(printf, 5, 6)))
int config_fail(char *err, size_t errlen, const char *origin, int line, const char *fmt, ...) {
    if (!err || errlen == 0) return -1;
    int n = line > 0 ? snprintf(err, errlen, "%s:%d: ", origin, line)
                     : snprintf(err, errlen, "%s: ", origin);
    if (n >= 0 && (size_t)n < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int levenshtein(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    if (na > 63 || nb > 63) return INT_MAX;  // names are short; long input is no typo
    int prev[64], cur[64];
    for (size_t j = 0; j <= nb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (nb + 1));
    }
    return prev[nb];
}

// Nearest "section.key" (or bare section when want_section) within distance 3,
// written into out; out is "" when nothing is close enough to be a likely typo.
void config_suggest(const char *name, bool want_section, char *out, size_t outlen) {
    int best = 4;
    out[0] = '\0';
    for (size_t i = 0; i < config_nkeys_n; i++) {
        char cand[128];
        if (want_section) snprintf(cand, sizeof cand, "%s", config_keys[i].section);
        else snprintf(cand, sizeof cand, "%s.%s", config_keys[i].section, config_keys[i].key);
        int d = levenshtein(name, cand);
        if (d < best) { best = d; snprintf(out, outlen, "%s", cand); }
    }
}

// ---------------------------------------------------------------- values

static int parse_long(const char *s, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE) return -1;
    *out = v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (strchr(s, '-')) return -1;  // strtoull silently negates "-1" to 2^64-1
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out) {
    static const char *yes[] = {"true", "1", "yes"}, *no[] = {"false", "0", "no"};
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) { *out = 1; return 0; }
        if (strcasecmp(s, no[i]) == 0) { *out = 0; return 0; }
    }
    return -1;
}

static bool enum_has(const char *choices, const char *s) {
    size_t n = strlen(s);
    for (const char *p = choices; p; p = strchr(p, '|') ? strchr(p, '|') + 1 : NULL) {
        size_t len = strchr(p, '|') ? (size_t)(strchr(p, '|') - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0) return true;
    }
    return false;
}

// "" -> *vi = -1; "S" -> index of S, *patch = 0; "S/16" -> also *patch = 16.
int config_parse_variant(const char *s, int *vi, int *patch) {
    *vi = -1;
    *patch = 0;
    if (s[0] == '\0') return 0;
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    for (size_t i = 0; i < config_nvariants; i++)
        if (strlen(config_variants[i].name) == n && !strncmp(config_variants[i].name, s, n))
            *vi = (int)i;
    long p = 0;
    if (*vi < 0 || (slash && (parse_long(slash + 1, &p) != 0 || p < 1 || p > INT_MAX))) return -1;
    *patch = (int)p;
    return 0;
}

// The written config must reload to the same values (DESIGN.md), so a value
// that an INI line cannot carry unchanged is refused wherever it comes from
// (in practice the command line): a control character (line breaks, and the
// other bytes inih strips as white space; tab is fine inside a value), and a
// ';' or '#' that starts the value or follows white space, which inih would
// read as the start of a comment. Returns NULL or what is wrong.
static const char *ini_unsafe(const char *s) {
    if (s[0] == ';' || s[0] == '#') return "begins with ';' or '#', which an INI file reads as a comment";
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p < 0x20 && *p != '\t')
            return "contains a control character (a line break?), which an INI line cannot hold";
        if ((*p == ';' || *p == '#') && (p[-1] == ' ' || p[-1] == '\t'))
            return "contains ' ;' or ' #', which an INI file reads as the start of a comment";
    }
    return NULL;
}

static int set_string(const KeyDef *k, char *dst, const char *value, const char *origin,
                      int line, char *err, size_t errlen) {
    size_t n = strlen(value);
    if (n >= k->size)
        return config_fail(err, errlen, origin, line, "%s.%s is %zu characters long (at most %zu)",
                    k->section, k->key, n, k->size - 1);
    memset(dst, 0, k->size);  // zero the tail so equal configs are memcmp-equal
    memcpy(dst, value, n);
    return 0;
}

static int set_number(const KeyDef *k, char *dst, const char *v, const char *origin, int line,
                      char *err, size_t errlen) {
    if (k->type == T_SLOTS && strcmp(v, "auto") == 0) {
        *(int *)dst = 0;  // 0 = derive slots from moe.capacity_factor
        return 0;
    }
    long l = 0;
    double d = 0;
    int ok;
    switch (k->type) {
    case T_INT: ok = parse_long(v, &l) == 0 && l <= INT_MAX && l >= INT_MIN; d = (double)l; break;
    case T_LONG: ok = parse_long(v, &l) == 0; d = (double)l; break;
    case T_SLOTS: ok = parse_long(v, &l) == 0 && l <= INT_MAX; d = (double)l; break;
    default: ok = parse_double(v, &d) == 0; break;
    }
    const char *what = k->type == T_DOUBLE ? "a number" : k->type == T_SLOTS ? "an integer or 'auto'"
                                                                            : "an integer";
    if (!ok)
        return config_fail(err, errlen, origin, line, "%s.%s = '%s' is not %s", k->section, k->key, v, what);
    if (d < k->min)
        return config_fail(err, errlen, origin, line, "%s.%s = %s is out of range (must be >= %g)",
                    k->section, k->key, v, k->min);
    if (k->type == T_INT || k->type == T_SLOTS) *(int *)dst = (int)l;
    else if (k->type == T_LONG) *(long *)dst = l;
    else *(double *)dst = d;
    return 0;
}

int config_set_value(Config *c, const KeyDef *k, const char *v, const char *origin, int line,
                     char *err, size_t errlen) {
    char *dst = (char *)c + k->off;
    int vi, patch;
    const char *unsafe = ini_unsafe(v);
    if (unsafe) return config_fail(err, errlen, origin, line, "%s.%s = '%s' %s", k->section, k->key, v, unsafe);
    switch (k->type) {
    case T_U64:
        if (parse_u64(v, (uint64_t *)dst) != 0)
            return config_fail(err, errlen, origin, line, "%s.%s = '%s' is not a non-negative integer",
                        k->section, k->key, v);
        return 0;
    case T_BOOL:
        if (parse_bool(v, (int *)dst) != 0)
            return config_fail(err, errlen, origin, line,
                        "%s.%s = '%s' is not a boolean (true|false|1|0|yes|no)", k->section, k->key, v);
        return 0;
    case T_ENUM:
        if (!enum_has(k->choices, v))
            return config_fail(err, errlen, origin, line, "%s.%s = '%s' is not one of %s",
                        k->section, k->key, v, k->choices);
        return set_string(k, dst, v, origin, line, err, errlen);
    case T_VARIANT:
        if (config_parse_variant(v, &vi, &patch) != 0)
            return config_fail(err, errlen, origin, line,
                        "model.variant = '%s' is not Ti|S|B|L|H with an optional /patch (e.g. S/16)", v);
        return set_string(k, dst, v, origin, line, err, errlen);
    case T_STR:
        return set_string(k, dst, v, origin, line, err, errlen);
    default:
        return set_number(k, dst, v, origin, line, err, errlen);
    }
}

// ---------------------------------------------------------------- keys

int config_key_index(const char *section, const char *key) {
    for (size_t i = 0; i < config_nkeys_n; i++)
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].key, key) == 0) return (int)i;
    return -1;
}

int config_find_key(const char *section, const char *key, const char *origin, int line,
                    char *err, size_t errlen) {
    int i = config_key_index(section, key);
    if (i >= 0) return i;
    char name[256], near[128];
    snprintf(name, sizeof name, "%s.%s", section, key);
    bool section_known = false;
    for (size_t j = 0; j < config_nkeys_n; j++) section_known |= strcmp(config_keys[j].section, section) == 0;
    if (!section_known) {
        config_suggest(section, true, near, sizeof near);
        if (near[0])
            return config_fail(err, errlen, origin, line, "unknown section [%s] for key '%s' (did you mean [%s]?)",
                        section, name, near);
        return config_fail(err, errlen, origin, line, "unknown section [%s] for key '%s'", section, name);
    }
    config_suggest(name, false, near, sizeof near);
    if (near[0])
        return config_fail(err, errlen, origin, line, "unknown key '%s' (did you mean '%s'?)", name, near);
    return config_fail(err, errlen, origin, line, "unknown key '%s'", name);
}

// fewshot.<name> = <train source>|<test source>: one per few-shot dataset;
// an empty value removes the set (e.g. `fewshot.fmnist=` on the command line).
int config_set_fewshot(Config *c, const char *key, const char *value, const char *origin,
                           int line, char *err, size_t errlen) {
    if (!value[0]) {
        for (int i = 0; i < c->n_fewshot; i++) {
            if (strcmp(c->fewshot_name[i], key)) continue;
            for (int j = i + 1; j < c->n_fewshot; j++) {
                memcpy(c->fewshot_name[j - 1], c->fewshot_name[j], sizeof c->fewshot_name[j]);
                memcpy(c->fewshot_data[j - 1], c->fewshot_data[j], sizeof c->fewshot_data[j]);
            }
            c->n_fewshot--;
            // zeroed, so that configs with the same sets compare equal with memcmp
            memset(c->fewshot_name[c->n_fewshot], 0, sizeof c->fewshot_name[0]);
            memset(c->fewshot_data[c->n_fewshot], 0, sizeof c->fewshot_data[0]);
            return 0;
        }
        return 0;  // removing a set that is not there leaves nothing to do
    }
    const char *bar = strchr(value, '|');
    if (!bar || bar == value || !bar[1] || strchr(bar + 1, '|'))
        return config_fail(err, errlen, origin, line,
                    "fewshot.%s = '%s': expected <train source>|<test source>", key, value);
    if (strlen(key) >= sizeof c->fewshot_name[0] || strlen(value) >= CFG_PATH)
        return config_fail(err, errlen, origin, line, "fewshot.%s: name or value too long", key);
    // The name becomes an INI key and part of metric names in metrics.jsonl.
    if (strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != strlen(key))
        return config_fail(err, errlen, origin, line,
                    "fewshot.%s: a few-shot dataset name may use only letters, digits, '_', '-' and '.'",
                    key);
    const char *unsafe = ini_unsafe(value);
    if (unsafe) return config_fail(err, errlen, origin, line, "fewshot.%s = '%s' %s", key, value, unsafe);
    int i = 0;
    while (i < c->n_fewshot && strcmp(c->fewshot_name[i], key)) i++;
    if (i == CFG_MAX_FEWSHOT)
        return config_fail(err, errlen, origin, line, "fewshot.%s: at most %d few-shot datasets", key,
                    CFG_MAX_FEWSHOT);
    if (i == c->n_fewshot) c->n_fewshot++;
    // Zeroed tails: a shorter value replacing a longer one leaves no bytes behind.
    memset(c->fewshot_name[i], 0, sizeof c->fewshot_name[i]);
    memset(c->fewshot_data[i], 0, sizeof c->fewshot_data[i]);
    snprintf(c->fewshot_name[i], sizeof c->fewshot_name[i], "%s", key);
    snprintf(c->fewshot_data[i], sizeof c->fewshot_data[i], "%s", value);
    return 0;
}

int config_set(Config *c, const char *section, const char *key, const char *value,
               const char *origin, int line, char *err, size_t errlen) {
    if (!strcmp(section, "fewshot") && config_key_index(section, key) < 0)
        return config_set_fewshot(c, key, value, origin, line, err, errlen);
    int i = config_find_key(section, key, origin, line, err, errlen);
    if (i < 0) return -1;
    return config_set_value(c, &config_keys[i], value, origin, line, err, errlen);
}

void config_defaults(Config *c) {
    static const size_t type_size[] = {
        [T_INT] = sizeof(int), [T_LONG] = sizeof(long), [T_U64] = sizeof(uint64_t),
        [T_DOUBLE] = sizeof(double), [T_BOOL] = sizeof(int), [T_SLOTS] = sizeof(int)};
    memset(c, 0, sizeof *c);  // padding and string tails too, so configs compare with memcmp
    for (size_t i = 0; i < config_nkeys_n; i++) {
        const KeyDef *k = &config_keys[i];
        char err[256];
        // A table entry whose type does not match its field is a programming error.
        SM_CHECK(k->type == T_STR || k->type == T_ENUM || k->type == T_VARIANT ||
                     k->size == type_size[k->type],
                 "config table: %s.%s has the wrong type for its field", k->section, k->key);
        if (config_set_value(c, k, k->def, "config defaults", 0, err, sizeof err) != 0)
            sm_die("bad default in the config table: %s", err);
    }
}

// ---------------------------------------------------------------- key list

int config_nkeys(void) { return (int)config_nkeys_n; }

void config_key_info(int i, ConfigKeyInfo *out) {
    static const char *type_name[] = {
        [T_INT] = "int", [T_LONG] = "int", [T_U64] = "uint64", [T_DOUBLE] = "number",
        [T_BOOL] = "bool", [T_STR] = "string", [T_ENUM] = "enum", [T_SLOTS] = "int|auto",
        [T_VARIANT] = "variant"};
    const KeyDef *k = &config_keys[i];
    *out = (ConfigKeyInfo){k->section, k->key, type_name[k->type], k->def, k->choices};
}
