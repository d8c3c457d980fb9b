// Shared by the fuzz harnesses (tests/fuzz/fuzz_*.c): the libFuzzer entry
// point each defines, and a per-process scratch directory for harnesses whose
// code under test reads files. Built two ways: with clang -fsanitize=fuzzer
// for `make fuzz`, and with the project's compiler plus replay.c's main() for
// `make test`, which feeds the committed corpus and crash inputs through the
// same entry point.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// A private directory under /tmp, made once per process and removed at exit
// (with the few files the harnesses write into it).
static char fuzz_dir_buf[64];
static char fuzz_files[8][128];
static int fuzz_nfiles;

static void fuzz_cleanup(void) {
    for (int i = 0; i < fuzz_nfiles; i++) unlink(fuzz_files[i]);
    if (fuzz_dir_buf[0]) rmdir(fuzz_dir_buf);
}

// dir/name, remembered for removal at exit.
static inline const char *fuzz_path(const char *name) {
    if (!fuzz_dir_buf[0]) {
        snprintf(fuzz_dir_buf, sizeof fuzz_dir_buf, "/tmp/softmoe_fuzz.XXXXXX");
        if (!mkdtemp(fuzz_dir_buf)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fuzz_cleanup);
    }
    for (int i = 0; i < fuzz_nfiles; i++)
        if (!strcmp(strrchr(fuzz_files[i], '/') + 1, name)) return fuzz_files[i];
    if (fuzz_nfiles == 8) abort();
    snprintf(fuzz_files[fuzz_nfiles], sizeof fuzz_files[0], "%s/%s", fuzz_dir_buf, name);
    return fuzz_files[fuzz_nfiles++];
}

// Writes data to path (replacing it); aborts on failure, which is the
// harness's fault, not the code's under test.
static inline void fuzz_write(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}
