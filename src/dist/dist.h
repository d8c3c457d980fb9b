// The MPI world (README "Distributed training"): W ranks, data parallel over
// all of them; Soft MoE experts split over expert-parallel groups of `ep`
// consecutive ranks (ep divides W and E). Ranks r and r + ep hold the same
// experts (replicas), so their expert gradients are summed over the replicas
// (and, like the dense ones, divided by W in the optimiser step).
//
// Without MPI (built with NO_MPI=1, or not started by mpirun) everything is
// rank 0 of 1 and every collective is a no-op or a copy. Collectives are only
// called from the main thread.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct {
    double t_a2a, t_ar;        // seconds spent in all-to-alls / allreduces
    uint64_t a2a_bytes;        // bytes this rank handed to all-to-alls for other ranks
    uint64_t ar_bytes;         // floats x 4 this rank reduced (payload of allreduces)
    long n_a2a, n_ar;          // calls
} DistStats;

// Starts MPI when the process was launched by mpirun (or another PMI
// launcher); a plain start stays single-rank without touching MPI. Also makes
// a fatal error on any rank name the rank and abort the whole job.
void dist_init(int *argc, char ***argv);
void dist_finalize(void);
int dist_rank(void);
int dist_world(void);

// Builds the expert-parallel groups: ep = 0 means W. With E experts (0 for a
// dense model) checks that ep divides W and E. Returns 0, or -1 with err
// naming dist.expert_parallel.
int dist_set_ep(int ep, int E, char *err, size_t n);
int dist_ep(void);         // group size (1 before dist_set_ep)
int dist_ep_rank(void);    // rank within the group

// All-to-all within the expert group: block q of `send` (per_rank floats)
// goes to group rank q; block q of `recv` comes from group rank q.
void dist_alltoall_ep(const float *send, float *recv, size_t per_rank);
// In-place sums: over all ranks, or over the replicas of this rank's experts.
void dist_allreduce(float *x, size_t n);
void dist_allreduce_replicas(float *x, size_t n);
// In-place sums of a few doubles: over all ranks, or over the expert group.
void dist_sum(double *x, int n);
void dist_sum_ep(double *x, int n);
// The largest value over all ranks: a logical or for flags (a signal that
// reached some ranks), the largest batch of an evaluation round.
int dist_max(int v);
void dist_bcast(void *p, size_t bytes);       // from rank 0
void dist_barrier(void);
// Rank 0 receives every rank's n values in rank order (all: W*n entries);
// the others pass all = NULL.
void dist_gather_u64(const uint64_t *v, int n, uint64_t *all);
// Point-to-point hand-over of a small status (ordered writes to one file).
void dist_send_int(int to, int v);
int dist_recv_int(int from);

// Every rank's n rows (width floats each, and one int each) concatenated in
// rank order, on every rank: *X, *Y malloc'd; returns the total row count.
size_t dist_allgather_rows(const float *x, const int *y, size_t n, int width, float **X, int **Y);

// Under mpirun, a command that runs on rank 0 alone: from here on this
// process is rank 0 of 1 (every collective becomes local).
void dist_solo(void);

DistStats *dist_stats(void);
