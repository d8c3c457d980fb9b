// Writing the resolved config (see config.h): every key of the table, one
// section each, in a form that reloads to the same values.
#include "config.h"
#include "common.h"
#include "config_table.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static void config_format_value(const Config *c, const KeyDef *k, char *out, size_t outlen) {
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
    for (size_t i = 0; i < config_nkeys_n; i++) {
        char value[CFG_PATH + 64];
        if (strcmp(config_keys[i].section, "debug")) continue;
        config_format_value(c, &config_keys[i], value, sizeof value);
        if (strcmp(value, config_keys[i].def)) return true;
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
    for (size_t i = 0; i < config_nkeys_n; i++) {
        const KeyDef *k = &config_keys[i];
        char value[CFG_PATH + 64];
        if (!debug && !strcmp(k->section, "debug")) continue;
        if (i == 0 || strcmp(k->section, config_keys[i - 1].section) != 0)
            out_printf(&o, "%s[%s]\n", i ? "\n" : "", k->section);
        config_format_value(c, k, value, sizeof value);
        out_printf(&o, "%s =%s%s\n", k->key, value[0] ? " " : "", value);
        if (!strcmp(k->section, "fewshot") && (i + 1 == config_nkeys_n || strcmp(config_keys[i + 1].section, "fewshot")))
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
