// The tiny parameter table the checkpoint fuzzer loads against, shared with
// the seed writer (ckpt_seed.c) so the committed seed checkpoints match it:
// a dense tensor and a stacked expert tensor, as a real model has both.
#pragma once
#include "model/params.h"

static inline void fuzz_ckpt_table(ParamTable *pt) {
    ptable_init(pt);
    ptable_add(pt, "head/kernel", INIT_ZEROS, 0, 0, 0, 2, (int[]){3, 2});
    int e = ptable_add(pt, "Encoder/encoderblock_0/Moe/Mlp/Dense_0/kernel", INIT_ZEROS, 0, 0, 0, 3,
                       (int[]){2, 3, 4});
    pt->t[e].n_stack = pt->t[e].stack_total = 2;
    ptable_add(pt, "head/bias", INIT_ZEROS, 0, 0, 0, 1, (int[]){2});
}
