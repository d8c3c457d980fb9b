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
#define CFG_MAX_SHOTS 16  // fewshot.shots values
#define CFG_MAX_L2 32     // fewshot.l2_sweep values

// One rule of optim.wd ("pattern:value"); src/optim/wd.c parses and applies them.
#define WD_PATTERN 128
#define WD_MAX_RULES 64
typedef struct {
    char pattern[WD_PATTERN]; // glob over tensor names, '*' = any run incl. '/'
    double value;             // decay rate, multiplied by the lr in adam_update
} WdRule;

typedef struct {
    // One field per key of config_keys.def (e.g. width: D), in its order.
#define KEY(section, key, field, ctype, dim, kind, def, choices, min) ctype field dim;
#include "config_keys.def"
#undef KEY
    // fewshot.<name> = <train source>|<test source> (shards pattern or folder)
    int n_fewshot;
    char fewshot_name[CFG_MAX_FEWSHOT][64];
    char fewshot_data[CFG_MAX_FEWSHOT][CFG_PATH];

    // The list-valued keys, parsed into typed fields when the config is
    // loaded (config_load, config_set); their text above is what the
    // resolved config writes.
    int n_shots;                                   // fewshot.shots
    int shots[CFG_MAX_SHOTS];
    int n_l2_sweep;                                // fewshot.l2_sweep (0: fewshot.l2 alone)
    double l2_sweep[CFG_MAX_L2];
    int n_wd;                                      // optim.wd, the first matching rule wins
    WdRule wd_rules[WD_MAX_RULES];
    char fewshot_train[CFG_MAX_FEWSHOT][CFG_PATH]; // fewshot.<name> = train|test, split
    char fewshot_test[CFG_MAX_FEWSHOT][CFG_PATH];
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
// The same for INI text in memory (a checkpoint's /config), named `name` in
// messages ("checkpoint 'x.h5', dataset /config" gives "...:3: unknown key").
int config_load_text(Config *c, const char *name, const char *text, int noverrides,
                     char **overrides, char *err, size_t errlen);

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
