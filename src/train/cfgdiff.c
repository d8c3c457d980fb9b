// Config differences on resume (see cfgdiff.h).
#include "cfgdiff.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"

typedef struct {
    char key[128];     // "section.key"
    char *value;
} Entry;

// "section.key = value" entries of a resolved INI text (comments and blank
// lines skipped). Returns the count; *out malloc'd.
static int entries(const char *ini, Entry **out) {
    int n = 0, cap = 64;
    Entry *e = sm_malloc((size_t)cap * sizeof *e);
    char section[64] = "";
    for (const char *p = ini; *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char line[4096];
        snprintf(line, sizeof line, "%.*s", (int)(len < sizeof line ? len : sizeof line - 1), p);
        p += len + (end ? 1 : 0);
        char *eq = strchr(line, '=');
        if (line[0] == '[') {
            char *close = strchr(line, ']');
            if (close) *close = '\0';
            snprintf(section, sizeof section, "%.60s", line + 1);
        } else if (line[0] && line[0] != ';' && line[0] != '#' && eq) {
            char *k = line, *v = eq + 1;
            *eq = '\0';
            while (*k == ' ') k++;
            for (char *t = eq - 1; t >= k && *t == ' '; t--) *t = '\0';
            while (*v == ' ') v++;
            if (n == cap) e = realloc(e, (size_t)(cap *= 2) * sizeof *e);
            SM_CHECK(e, "out of memory comparing configs");
            snprintf(e[n].key, sizeof e[n].key, "%.60s.%.60s", section, k);
            e[n++].value = strdup(v);
        }
    }
    *out = e;
    return n;
}

// Keys that do not change what is trained: how long, how it is logged,
// checkpointed, evaluated, where, with how many threads and ranks, and the
// matmul precision (checkpoints are fp32 in both modes and resume in either).
static int harmless(const char *key) {
    static const char *keys[] = {"train.steps", "train.workdir", "train.log_every",
                                 "train.ckpt_every", "train.keep_ckpts", "train.keep_every",
                                 "train.init", "train.resume", "train.allow_config_change",
                                 "train.allow_oversubscribe_memory", "train.microbatch",
                                 "train.precision",
                                 "data.val", "data.val_labels", "data.pp_eval", "data.threads"};
    static const char *sections[] = {"eval.", "fewshot.", "dist.", "bench.", "debug."};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!strcmp(key, keys[i])) return 1;
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
        if (!strncmp(key, sections[i], strlen(sections[i]))) return 1;
    return 0;
}

static void add_line(char *report, size_t n, const char *key, const char *a, const char *b) {
    size_t len = strlen(report);
    if (len + 1 < n)
        snprintf(report + len, n - len, "\n    %s: %s -> %s", key, a[0] ? a : "(empty)",
                 b[0] ? b : "(empty)");
}

int cfgdiff(const char *old_ini, const char *new_ini, char *report, size_t n) {
    Entry *a, *b;
    int na = entries(old_ini, &a), nb = entries(new_ini, &b), changed = 0;
    report[0] = '\0';
    // A key only one side has (a config from another softmoe version) is not compared.
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++) {
            if (strcmp(a[i].key, b[j].key)) continue;
            if (strcmp(a[i].value, b[j].value)) {
                add_line(report, n, a[i].key, a[i].value, b[j].value);
                changed += !harmless(a[i].key);
            }
            break;
        }
    for (int i = 0; i < na; i++) free(a[i].value);
    for (int j = 0; j < nb; j++) free(b[j].value);
    free(a), free(b);
    return changed;
}
