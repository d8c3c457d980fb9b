// One JSON object per line (metrics.jsonl, `softmoe eval`): a line is begun,
// given keys in order, and ended, which writes "}\n" and flushes. Numbers are
// printed with %.*g at the digits the caller gives; keys are escaped.
#pragma once
#include <stdio.h>

typedef struct {
    FILE *f;                     // NULL: every call does nothing (ranks other than 0)
    const char *name;            // the file, for the error when a line cannot be written
    int n;                       // keys written so far
} JsonLine;

void jsonl_begin(JsonLine *j, FILE *f, const char *name);
void jsonl_int(JsonLine *j, const char *key, long long v);
void jsonl_num(JsonLine *j, const char *key, double v, int digits);
// The key from a printf format, e.g. jsonl_numf(&j, 4, v, "moe/%d/%s", l, name).
__attribute__((format(printf, 4, 5)))
void jsonl_numf(JsonLine *j, int digits, double v, const char *fmt, ...);
// Ends and flushes the line; a line that cannot be written (a full disk)
// stops the program naming the file, at once rather than after the run.
void jsonl_end(JsonLine *j);
