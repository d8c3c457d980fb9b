// Writes the checkpoint fuzzer's seed corpus: real checkpoints of the tiny
// table in ckpt_table.h (with and without per-rank loader positions), via
// ckpt_save. Usage: ckpt_seed OUTDIR (run by `make fuzz-seeds`).
#include "ckpt_table.h"
#include "train/ckpt.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
        return 2;
    }
    ParamTable pt;
    fuzz_ckpt_table(&pt);
    float *b = calloc(3 * pt.total, sizeof *b);
    if (!b) return 1;
    for (size_t i = 0; i < 3 * pt.total; i++) b[i] = (float)i * 0.25f - 3.0f;
    LoaderPos all[2] = {{1, 5}, {1, 6}};
    CkptOut c = {.step = 1, .world_size = 1, .config = "[model]\nwidth = 3\n", .pt = &pt,
                 .params = b, .m = b + pt.total, .v = b + 2 * pt.total, .pos = {0, 7}, .skipped = 2};
    char err[1024];
    if (ckpt_save(argv[1], &c, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    c.step = 2, c.world_size = 2, c.pos_all = all;
    if (ckpt_save(argv[1], &c, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    free(b);
    ptable_free(&pt);
    return 0;
}
