// Reading config files (see config.h): libinih over each file's text,
// includes, duplicate and cycle checks, command-line overrides, the
// variant, and the cross-key validation. The key table is config.c's.
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

enum { MAX_LINE = 2 * CFG_PATH, MAX_DEPTH = 16 };

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
    int key_line[CONFIG_MAX_KEYS];  // line where this file set each key, 0 = not yet
    struct { char name[64]; int line; } fs[CFG_MAX_FEWSHOT + 1];  // fewshot.<name> keys
    int nfs;
    struct { const char *name; int line; } sec[MAX_SECTIONS];     // [section] headers
    int nsec;
} Source;

struct Loader {
    Config *c;
    unsigned char given[CONFIG_MAX_KEYS];  // keys set by a file or override: the variant must not touch them
    char *where[CONFIG_MAX_KEYS];          // "file:line" or "command line" that last set each key (malloc'd)
    char *open[MAX_DEPTH];       // real paths of the files being read, to catch include cycles
    int depth;
    Source *src;
    bool failed;  // err already holds the first error; outer files must not overwrite it
    char *err;
    size_t errlen;
};

static int load_file(Loader *L, const char *path, const char *from, int fromline);

// Like config_fail(), and marks the error as the one to report: includes unwind
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
    return config_fail(L->err, L->errlen, origin, line, "%s", msg);
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
    for (size_t i = 0; i < config_nkeys_n && !known; i++)
        if (strlen(config_keys[i].section) == n && !strncmp(config_keys[i].section, name, n)) known = config_keys[i].section;
    if (!known) {
        char sec[128], near[128];
        snprintf(sec, sizeof sec, "%.*s", (int)(n < 100 ? n : 100), name);
        config_suggest(sec, true, near, sizeof near);
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
    if (!strcmp(section, "fewshot") && config_key_index(section, key) < 0) {
        if (fewshot_duplicate(src, key, line) != 0) return -1;
        if (config_set_fewshot(L->c, key, value, file, line, L->err, L->errlen) == 0) return 0;
        L->failed = true;
        return -1;
    }
    int i = config_find_key(section, key, file, line, L->err, L->errlen);
    if (i >= 0 && src->key_line[i])
        return loader_fail(L, file, line, "duplicate key '%s.%s': already set on line %d of this file",
                           section, key, src->key_line[i]);
    if (i < 0 || config_set_value(L->c, &config_keys[i], value, file, line, L->err, L->errlen) != 0) {
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

static int parse_text(Loader *L, const char *path, char *real, const char *text, size_t len);

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
    int rc = parse_text(L, path, real, text, len);
    free(text);
    return rc;
}

// The INI text of `path` (real: its resolved name, taken over, for include
// cycles) through inih, then what inih cannot report itself.
static int parse_text(Loader *L, const char *path, char *real, const char *text, size_t len) {
    Source src = {.L = L, .path = path, .text = text, .len = len}, *outer = L->src;
    L->open[L->depth++] = real;
    L->src = &src;
    int ret = ini_parse_stream(read_line, &src, on_key, L);
    L->src = outer;
    free(L->open[--L->depth]);
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
        return config_fail(L->err, L->errlen, origin, 0, "override too long: '%.40s...'", arg);
    snprintf(buf, sizeof buf, "%s", arg);
    char *eq = strchr(buf, '=');
    char *dot = eq ? memchr(buf, '.', (size_t)(eq - buf)) : NULL;
    if (!dot || dot == buf || dot + 1 == eq)
        return config_fail(L->err, L->errlen, origin, 0,
                    "malformed override '%s' (expected section.key=value, e.g. model.width=128)", arg);
    *eq = '\0';
    *dot = '\0';
    if (!strcmp(trim(buf), "fewshot") && config_key_index("fewshot", trim(dot + 1)) < 0)
        return config_set_fewshot(L->c, trim(dot + 1), trim(eq + 1), origin, 0, L->err, L->errlen);
    int i = config_find_key(trim(buf), trim(dot + 1), origin, 0, L->err, L->errlen);
    if (i < 0 || config_set_value(L->c, &config_keys[i], trim(eq + 1), origin, 0, L->err, L->errlen) != 0) return -1;
    L->given[i] = 1;
    set_where(L, i, origin, 0);
    return 0;
}

// The variant fills the model size, except keys given explicitly anywhere.
static void resolve_variant(Loader *L) {
    Config *c = L->c;
    int vi, patch;
    // syntax checked when set
    if (config_parse_variant(c->variant, &vi, &patch) != 0 || vi < 0) return;
    const ConfigVariant *v = &config_variants[vi];
    struct { const char *key; int *field, value; } fill[] = {
        {"width", &c->width, v->width},   {"depth", &c->depth, v->depth},
        {"heads", &c->heads, v->heads},   {"mlp_dim", &c->mlp_dim, v->mlp_dim},
        {"patch", &c->patch, patch ? patch : c->patch},
    };
    for (size_t i = 0; i < sizeof fill / sizeof fill[0]; i++)
        if (!L->given[config_key_index("model", fill[i].key)]) *fill[i].field = fill[i].value;
}

// ---------------------------------------------------------------- validation

// The range of every numeric key once more: a caller may have written fields
// directly instead of going through config_set.
static int validate_ranges(const Config *c, const char *o, char *err, size_t errlen) {
    for (size_t i = 0; i < config_nkeys_n; i++) {
        const KeyDef *k = &config_keys[i];
        const char *p = (const char *)c + k->off;
        double v = k->type == T_INT    ? *(const int *)p
                 : k->type == T_LONG   ? (double)*(const long *)p
                 : k->type == T_DOUBLE ? *(const double *)p
                                       : k->min;  // slots 0 is "auto"; other types have no range
        if (v < k->min)
            return config_fail(err, errlen, o, 0, "%s.%s = %g must be >= %g", k->section, k->key, v, k->min);
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
            return config_fail(err, errlen, o, 0, "%s = '%s' is not a comma-separated list of positive "
                        "%s (e.g. %s)", name, s, integers ? "integers" : "numbers",
                        integers ? "1,5,10,25" : "1,32,1024");
        if (++n > max) return config_fail(err, errlen, o, 0, "%s lists more than %d values", name, max);
        p = *end ? end + 1 : end;
        while (*p == ' ') p++;
    }
    return 0;
}

// Comma-separated numbers (check_list has accepted them) into out.
static int number_list(const char *s, double *out, int max) {
    int n = 0;
    for (char *end; *s && n < max; s = *end == ',' ? end + 1 : end) {
        double v = strtod(s, &end);
        if (end == s) break;
        out[n++] = v;
        while (*end == ' ') end++;
    }
    return n;
}

void config_parse_lists(Config *c) {
    double v[CFG_MAX_L2];
    char msg[512];
    memset(c->shots, 0, sizeof c->shots);
    c->n_shots = number_list(c->fewshot_shots, v, CFG_MAX_SHOTS);
    for (int i = 0; i < c->n_shots; i++) c->shots[i] = (int)v[i];
    memset(c->l2_sweep, 0, sizeof c->l2_sweep);
    c->n_l2_sweep = number_list(c->fewshot_l2_sweep, c->l2_sweep, CFG_MAX_L2);
    memset(c->wd_rules, 0, sizeof c->wd_rules);
    c->n_wd = wd_parse(c->wd, c->wd_rules, WD_MAX_RULES, msg, sizeof msg);
    if (c->n_wd < 0) c->n_wd = 0;
    memset(c->fewshot_train, 0, sizeof c->fewshot_train);
    memset(c->fewshot_test, 0, sizeof c->fewshot_test);
    for (int f = 0; f < c->n_fewshot; f++) {
        const char *bar = strchr(c->fewshot_data[f], '|');  // one, checked when set
        if (!bar) continue;
        snprintf(c->fewshot_train[f], CFG_PATH, "%.*s", (int)(bar - c->fewshot_data[f]),
                 c->fewshot_data[f]);
        snprintf(c->fewshot_test[f], CFG_PATH, "%s", bar + 1);
    }
}

// The rules that tie keys together, checked once everything is resolved.
static int validate(const Config *c, const char *o, char *err, size_t errlen) {
    if (validate_ranges(c, o, err, errlen) != 0) return -1;
    if (check_list(c->fewshot_shots, "fewshot.shots", 1, 16, o, err, errlen) != 0 ||
        check_list(c->fewshot_l2_sweep, "fewshot.l2_sweep", 0, 32, o, err, errlen) != 0)
        return -1;
    if (c->width % c->heads)
        return config_fail(err, errlen, o, 0, "model.width = %d is not divisible by model.heads = %d",
                    c->width, c->heads);
    if (c->image_size % c->patch)
        return config_fail(err, errlen, o, 0, "model.image_size = %d is not divisible by model.patch = %d",
                    c->image_size, c->patch);
    if (strcmp(c->posemb, "sincos2d") == 0 && c->width % 4)
        return config_fail(err, errlen, o, 0, "model.posemb = sincos2d needs model.width (%d) divisible by 4",
                    c->width);
    if (c->capacity_factor <= 0)
        return config_fail(err, errlen, o, 0, "moe.capacity_factor = %g must be > 0", c->capacity_factor);
    if (c->b1 >= 1 || c->b2 >= 1)
        return config_fail(err, errlen, o, 0, "optim.b1 = %g and optim.b2 = %g must be < 1", c->b1, c->b2);
    if (c->eps <= 0) return config_fail(err, errlen, o, 0, "optim.eps = %g must be > 0", c->eps);
    if (c->timescale <= 0)
        return config_fail(err, errlen, o, 0, "schedule.timescale = %g must be > 0", c->timescale);
    // A short run of a long recipe: say which overrides make it consistent.
    if (c->cooldown_steps > c->steps)
        return config_fail(err, errlen, o, 0, "schedule.cooldown_steps = %ld exceeds train.steps = %ld "
                    "(for a short run scale the schedule too, e.g. schedule.cooldown_steps=%ld "
                    "schedule.warmup_steps=%ld)", c->cooldown_steps, c->steps, c->steps / 5,
                    c->warmup_steps < c->steps / 5 ? c->warmup_steps : c->steps / 5);
    if (c->steps > 0 && c->warmup_steps > c->steps)
        return config_fail(err, errlen, o, 0, "schedule.warmup_steps = %ld exceeds train.steps = %ld "
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
        int i = config_key_index(section, key);
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
            return config_fail(err, errlen, origin_of(L, pps[i].name, top), 0, "%s = '%s': %s", pps[i].name,
                        pps[i].value, msg);
    if (wd_parse(c->wd, rules, WD_MAX_RULES, msg, sizeof msg) < 0)
        return config_fail(err, errlen, origin_of(L, "optim.wd", top), 0, "%s", msg);
    if (vit_check_config(c, msg, sizeof msg) != 0)
        return config_fail(err, errlen, origin_of(L, msg, top), 0, "%s", msg);
    return 0;
}

// config_load and config_load_text: a file by path, or INI text named
// `name` in messages (text NULL: the file).
static int load(Config *c, const char *path, const char *text, int noverrides, char **overrides,
                char *err, size_t errlen) {
    config_defaults(c);
    Loader L = {.c = c, .err = err, .errlen = errlen};
    inih_setup();
    const char *top = path ? path : "command line";
    int rc = 0;
    if (text) {
        char *name = strdup(path);
        SM_CHECK(name, "out of memory loading '%s'", path);
        rc = parse_text(&L, path, name, text, strlen(text));
    } else if (path) {
        rc = load_file(&L, path, NULL, 0);
    }
    for (int i = 0; rc == 0 && i < noverrides; i++) rc = apply_override(&L, overrides[i]);
    if (rc == 0) {
        resolve_variant(&L);
        rc = validate(c, top, err, errlen);
    }
    if (rc == 0) rc = check_modules(&L, top, err, errlen);
    if (rc == 0) config_parse_lists(c);
    for (size_t i = 0; i < config_nkeys_n; i++) free(L.where[i]);
    return rc;
}

int config_load(Config *c, const char *path, int noverrides, char **overrides,
                char *err, size_t errlen) {
    return load(c, path, NULL, noverrides, overrides, err, errlen);
}

int config_load_text(Config *c, const char *name, const char *text, int noverrides,
                     char **overrides, char *err, size_t errlen) {
    return load(c, name, text, noverrides, overrides, err, errlen);
}
