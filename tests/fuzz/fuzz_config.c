// Fuzzes the config parser (src/core/config.c) with the round-trip property
// of DESIGN.md: whatever config_load accepts, config_write writes a file that
// config_load reads back to the identical Config (compared byte for byte),
// else abort. Input: the config file's bytes, then optionally "\0\0" and
// NUL-separated command-line overrides ("section.key=value"), the path by
// which values a file could not hold (e.g. ";x") can arrive.
#include "fuzz.h"

#include "core/config.h"

#define MAX_OVERRIDES 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *sep = NULL;
    for (size_t i = 0; i + 1 < size && !sep; i++)
        if (data[i] == 0 && data[i + 1] == 0) sep = data + i;
    size_t flen = sep ? (size_t)(sep - data) : size;
    const char *in = fuzz_path("in.ini"), *out = fuzz_path("out.ini");
    fuzz_write(in, data, flen);

    char *ov[MAX_OVERRIDES], *ovbuf = NULL;
    int nov = 0;
    if (sep) {
        size_t olen = size - flen - 2;
        ovbuf = malloc(olen + 1);
        if (!ovbuf) abort();
        memcpy(ovbuf, sep + 2, olen);
        ovbuf[olen] = '\0';
        for (char *p = ovbuf; p <= ovbuf + olen && nov < MAX_OVERRIDES; p += strlen(p) + 1)
            if (*p) ov[nov++] = p;
    }

    static Config a, b;  // static: a Config is several KB
    char err[1024];
    if (config_load(&a, in, nov, ov, err, sizeof err) == 0) {
        // config_to_ini must agree with itself on the length it needs.
        size_t need = config_to_ini(&a, NULL, 0);
        char *text = malloc(need + 1);
        if (!text || config_to_ini(&a, text, need + 1) != need || strlen(text) != need) abort();
        free(text);
        if (config_write(&a, out) != 0) {
            perror(out);
            abort();
        }
        if (config_load(&b, out, 0, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "round trip: the written config does not load: %s\n", err);
            abort();
        }
        if (memcmp(&a, &b, sizeof a) != 0) {
            fprintf(stderr, "round trip: the written config reloads to other values\n");
            abort();
        }
    } else if (!err[0]) {
        fprintf(stderr, "config_load failed without a message\n");
        abort();
    }
    free(ovbuf);
    return 0;
}
