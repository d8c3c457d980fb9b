// The key table behind config.h, shared by config.c (the table, values and
// keys), config_parse.c (files, overrides, validation) and config_write.c
// (the resolved INI text). Internal to src/core.
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

typedef enum { T_INT, T_LONG, T_U64, T_DOUBLE, T_BOOL, T_STR, T_ENUM, T_SLOTS, T_VARIANT } KeyType;

typedef struct {
    const char *section, *key;
    KeyType type;
    size_t off, size;      // field offset in Config, field size (string capacity)
    const char *def;       // default, as INI text: parsed by the same code as files
    const char *choices;   // T_ENUM: "a|b|c"
    double min;            // numeric types: smallest accepted value
} KeyDef;

#define CONFIG_MAX_KEYS 160   // room for every key (checked where the table is defined)

extern const KeyDef config_keys[];
extern const size_t config_nkeys_n;

// ViT sizes by name (model.variant).
typedef struct { const char *name; int width, depth, heads, mlp_dim; } ConfigVariant;
extern const ConfigVariant config_variants[];
extern const size_t config_nvariants;

// Writes "origin:line: message" (or "origin: message" when line <= 0, as for
// the command line) into err; always returns -1 so callers can `return config_fail(...)`.
__attribute__((format(printf, 5, 6)))
int config_fail(char *err, size_t errlen, const char *origin, int line, const char *fmt, ...);
// Nearest "section.key" (or bare section when want_section) within distance 3,
// written into out; out is "" when nothing is close enough to be a likely typo.
void config_suggest(const char *name, bool want_section, char *out, size_t outlen);
// "" -> *vi = -1; "S" -> index of S, *patch = 0; "S/16" -> also *patch = 16.
int config_parse_variant(const char *s, int *vi, int *patch);
// Parses v into key k's field of c; 0 or -1 with err naming origin:line and the key.
int config_set_value(Config *c, const KeyDef *k, const char *v, const char *origin, int line,
                     char *err, size_t errlen);
// Index of section.key in the table, or -1.
int config_key_index(const char *section, const char *key);
// The same, or -1 with err naming the unknown key and the nearest one.
int config_find_key(const char *section, const char *key, const char *origin, int line,
                    char *err, size_t errlen);
// The list-valued keys' text into their typed fields (n_shots, shots, n_l2_sweep,
// l2_sweep, n_wd, wd_rules, fewshot_train/test); after validation, so every
// list parses (an optim.wd that does not, set by config_set, gives no rules).
void config_parse_lists(Config *c);
// fewshot.<name> = <train source>|<test source>; an empty value removes the set.
int config_set_fewshot(Config *c, const char *key, const char *value, const char *origin,
                       int line, char *err, size_t errlen);
