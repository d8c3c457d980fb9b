// The state of one training run, shared by the files of src/train/: train.c
// (the loop), trainer.c (setup before step 0, the workdir lock), init.c
// (train.init), ckpt_dist.c (checkpoints under MPI: gather, ordered writes,
// broadcast, loader seek). Not part of the public interface (train.h).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../core/config.h"
#include "../data/loader.h"
#include "../model/vit.h"
#include "../optim/optim.h"
#include "memory.h"

// A run of consecutive tensors of one kind in the parameter block.
typedef struct {
    size_t off, len;
    int expert;                  // stacked expert tensors (split over ranks)
} Seg;

typedef struct {
    Vit m;
    Optim opt;                   // Adam's moments and per-tensor weight decay
    float *images, *targets;     // (B,S,S,C), (B,K): the step's batch
    int B;                       // images per step on this rank (global batch / W)
    int mb, nmicro;              // images per forward/backward (train.microbatch), B / mb
    double *rm;                  // (L, MOE_NMETRICS) router metrics, mean over micro-steps
    double *load;                // (L, E) each expert's load, summed over micro-steps
    int rank, world;
    Seg *seg;                    // dense and expert runs of the block
    int nseg;
    Loader *ld;                  // NULL for data.source = synthetic
    uint64_t skipped_base;       // samples skipped before a resume (rank 0)
    MemEstimate mem;             // memory per rank, estimated before allocating
    int lock_fd;                 // WORKDIR/.lock, held by rank 0 (-1 elsewhere)
} Trainer;

// trainer.c. Everything that can fail on bad input (model, data sources)
// is checked before anything is allocated or the workdir touched.
void trainer_setup(Trainer *t, const Config *c, int quiet_arg);
void trainer_lock_workdir(Trainer *t, const Config *c);
void trainer_fresh_state(Trainer *t, const Config *c);
void trainer_free(Trainer *t);
// Sum of squares of a block (params or grads) over the whole model; collective.
double trainer_sumsq(const Trainer *t, const float *block);
// Samples skipped so far by all ranks; collective.
uint64_t trainer_skipped(const Trainer *t);

// init.c: train.init's parameters (an .h5 or .npz; no optimiser state).
void trainer_init_params(Trainer *t, const char *path, int quiet);

// ckpt_dist.c: the checkpoint of `step` written by every rank; the step to
// continue from (0: a fresh start, or train.init's parameters).
void ckpt_dist_save(Trainer *t, const Config *c, long step);
long ckpt_dist_restore(Trainer *t, const Config *c, int quiet);
