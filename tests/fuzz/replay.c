// Replays files through a fuzz harness's LLVMFuzzerTestOneInput without
// libFuzzer, for `make test`: every file of every directory given (the seed
// corpus and the crashes found so far). A crash, a sanitizer report (in a
// DEBUG=1 build) or a harness abort fails the run; otherwise prints
// "replay NAME: N inputs, ok" and exits 0.
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (!buf) abort();
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        cap *= 2;
        buf = realloc(buf, cap);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "replay: read error on %s\n", path);
        free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s NAME DIR...\n", argv[0]);
        return 2;
    }
    long total = 0;
    for (int d = 2; d < argc; d++) {
        DIR *dir = opendir(argv[d]);
        if (!dir) {
            if (errno == ENOENT) continue;  // no crashes found yet for this target
            fprintf(stderr, "replay: cannot open %s: %s\n", argv[d], strerror(errno));
            return 1;
        }
        char **names = NULL;
        int n = 0;
        struct dirent *e;
        while ((e = readdir(dir))) {
            if (e->d_name[0] == '.') continue;
            names = realloc(names, (size_t)(n + 1) * sizeof *names);
            if (!names || asprintf(&names[n], "%s/%s", argv[d], e->d_name) < 0) abort();
            n++;
        }
        closedir(dir);
        if (n > 1) qsort(names, (size_t)n, sizeof *names, cmp);  // a stable order, for reports
        for (int i = 0; i < n; i++) {
            struct stat st;
            if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
                if (getenv("REPLAY_VERBOSE")) fprintf(stderr, "replay: %s\n", names[i]);
                if (replay_file(names[i]) != 0) return 1;
                total++;
            }
            free(names[i]);
        }
        free(names);
    }
    if (total == 0) {
        fprintf(stderr, "replay %s: no inputs found\n", argv[1]);
        return 1;
    }
    printf("replay %s: %ld inputs, ok\n", argv[1], total);
    return 0;
}
