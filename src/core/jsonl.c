// The JSON-lines writer (see jsonl.h).
#include "jsonl.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "common.h"

void jsonl_begin(JsonLine *j, FILE *f, const char *name) { *j = (JsonLine){f, name, 0}; }

static void key(JsonLine *j, const char *k) {
    fputs(j->n++ ? ", \"" : "{\"", j->f);
    for (const char *p = k; *p; p++) {
        if (*p == '"' || *p == '\\') fputc('\\', j->f);
        if ((unsigned char)*p >= 0x20) fputc(*p, j->f);
    }
    fputs("\": ", j->f);
}

void jsonl_int(JsonLine *j, const char *k, long long v) {
    if (!j->f) return;
    key(j, k);
    fprintf(j->f, "%lld", v);
}

void jsonl_num(JsonLine *j, const char *k, double v, int digits) {
    if (!j->f) return;
    key(j, k);
    // JSON has no NaN or Inf: null (metrics are checked finite before they get here)
    if (isfinite(v)) fprintf(j->f, "%.*g", digits, v);
    else fputs("null", j->f);
}

void jsonl_numf(JsonLine *j, int digits, double v, const char *fmt, ...) {
    if (!j->f) return;
    char k[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k, sizeof k, fmt, ap);
    va_end(ap);
    jsonl_num(j, k, v, digits);
}

void jsonl_end(JsonLine *j) {
    if (!j->f) return;
    fputs(j->n ? "}\n" : "{}\n", j->f);
    if (fflush(j->f) != 0 || ferror(j->f))
        sm_die("writing a line to '%s' failed: %s", j->name, strerror(errno));
}
