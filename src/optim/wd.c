// Per-tensor weight decay: parsing optim.wd and matching its name patterns.
#include <ctype.h>
#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"
#include "optim.h"

// Narrows [*s, *e) to exclude surrounding whitespace.
static void trim(const char **s, const char **e) {
    while (*s < *e && isspace((unsigned char)**s)) (*s)++;
    while (*e > *s && isspace((unsigned char)(*e)[-1])) (*e)--;
}

// Parses the decay value text [s, e): a finite number >= 0, nothing else.
static int parse_value(const char *s, const char *e, double *out) {
    char buf[64];
    size_t n = (size_t)(e - s);
    if (n == 0 || n >= sizeof buf) return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end;
    *out = strtod(buf, &end);
    return (*end == '\0' && isfinite(*out) && *out >= 0) ? 0 : -1;
}

// One "pattern:value" entry [s, e), already trimmed and non-empty.
static int parse_entry(const char *s, const char *e, WdRule *r, char *err, size_t errlen) {
    int len = (int)(e - s);
    const char *colon = memchr(s, ':', (size_t)(e - s));
    if (!colon)
        return sm_fail(err, errlen, "optim.wd: entry '%.*s' is not pattern:value "
                    "(e.g. */kernel:0.03)", len, s);
    const char *ps = s, *pe = colon, *vs = colon + 1, *ve = e;
    trim(&ps, &pe);
    trim(&vs, &ve);
    if (ps == pe)
        return sm_fail(err, errlen, "optim.wd: entry '%.*s' has an empty pattern", len, s);
    if (pe - ps >= WD_PATTERN)
        return sm_fail(err, errlen, "optim.wd: entry '%.*s': pattern longer than %d characters",
                    len, s, WD_PATTERN - 1);
    if (parse_value(vs, ve, &r->value) != 0)
        return sm_fail(err, errlen, "optim.wd: entry '%.*s': value '%.*s' is not a number >= 0",
                    len, s, (int)(ve - vs), vs);
    memcpy(r->pattern, ps, (size_t)(pe - ps));
    r->pattern[pe - ps] = '\0';
    return 0;
}

int wd_parse(const char *spec, WdRule *rules, int max_rules, char *err, size_t errlen) {
    const char *s = spec, *e = spec + strlen(spec);
    trim(&s, &e);
    if (s == e) return 0; // no rules: no tensor is decayed
    int n = 0;
    for (const char *p = spec;; p++) {
        const char *q = p;
        while (*q && *q != ',') q++;
        const char *es = p, *ee = q;
        trim(&es, &ee);
        if (es == ee)
            return sm_fail(err, errlen, "optim.wd: empty entry in '%s' (stray comma?)", spec);
        if (n == max_rules)
            return sm_fail(err, errlen, "optim.wd: more than %d entries, at '%.*s'",
                        max_rules, (int)(ee - es), es);
        if (parse_entry(es, ee, &rules[n], err, errlen) != 0) return -1;
        n++;
        if (!*q) return n;
        p = q;
    }
}

int wd_glob_match(const char *p, const char *s) {
    // fnmatch(3) without FNM_PATHNAME: '*' runs across '/'. The other
    // characters fnmatch treats specially ('?', '[', '\\') are escaped, so
    // only '*' is special in optim.wd, as documented.
    char esc[2 * WD_PATTERN + 1];
    size_t n = 0;
    for (; *p && n + 2 < sizeof esc; p++) {
        if (*p == '?' || *p == '[' || *p == '\\') esc[n++] = '\\';
        esc[n++] = *p;
    }
    esc[n] = '\0';
    return fnmatch(esc, s, 0) == 0;
}

void wd_per_tensor(const WdRule *rules, int n, const ParamTable *pt, float *out) {
    for (int i = 0; i < pt->n; i++) {
        out[i] = 0.0f;
        for (int r = 0; r < n; r++) {
            if (wd_glob_match(rules[r].pattern, pt->t[i].name)) {
                out[i] = (float)rules[r].value;
                break; // first match wins, as in vmoe's pattern lists
            }
        }
    }
}
