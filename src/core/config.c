// The run configuration: one table of every key (section, name, type, field,
// default) drives defaults, INI parsing (libinih), overrides, validation and
// writing the resolved config back out, so the five can never disagree.
#include "config.h"
#include "common.h"
#include "config_io.h"

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

typedef enum { T_INT, T_LONG, T_U64, T_DOUBLE, T_BOOL, T_STR, T_ENUM, T_SLOTS, T_VARIANT } KeyType;

typedef struct {
    const char *section, *key;
    KeyType type;
    size_t off, size;      // field offset in Config, field size (string capacity)
    const char *def;       // default, as INI text: parsed by the same code as files
    const char *choices;   // T_ENUM: "a|b|c"
    double min;            // numeric types: smallest accepted value
} KeyDef;

#define F(field) offsetof(Config, field), sizeof(((Config *)0)->field)
#define NOMIN 0

static const KeyDef KEYS[] = {
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
#define NKEYS (sizeof KEYS / sizeof KEYS[0])

// ViT sizes from "Scaling Vision Transformers" (Zhai et al.), as used by big_vision.
static const struct { const char *name; int width, depth, heads, mlp_dim; } VARIANTS[] = {
    {"Ti", 192, 12, 3, 768},   {"S", 384, 12, 6, 1536},   {"B", 768, 12, 12, 3072},
    {"L", 1024, 24, 16, 4096}, {"H", 1280, 32, 16, 5120},
};

enum { MAX_LINE = 2 * CFG_PATH, MAX_DEPTH = 16 };

// ---------------------------------------------------------------- errors

// Writes "origin:line: message" (or "origin: message" when line <= 0, as for
// the command line) into err; always returns -1 so callers can `return fail(...)`.
__attribute__((format(printf, 5, 6)))
static int fail(char *err, size_t errlen, const char *origin, int line, const char *fmt, ...) {
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
static void suggest(const char *name, bool want_section, char *out, size_t outlen) {
    int best = 4;
    out[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        char cand[128];
        if (want_section) snprintf(cand, sizeof cand, "%s", KEYS[i].section);
        else snprintf(cand, sizeof cand, "%s.%s", KEYS[i].section, KEYS[i].key);
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
static int parse_variant(const char *s, int *vi, int *patch) {
    *vi = -1;
    *patch = 0;
    if (s[0] == '\0') return 0;
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    for (size_t i = 0; i < sizeof VARIANTS / sizeof VARIANTS[0]; i++)
        if (strlen(VARIANTS[i].name) == n && strncmp(VARIANTS[i].name, s, n) == 0) *vi = (int)i;
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
        return fail(err, errlen, origin, line, "%s.%s is %zu characters long (at most %zu)",
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
        return fail(err, errlen, origin, line, "%s.%s = '%s' is not %s", k->section, k->key, v, what);
    if (d < k->min)
        return fail(err, errlen, origin, line, "%s.%s = %s is out of range (must be >= %g)",
                    k->section, k->key, v, k->min);
    if (k->type == T_INT || k->type == T_SLOTS) *(int *)dst = (int)l;
    else if (k->type == T_LONG) *(long *)dst = l;
    else *(double *)dst = d;
    return 0;
}

static int set_value(Config *c, const KeyDef *k, const char *v, const char *origin, int line,
                     char *err, size_t errlen) {
    char *dst = (char *)c + k->off;
    int vi, patch;
    const char *unsafe = ini_unsafe(v);
    if (unsafe) return fail(err, errlen, origin, line, "%s.%s = '%s' %s", k->section, k->key, v, unsafe);
    switch (k->type) {
    case T_U64:
        if (parse_u64(v, (uint64_t *)dst) != 0)
            return fail(err, errlen, origin, line, "%s.%s = '%s' is not a non-negative integer",
                        k->section, k->key, v);
        return 0;
    case T_BOOL:
        if (parse_bool(v, (int *)dst) != 0)
            return fail(err, errlen, origin, line,
                        "%s.%s = '%s' is not a boolean (true|false|1|0|yes|no)", k->section, k->key, v);
        return 0;
    case T_ENUM:
        if (!enum_has(k->choices, v))
            return fail(err, errlen, origin, line, "%s.%s = '%s' is not one of %s",
                        k->section, k->key, v, k->choices);
        return set_string(k, dst, v, origin, line, err, errlen);
    case T_VARIANT:
        if (parse_variant(v, &vi, &patch) != 0)
            return fail(err, errlen, origin, line,
                        "model.variant = '%s' is not Ti|S|B|L|H with an optional /patch (e.g. S/16)", v);
        return set_string(k, dst, v, origin, line, err, errlen);
    case T_STR:
        return set_string(k, dst, v, origin, line, err, errlen);
    default:
        return set_number(k, dst, v, origin, line, err, errlen);
    }
}

// ---------------------------------------------------------------- keys

static int key_index(const char *section, const char *key) {
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(KEYS[i].section, section) == 0 && strcmp(KEYS[i].key, key) == 0) return (int)i;
    return -1;
}

static int find_key(const char *section, const char *key, const char *origin, int line,
                    char *err, size_t errlen) {
    int i = key_index(section, key);
    if (i >= 0) return i;
    char name[256], near[128];
    snprintf(name, sizeof name, "%s.%s", section, key);
    bool section_known = false;
    for (size_t j = 0; j < NKEYS; j++) section_known |= strcmp(KEYS[j].section, section) == 0;
    if (!section_known) {
        suggest(section, true, near, sizeof near);
        if (near[0])
            return fail(err, errlen, origin, line, "unknown section [%s] for key '%s' (did you mean [%s]?)",
                        section, name, near);
        return fail(err, errlen, origin, line, "unknown section [%s] for key '%s'", section, name);
    }
    suggest(name, false, near, sizeof near);
    if (near[0])
        return fail(err, errlen, origin, line, "unknown key '%s' (did you mean '%s'?)", name, near);
    return fail(err, errlen, origin, line, "unknown key '%s'", name);
}

// fewshot.<name> = <train source>|<test source>: one per few-shot dataset;
// an empty value removes the set (e.g. `fewshot.fmnist=` on the command line).
static int set_fewshot_set(Config *c, const char *key, const char *value, const char *origin,
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
        return fail(err, errlen, origin, line,
                    "fewshot.%s = '%s': expected <train source>|<test source>", key, value);
    if (strlen(key) >= sizeof c->fewshot_name[0] || strlen(value) >= CFG_PATH)
        return fail(err, errlen, origin, line, "fewshot.%s: name or value too long", key);
    // The name becomes an INI key and part of metric names in metrics.jsonl.
    if (strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != strlen(key))
        return fail(err, errlen, origin, line,
                    "fewshot.%s: a few-shot dataset name may use only letters, digits, '_', '-' and '.'",
                    key);
    const char *unsafe = ini_unsafe(value);
    if (unsafe) return fail(err, errlen, origin, line, "fewshot.%s = '%s' %s", key, value, unsafe);
    int i = 0;
    while (i < c->n_fewshot && strcmp(c->fewshot_name[i], key)) i++;
    if (i == CFG_MAX_FEWSHOT)
        return fail(err, errlen, origin, line, "fewshot.%s: at most %d few-shot datasets", key,
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
    if (!strcmp(section, "fewshot") && key_index(section, key) < 0)
        return set_fewshot_set(c, key, value, origin, line, err, errlen);
    int i = find_key(section, key, origin, line, err, errlen);
    if (i < 0) return -1;
    return set_value(c, &KEYS[i], value, origin, line, err, errlen);
}

void config_defaults(Config *c) {
    static const size_t type_size[] = {
        [T_INT] = sizeof(int), [T_LONG] = sizeof(long), [T_U64] = sizeof(uint64_t),
        [T_DOUBLE] = sizeof(double), [T_BOOL] = sizeof(int), [T_SLOTS] = sizeof(int)};
    memset(c, 0, sizeof *c);  // padding and string tails too, so configs compare with memcmp
    for (size_t i = 0; i < NKEYS; i++) {
        const KeyDef *k = &KEYS[i];
        char err[256];
        // A table entry whose type does not match its field is a programming error.
        SM_CHECK(k->type == T_STR || k->type == T_ENUM || k->type == T_VARIANT ||
                     k->size == type_size[k->type],
                 "config table: %s.%s has the wrong type for its field", k->section, k->key);
        if (set_value(c, k, k->def, "config defaults", 0, err, sizeof err) != 0)
            sm_die("bad default in the config table: %s", err);
    }
}

// ---------------------------------------------------------------- files

enum { MAX_SECTIONS = 16 };

typedef struct Loader Loader;

// One file being parsed: its text (read whole by config_io.c), the reading
// position, and what this file has set so far, to refuse duplicates. A key
// set again by an including file or the command line is an override, not a
// duplicate, so this is per file.
typedef struct {
    Loader *L;
    const char *path;
    const char *text;
    size_t len, pos;
    int lineno;           // line last handed to inih, i.e. the one its handler is seeing
    int too_long;         // line number of a line that did not fit in inih's buffer
    int key_line[NKEYS];  // line where this file set each key, 0 = not yet
    struct { char name[64]; int line; } fs[CFG_MAX_FEWSHOT + 1];  // fewshot.<name> keys
    int nfs;
    struct { const char *name; int line; } sec[MAX_SECTIONS];     // [section] headers
    int nsec;
} Source;

struct Loader {
    Config *c;
    unsigned char given[NKEYS];  // keys set by a file or override: the variant must not touch them
    char *where[NKEYS];          // "file:line" or "command line" that last set each key (malloc'd)
    char *open[MAX_DEPTH];       // real paths of the files being read, to catch include cycles
    int depth;
    Source *src;
    bool failed;  // err already holds the first error; outer files must not overwrite it
    char *err;
    size_t errlen;
};

static int load_file(Loader *L, const char *path, const char *from, int fromline);

// Like fail(), and marks the error as the one to report: includes unwind
// through every outer file, which must not replace it with a vaguer one.
__attribute__((format(printf, 4, 5)))
static int loader_fail(Loader *L, const char *origin, int line, const char *fmt, ...) {
    L->failed = true;
    if (!L->err || L->errlen == 0) return -1;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fail(L->err, L->errlen, origin, line, "%s", msg);
}

static void set_where(Loader *L, int i, const char *file, int line) {
    free(L->where[i]);
    int n = line > 0 ? asprintf(&L->where[i], "%s:%d", file, line) : asprintf(&L->where[i], "%s", file);
    if (n < 0) sm_die("out of memory reading the config");
}

// The name of a [section] header as inih reads it (same inline-comment rule),
// or NULL when the line is no header or one inih will reject. *n: its length.
static const char *header_name(const char *line, size_t *n) {
    const char *s = line;
    while (isspace((unsigned char)*s)) s++;
    if (*s != '[') return NULL;
    bool was_space = false;
    const char *p = s + 1;
    for (; *p && *p != ']'; p++) {
        if (was_space && (*p == ';' || *p == '#')) return NULL;
        was_space = isspace((unsigned char)*p);
    }
    if (*p != ']') return NULL;
    *n = (size_t)(p - s - 1);
    return s + 1;
}

// inih never reports a [section] line to its handler, so headers are checked
// here as lines go by: an unknown section (even one with no keys) and a
// section opened twice in one file are errors.
static int check_header(Source *s, const char *line) {
    if (s->lineno == 1 && !strncmp(line, "\xEF\xBB\xBF", 3)) line += 3;  // inih skips a BOM
    size_t n;
    const char *name = header_name(line, &n);
    if (!name) return 0;
    const char *known = NULL;
    for (size_t i = 0; i < NKEYS && !known; i++)
        if (strlen(KEYS[i].section) == n && !strncmp(KEYS[i].section, name, n)) known = KEYS[i].section;
    if (!known) {
        char sec[128], near[128];
        snprintf(sec, sizeof sec, "%.*s", (int)(n < 100 ? n : 100), name);
        suggest(sec, true, near, sizeof near);
        if (near[0])
            return loader_fail(s->L, s->path, s->lineno, "unknown section [%s] (did you mean [%s]?)", sec,
                               near);
        return loader_fail(s->L, s->path, s->lineno, "unknown section [%s]", sec);
    }
    for (int i = 0; i < s->nsec; i++)
        if (!strcmp(s->sec[i].name, known))
            return loader_fail(s->L, s->path, s->lineno,
                               "duplicate section [%s]: already opened on line %d of this file "
                               "(keep its keys in one [%s]; an including file or the command line "
                               "may override them)", known, s->sec[i].line, known);
    if (s->nsec < MAX_SECTIONS) {
        s->sec[s->nsec].name = known;
        s->sec[s->nsec++].line = s->lineno;
    }
    return 0;
}

// inih's reader over the file's text: counts lines, since Debian's inih is
// built without INI_HANDLER_LINENO, refuses lines that inih would otherwise
// split in two, and checks section headers.
static char *read_line(char *str, int num, void *stream) {
    Source *s = stream;
    if (s->pos >= s->len || s->L->failed) return NULL;
    const char *p = s->text + s->pos, *nl = memchr(p, '\n', s->len - s->pos);
    size_t n = nl ? (size_t)(nl - p) + 1 : s->len - s->pos;
    s->lineno++;
    if (n > (size_t)num - 1) {
        s->too_long = s->lineno;
        return NULL;  // ends the parse; load_file reports it
    }
    memcpy(str, p, n);
    str[n] = '\0';
    s->pos += n;
    return check_header(s, str) == 0 ? str : NULL;
}

// include values are relative to the including file's directory.
static int include_path(const char *from, const char *inc, char *out, size_t outlen) {
    const char *slash = strrchr(from, '/');
    int n = inc[0] == '/' || !slash ? snprintf(out, outlen, "%s", inc)
                                    : snprintf(out, outlen, "%.*s/%s", (int)(slash - from), from, inc);
    return n >= 0 && (size_t)n < outlen ? 0 : -1;
}

// fewshot.<name> set twice in one file?
static int fewshot_duplicate(Source *src, const char *key, int line) {
    for (int i = 0; i < src->nfs; i++)
        if (!strcmp(src->fs[i].name, key))
            return loader_fail(src->L, src->path, line,
                               "duplicate key 'fewshot.%s': already set on line %d of this file", key,
                               src->fs[i].line);
    if (src->nfs < CFG_MAX_FEWSHOT + 1 && strlen(key) < sizeof src->fs[0].name) {
        snprintf(src->fs[src->nfs].name, sizeof src->fs[0].name, "%s", key);
        src->fs[src->nfs++].line = line;
    }
    return 0;
}

static int handle_key(Loader *L, const char *section, const char *key, const char *value) {
    Source *src = L->src;
    const char *file = src->path;
    int line = src->lineno;
    if (section[0] == '\0') {
        char full[PATH_MAX];
        if (strcmp(key, "include") != 0)
            return loader_fail(L, file, line,
                               "key '%s' comes before any [section] (only 'include = file.ini' may)", key);
        if (include_path(file, value, full, sizeof full) != 0)
            return loader_fail(L, file, line, "include path '%s' is too long", value);
        return load_file(L, full, file, line);
    }
    if (!strcmp(section, "fewshot") && key_index(section, key) < 0) {
        if (fewshot_duplicate(src, key, line) != 0) return -1;
        if (set_fewshot_set(L->c, key, value, file, line, L->err, L->errlen) == 0) return 0;
        L->failed = true;
        return -1;
    }
    int i = find_key(section, key, file, line, L->err, L->errlen);
    if (i >= 0 && src->key_line[i])
        return loader_fail(L, file, line, "duplicate key '%s.%s': already set on line %d of this file",
                           section, key, src->key_line[i]);
    if (i < 0 || set_value(L->c, &KEYS[i], value, file, line, L->err, L->errlen) != 0) {
        L->failed = true;
        return -1;
    }
    L->given[i] = 1;
    src->key_line[i] = line;
    set_where(L, i, file, line);
    return 0;
}

// inih's handler: nonzero means the line was fine.
static int on_key(void *user, const char *section, const char *key, const char *value) {
    return handle_key(user, section, key, value) == 0;
}

static int load_file(Loader *L, const char *path, const char *from, int fromline) {
    if (L->depth == MAX_DEPTH)
        return loader_fail(L, from, fromline, "includes nested deeper than %d files", MAX_DEPTH);
    char *real = realpath(path, NULL), *text = NULL, why[256];
    int bad_line = 0;
    if (!real) snprintf(why, sizeof why, "%s", strerror(errno));
    for (int i = 0; real && i < L->depth; i++) {
        if (strcmp(L->open[i], real) == 0) {
            free(real);
            return loader_fail(L, from, fromline, "include cycle: '%s' is already being read", path);
        }
    }
    size_t len = 0;
    if (!real || config_read_file(path, &text, &len, &bad_line, why, sizeof why) != 0) {
        free(real);
        if (bad_line) return loader_fail(L, path, bad_line, "%s", why);
        if (from) return loader_fail(L, from, fromline, "cannot read included file '%s': %s", path, why);
        return loader_fail(L, path, 0, "cannot read config file: %s", why);
    }
    Source src = {.L = L, .path = path, .text = text, .len = len}, *outer = L->src;
    L->open[L->depth++] = real;
    L->src = &src;
    int ret = ini_parse_stream(read_line, &src, on_key, L);
    L->src = outer;
    free(L->open[--L->depth]);
    free(text);
    if (L->failed) return -1;
    if (src.too_long)
        return loader_fail(L, path, src.too_long, "line longer than %d characters", MAX_LINE - 3);
    if (ret != 0)  // inih met a line that is neither [section], key = value nor a comment
        return loader_fail(L, path, ret, "syntax error (expected [section] or key = value)");
    return 0;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

// "section.key=value" from the command line.
static int apply_override(Loader *L, const char *arg) {
    const char *origin = "command line";
    char buf[MAX_LINE];
    if (strlen(arg) >= sizeof buf)
        return fail(L->err, L->errlen, origin, 0, "override too long: '%.40s...'", arg);
    snprintf(buf, sizeof buf, "%s", arg);
    char *eq = strchr(buf, '=');
    char *dot = eq ? memchr(buf, '.', (size_t)(eq - buf)) : NULL;
    if (!dot || dot == buf || dot + 1 == eq)
        return fail(L->err, L->errlen, origin, 0,
                    "malformed override '%s' (expected section.key=value, e.g. model.width=128)", arg);
    *eq = '\0';
    *dot = '\0';
    if (!strcmp(trim(buf), "fewshot") && key_index("fewshot", trim(dot + 1)) < 0)
        return set_fewshot_set(L->c, trim(dot + 1), trim(eq + 1), origin, 0, L->err, L->errlen);
    int i = find_key(trim(buf), trim(dot + 1), origin, 0, L->err, L->errlen);
    if (i < 0 || set_value(L->c, &KEYS[i], trim(eq + 1), origin, 0, L->err, L->errlen) != 0) return -1;
    L->given[i] = 1;
    set_where(L, i, origin, 0);
    return 0;
}

// The variant fills the model size, except keys given explicitly anywhere.
static void resolve_variant(Loader *L) {
    Config *c = L->c;
    int vi, patch;
    if (parse_variant(c->variant, &vi, &patch) != 0 || vi < 0) return;  // syntax checked when set
    struct { const char *key; int *field, value; } fill[] = {
        {"width", &c->width, VARIANTS[vi].width},       {"depth", &c->depth, VARIANTS[vi].depth},
        {"heads", &c->heads, VARIANTS[vi].heads},       {"mlp_dim", &c->mlp_dim, VARIANTS[vi].mlp_dim},
        {"patch", &c->patch, patch ? patch : c->patch},
    };
    for (size_t i = 0; i < sizeof fill / sizeof fill[0]; i++)
        if (!L->given[key_index("model", fill[i].key)]) *fill[i].field = fill[i].value;
}

// ---------------------------------------------------------------- validation

// The range of every numeric key once more: a caller may have written fields
// directly instead of going through config_set.
static int validate_ranges(const Config *c, const char *o, char *err, size_t errlen) {
    for (size_t i = 0; i < NKEYS; i++) {
        const KeyDef *k = &KEYS[i];
        const char *p = (const char *)c + k->off;
        double v = k->type == T_INT    ? *(const int *)p
                 : k->type == T_LONG   ? (double)*(const long *)p
                 : k->type == T_DOUBLE ? *(const double *)p
                                       : k->min;  // slots 0 is "auto"; other types have no range
        if (v < k->min)
            return fail(err, errlen, o, 0, "%s.%s = %g must be >= %g", k->section, k->key, v, k->min);
    }
    return 0;
}

// A comma-separated list of at most max numbers, each > 0 (and whole when
// integers): fewshot.shots and fewshot.l2_sweep.
static int check_list(const char *s, const char *name, int integers, int max, const char *o,
                      char *err, size_t errlen) {
    int n = 0;
    for (const char *p = s; *p;) {
        char *end;
        double v = strtod(p, &end);
        while (*end == ' ') end++;
        if (end == p || (*end && *end != ',') || !(v > 0) || (integers && v != floor(v)))
            return fail(err, errlen, o, 0, "%s = '%s' is not a comma-separated list of positive "
                        "%s (e.g. %s)", name, s, integers ? "integers" : "numbers",
                        integers ? "1,5,10,25" : "1,32,1024");
        if (++n > max) return fail(err, errlen, o, 0, "%s lists more than %d values", name, max);
        p = *end ? end + 1 : end;
        while (*p == ' ') p++;
    }
    return 0;
}

// The rules that tie keys together, checked once everything is resolved.
static int validate(const Config *c, const char *o, char *err, size_t errlen) {
    if (validate_ranges(c, o, err, errlen) != 0) return -1;
    if (check_list(c->fewshot_shots, "fewshot.shots", 1, 16, o, err, errlen) != 0 ||
        check_list(c->fewshot_l2_sweep, "fewshot.l2_sweep", 0, 32, o, err, errlen) != 0)
        return -1;
    if (c->width % c->heads)
        return fail(err, errlen, o, 0, "model.width = %d is not divisible by model.heads = %d",
                    c->width, c->heads);
    if (c->image_size % c->patch)
        return fail(err, errlen, o, 0, "model.image_size = %d is not divisible by model.patch = %d",
                    c->image_size, c->patch);
    if (strcmp(c->posemb, "sincos2d") == 0 && c->width % 4)
        return fail(err, errlen, o, 0, "model.posemb = sincos2d needs model.width (%d) divisible by 4",
                    c->width);
    if (c->capacity_factor <= 0)
        return fail(err, errlen, o, 0, "moe.capacity_factor = %g must be > 0", c->capacity_factor);
    if (c->b1 >= 1 || c->b2 >= 1)
        return fail(err, errlen, o, 0, "optim.b1 = %g and optim.b2 = %g must be < 1", c->b1, c->b2);
    if (c->eps <= 0) return fail(err, errlen, o, 0, "optim.eps = %g must be > 0", c->eps);
    if (c->timescale <= 0)
        return fail(err, errlen, o, 0, "schedule.timescale = %g must be > 0", c->timescale);
    // A short run of a long recipe: say which overrides make it consistent.
    if (c->cooldown_steps > c->steps)
        return fail(err, errlen, o, 0, "schedule.cooldown_steps = %ld exceeds train.steps = %ld "
                    "(for a short run scale the schedule too, e.g. schedule.cooldown_steps=%ld "
                    "schedule.warmup_steps=%ld)", c->cooldown_steps, c->steps, c->steps / 5,
                    c->warmup_steps < c->steps / 5 ? c->warmup_steps : c->steps / 5);
    if (c->steps > 0 && c->warmup_steps > c->steps)
        return fail(err, errlen, o, 0, "schedule.warmup_steps = %ld exceeds train.steps = %ld "
                    "(for a short run scale the schedule too, e.g. schedule.warmup_steps=%ld)",
                    c->warmup_steps, c->steps, c->steps / 5);
    return 0;
}

static void inih_setup(void) {
    // Debian's libinih exposes its build options as globals. Its defaults would
    // split lines over 200 bytes (long shard lists) into two, read indented
    // lines as continuations of the previous value, and carry on past errors
    // so the reported line would not be the first bad one.
    static char inline_comments[] = ";#";
    ini_max_line = MAX_LINE;
    ini_allow_multiline = false;
    ini_stop_on_first_error = true;
    ini_inline_comment_prefixes = inline_comments;
}

// Where key "section.key" was set, for messages: "file:line", "command line",
// or the top file (or "command line") for a default.
static const char *origin_of(const Loader *L, const char *name, const char *top) {
    char section[64];
    const char *dot = strchr(name, '.');
    if (dot && (size_t)(dot - name) < sizeof section) {
        snprintf(section, sizeof section, "%.*s", (int)(dot - name), name);
        char key[64];
        size_t n = strspn(dot + 1, "abcdefghijklmnopqrstuvwxyz0123456789_");
        snprintf(key, sizeof key, "%.*s", (int)(n < sizeof key ? n : sizeof key - 1), dot + 1);
        int i = key_index(section, key);
        if (i >= 0 && L->where[i]) return L->where[i];
    }
    return top;
}

// The values other modules parse: moe.layers and moe.router (the model),
// optim.wd (the optimiser), data.pp_train/pp_eval (preprocessing). Checked
// here, before any work, so the message names the file and line (or the
// command line) that set the key. Their messages begin with the key.
static int check_modules(const Loader *L, const char *top, char *err, size_t errlen) {
    const Config *c = L->c;
    char msg[512];
    PpChain pp;
    WdRule rules[WD_MAX_RULES];
    const struct { const char *name, *value; } pps[] = {{"data.pp_train", c->pp_train},
                                                        {"data.pp_eval", c->pp_eval}};
    for (int i = 0; i < 2; i++)
        if (pp_parse(pps[i].value, &pp, msg, sizeof msg) != 0)
            return fail(err, errlen, origin_of(L, pps[i].name, top), 0, "%s = '%s': %s", pps[i].name,
                        pps[i].value, msg);
    if (wd_parse(c->wd, rules, WD_MAX_RULES, msg, sizeof msg) < 0)
        return fail(err, errlen, origin_of(L, "optim.wd", top), 0, "%s", msg);
    if (vit_check_config(c, msg, sizeof msg) != 0)
        return fail(err, errlen, origin_of(L, msg, top), 0, "%s", msg);
    return 0;
}

int config_load(Config *c, const char *path, int noverrides, char **overrides,
                char *err, size_t errlen) {
    config_defaults(c);
    Loader L = {.c = c, .err = err, .errlen = errlen};
    inih_setup();
    const char *top = path ? path : "command line";
    int rc = path ? load_file(&L, path, NULL, 0) : 0;
    for (int i = 0; rc == 0 && i < noverrides; i++) rc = apply_override(&L, overrides[i]);
    if (rc == 0) {
        resolve_variant(&L);
        rc = validate(c, top, err, errlen);
    }
    if (rc == 0) rc = check_modules(&L, top, err, errlen);
    for (size_t i = 0; i < NKEYS; i++) free(L.where[i]);
    return rc;
}

// ---------------------------------------------------------------- writing

typedef struct { char *buf; size_t cap, len; } Out;

// Appends like snprintf: counts what it would need even when buf is full.
__attribute__((format(printf, 2, 3)))
static void out_printf(Out *o, const char *fmt, ...) {
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) o->len += (size_t)n;
}

// Shortest %g form that reads back to the same double, so 0.9 stays "0.9";
// whole numbers in full, so a timescale reads "10000" rather than "1e+04".
static void format_double(double v, char *out, size_t outlen) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, outlen, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, v);
        if (strtod(out, NULL) == v) return;
    }
}

static void format_value(const Config *c, const KeyDef *k, char *out, size_t outlen) {
    const char *p = (const char *)c + k->off;
    switch (k->type) {
    case T_INT: snprintf(out, outlen, "%d", *(const int *)p); break;
    case T_LONG: snprintf(out, outlen, "%ld", *(const long *)p); break;
    case T_U64: snprintf(out, outlen, "%" PRIu64, *(const uint64_t *)p); break;
    case T_DOUBLE: format_double(*(const double *)p, out, outlen); break;
    case T_BOOL: snprintf(out, outlen, "%s", *(const int *)p ? "true" : "false"); break;
    case T_SLOTS:
        if (*(const int *)p == 0) snprintf(out, outlen, "auto");
        else snprintf(out, outlen, "%d", *(const int *)p);
        break;
    default: snprintf(out, outlen, "%s", p); break;
    }
}

// True when some [debug] key differs from its default.
static bool debug_set(const Config *c) {
    for (size_t i = 0; i < NKEYS; i++) {
        char value[CFG_PATH + 64];
        if (strcmp(KEYS[i].section, "debug")) continue;
        format_value(c, &KEYS[i], value, sizeof value);
        if (strcmp(value, KEYS[i].def)) return true;
    }
    return false;
}

size_t config_to_ini(const Config *c, char *buf, size_t buflen) {
    Out o = {buf, buflen, 0};
    if (buf && buflen) buf[0] = '\0';
    out_printf(&o, "; softmoe resolved config: every key, as the run used it\n");
    // The test-only [debug] hooks are no part of a run's recipe: absent
    // unless set, so the config reloads to the same values either way.
    const bool debug = debug_set(c);
    for (size_t i = 0; i < NKEYS; i++) {
        const KeyDef *k = &KEYS[i];
        char value[CFG_PATH + 64];
        if (!debug && !strcmp(k->section, "debug")) continue;
        if (i == 0 || strcmp(k->section, KEYS[i - 1].section) != 0)
            out_printf(&o, "%s[%s]\n", i ? "\n" : "", k->section);
        format_value(c, k, value, sizeof value);
        out_printf(&o, "%s =%s%s\n", k->key, value[0] ? " " : "", value);
        if (!strcmp(k->section, "fewshot") && (i + 1 == NKEYS || strcmp(KEYS[i + 1].section, "fewshot")))
            for (int f = 0; f < c->n_fewshot; f++)
                out_printf(&o, "%s = %s\n", c->fewshot_name[f], c->fewshot_data[f]);
    }
    return o.len;
}

int config_write(const Config *c, const char *path) {
    size_t n = config_to_ini(c, NULL, 0);
    char *text = sm_malloc(n + 1);
    config_to_ini(c, text, n + 1);
    FILE *f = fopen(path, "w");
    int rc = f ? 0 : -1;
    if (f && fwrite(text, 1, n, f) != n) rc = -1;
    int saved = errno;
    if (f && fclose(f) != 0 && rc == 0) rc = -1, saved = errno;
    free(text);
    errno = saved;
    return rc;
}

// ---------------------------------------------------------------- key list

int config_nkeys(void) { return (int)NKEYS; }

void config_key_info(int i, ConfigKeyInfo *out) {
    static const char *type_name[] = {
        [T_INT] = "int", [T_LONG] = "int", [T_U64] = "uint64", [T_DOUBLE] = "number",
        [T_BOOL] = "bool", [T_STR] = "string", [T_ENUM] = "enum", [T_SLOTS] = "int|auto",
        [T_VARIANT] = "variant"};
    const KeyDef *k = &KEYS[i];
    *out = (ConfigKeyInfo){k->section, k->key, type_name[k->type], k->def, k->choices};
}
