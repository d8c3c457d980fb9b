// MPI world and collectives (see dist.h). Under SM_MPI and a launcher the
// real thing; otherwise rank 0 of 1.
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"

#ifdef SM_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_world = 1, g_ep = 1, g_ep_rank = 0;
static DistStats g_stats;
#ifdef SM_MPI
static int g_mpi = 0;  // MPI_Init ran
static MPI_Comm g_ep_comm = MPI_COMM_NULL, g_rep_comm = MPI_COMM_NULL;
#endif

DistStats *dist_stats(void) { return &g_stats; }
int dist_rank(void) { return g_rank; }
int dist_world(void) { return g_world; }
int dist_ep(void) { return g_ep; }
int dist_ep_rank(void) { return g_ep_rank; }

#ifdef SM_MPI
static void abort_all(int code) {
    // Flushes what this rank printed, then takes every rank down: a rank
    // blocked in a collective would otherwise wait for this one forever.
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

// Launchers that provide a PMI environment (Open MPI's mpirun, srun, MPICH's
// hydra). Without one, MPI_Init would start a singleton: slower and useless.
static int launched_by_mpirun(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

// MPI counts are int: large buffers go in chunks.
#define CHUNK ((size_t)1 << 28)
#endif

void dist_init(int *argc, char ***argv) {
#ifdef SM_MPI
    if (!launched_by_mpirun()) return;
    int provided;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "softmoe: error: MPI_Init_thread failed\n");
        exit(1);
    }
    g_mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_world);
    if (g_world > 1) {
        snprintf(sm_rank_tag, sizeof sm_rank_tag, "rank %d of %d: ", g_rank, g_world);
        sm_fatal_exit = abort_all;
        sm_rank_nonzero = g_rank != 0;
    }
#else
    (void)argc, (void)argv;
#endif
}

void dist_finalize(void) {
#ifdef SM_MPI
    if (!g_mpi) return;
    if (g_ep_comm != MPI_COMM_NULL) MPI_Comm_free(&g_ep_comm);
    if (g_rep_comm != MPI_COMM_NULL) MPI_Comm_free(&g_rep_comm);
    MPI_Finalize();
    g_mpi = 0;
#endif
}

int dist_set_ep(int ep, int E, char *err, size_t n) {
    if (ep == 0) ep = g_world;
    if (E == 0) ep = 1;  // a dense model has no experts to split
    if (ep < 1 || g_world % ep != 0) {
        snprintf(err, n, "dist.expert_parallel = %d must divide the number of ranks (%d)", ep,
                 g_world);
        return -1;
    }
    if (E % ep != 0) {
        snprintf(err, n, "dist.expert_parallel = %d must divide moe.experts = %d (set "
                 "dist.expert_parallel to a divisor of %d)", ep, E, E);
        return -1;
    }
    g_ep = ep;
    g_ep_rank = g_rank % ep;
#ifdef SM_MPI
    if (g_mpi) {
        if (g_ep_comm != MPI_COMM_NULL) MPI_Comm_free(&g_ep_comm);
        if (g_rep_comm != MPI_COMM_NULL) MPI_Comm_free(&g_rep_comm);
        // Groups of ep consecutive ranks; replicas share the rank within a group.
        MPI_Comm_split(MPI_COMM_WORLD, g_rank / ep, g_ep_rank, &g_ep_comm);
        MPI_Comm_split(MPI_COMM_WORLD, g_ep_rank, g_rank / ep, &g_rep_comm);
    }
#endif
    return 0;
}

void dist_alltoall_ep(const float *send, float *recv, size_t per_rank) {
    if (g_ep == 1) {
        if (recv != send) memcpy(recv, send, per_rank * sizeof(float));
        return;
    }
#ifdef SM_MPI
    SM_CHECK(per_rank < CHUNK * 8, "all-to-all block of %zu floats is too large", per_rank);
    double t0 = sm_now();
    MPI_Alltoall(send, (int)per_rank, MPI_FLOAT, recv, (int)per_rank, MPI_FLOAT, g_ep_comm);
    g_stats.t_a2a += sm_now() - t0;
    g_stats.a2a_bytes += (uint64_t)per_rank * sizeof(float) * (uint64_t)(g_ep - 1);
    g_stats.n_a2a++;
#endif
}

#ifdef SM_MPI
static void allreduce_on(float *x, size_t n, MPI_Comm comm) {
    double t0 = sm_now();
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t k = n - i < CHUNK ? n - i : CHUNK;
        MPI_Allreduce(MPI_IN_PLACE, x + i, (int)k, MPI_FLOAT, MPI_SUM, comm);
    }
    g_stats.t_ar += sm_now() - t0;
    g_stats.ar_bytes += (uint64_t)n * sizeof(float);
    g_stats.n_ar++;
}
#endif

void dist_allreduce(float *x, size_t n) {
#ifdef SM_MPI
    if (g_world > 1) allreduce_on(x, n, MPI_COMM_WORLD);
#else
    (void)x, (void)n;
#endif
}

void dist_allreduce_replicas(float *x, size_t n) {
#ifdef SM_MPI
    if (g_world / g_ep > 1) allreduce_on(x, n, g_rep_comm);
#else
    (void)x, (void)n;
#endif
}

void dist_sum(double *x, int n) {
#ifdef SM_MPI
    if (g_world > 1) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)x, (void)n;
#endif
}

void dist_sum_ep(double *x, int n) {
#ifdef SM_MPI
    if (g_ep > 1) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, g_ep_comm);
#else
    (void)x, (void)n;
#endif
}

int dist_max(int v) {
#ifdef SM_MPI
    if (g_world > 1) MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#endif
    return v;
}

void dist_bcast(void *p, size_t bytes) {
#ifdef SM_MPI
    if (g_world > 1) MPI_Bcast(p, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD);
#else
    (void)p, (void)bytes;
#endif
}

void dist_barrier(void) {
#ifdef SM_MPI
    if (g_world > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}

void dist_gather_u64(const uint64_t *v, int n, uint64_t *all) {
#ifdef SM_MPI
    if (g_world > 1) {
        MPI_Gather(v, n, MPI_UINT64_T, all, n, MPI_UINT64_T, 0, MPI_COMM_WORLD);
        return;
    }
#endif
    if (all) memcpy(all, v, (size_t)n * sizeof *v);
}

void dist_send_int(int to, int v) {
#ifdef SM_MPI
    MPI_Send(&v, 1, MPI_INT, to, 7, MPI_COMM_WORLD);
#else
    (void)to, (void)v;
#endif
}

int dist_recv_int(int from) {
    int v = 0;
#ifdef SM_MPI
    MPI_Recv(&v, 1, MPI_INT, from, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
#else
    (void)from;
#endif
    return v;
}

size_t dist_allgather_rows(const float *x, const int *y, size_t n, int width, float **X, int **Y) {
    size_t total = n;
#ifdef SM_MPI
    int *cnt = NULL, *disp = NULL;
    if (g_world > 1) {
        SM_CHECK(n * (size_t)width < ((size_t)1 << 31), "allgather of %zu rows too large", n);
        cnt = sm_malloc((size_t)g_world * 2 * sizeof(int)), disp = cnt + g_world;
        int mine = (int)n;
        MPI_Allgather(&mine, 1, MPI_INT, cnt, 1, MPI_INT, MPI_COMM_WORLD);
        total = 0;
        for (int r = 0; r < g_world; r++) total += (size_t)cnt[r];
        SM_CHECK(total * (size_t)width < ((size_t)1 << 31), "allgather of %zu rows too large", total);
    }
#endif
    *X = sm_malloc((total ? total : 1) * (size_t)width * sizeof(float));
    *Y = sm_malloc((total ? total : 1) * sizeof(int));
#ifdef SM_MPI
    if (g_world > 1) {
        for (int r = 0, off = 0; r < g_world; r++) disp[r] = off, off += cnt[r];
        MPI_Allgatherv(y, (int)n, MPI_INT, *Y, cnt, disp, MPI_INT, MPI_COMM_WORLD);
        for (int r = 0; r < g_world; r++) cnt[r] *= width, disp[r] *= width;
        MPI_Allgatherv(x, (int)n * width, MPI_FLOAT, *X, cnt, disp, MPI_FLOAT, MPI_COMM_WORLD);
        free(cnt);
        return total;
    }
#endif
    if (n) {
        memcpy(*X, x, n * (size_t)width * sizeof(float));
        memcpy(*Y, y, n * sizeof(int));
    }
    return total;
}

void dist_solo(void) {
    g_rank = 0, g_world = 1, g_ep = 1, g_ep_rank = 0;
}
