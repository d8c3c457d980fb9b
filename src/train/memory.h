// The memory a training run will take per rank, estimated before anything
// is allocated, and the machine's memory to hold it against.
#pragma once
#include <stddef.h>

#include "../core/config.h"
#include "../model/vit.h"

typedef struct {
    double params, grads, adam, acts, data, total;  // bytes per rank
    double half;                                      // bf16 copy of the params (bf16 precision)
    double avail;        // physical memory (or the cgroup limit) / ranks on this node
    int local_ranks;
} MemEstimate;

// m: built (vit_build: the parameter table), not necessarily allocated; B
// images per step on this rank (the batch buffers), mb per forward/backward
// (the activations: train.microbatch).
void mem_estimate(Vit *m, const Config *c, int B, int mb, MemEstimate *e);
// "1.23 GB per rank (params 0.10, grads 0.10, Adam 0.20, activations 0.80,
// data 0.03) of 23.4 GB"
void mem_format(const MemEstimate *e, char *buf, size_t n);
// Refuses (returns -1 with err) when the estimate exceeds the memory and
// train.allow_oversubscribe_memory is false.
int mem_check(const MemEstimate *e, const Config *c, char *err, size_t n);
