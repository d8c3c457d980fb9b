// Training: per step the next batch, forward and backward of each
// micro-batch (train.microbatch, gradients accumulating), gradient sync over
// the ranks, clipping, the learning rate and Adam, with a progress line on
// stderr and metrics.jsonl in the workdir (src/train/train.c; its state and
// setup in trainer.h, checkpoints under MPI in ckpt_dist.c).
#pragma once
#include <stddef.h>

#include "../core/config.h"

typedef struct {
    double first_loss;             // loss of the first step run (global batch)
    double last_loss;              // mean loss of the last logged window
    double val_prec1, val_loss;    // held-out evaluation at the end
    double img_per_s;
    long steps_done;
    int preempted;                 // stopped by SIGTERM/SIGINT after checkpointing
} TrainResult;

// Runs the configured training; dies with a clear message on NaN/Inf or I/O
// errors. quiet suppresses the progress lines (tests).
void train_run(const Config *c, int quiet, TrainResult *res);
// Images per forward/backward on each of `world` ranks (train.microbatch, 0:
// the per-rank batch); -1 with err naming the key when it does not divide the
// per-rank batch or splits a routing group (moe.group_size).
int train_micro_batch(const Config *c, int world, char *err, size_t n);
