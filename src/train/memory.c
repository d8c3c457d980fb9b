// Memory estimate per rank (see memory.h).
#include "memory.h"

#include "../model/gemm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// Ranks sharing this node's memory, as Open MPI, MPICH and Slurm tell them.
static int local_ranks(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 1;
}

// Physical memory, or a smaller cgroup (v2 or v1) limit: a container's.
static double machine_memory(void) {
    double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
    const char *files[] = {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f) continue;
        double lim = 0;
        if (fscanf(f, "%lf", &lim) == 1 && lim > 0 && lim < phys) phys = lim;
        fclose(f);
    }
    return phys;
}

void mem_estimate(Vit *m, const Config *c, int B, int mb, MemEstimate *e) {
    memset(e, 0, sizeof *e);
    double p = (double)m->pt.total * sizeof(float);
    e->params = p, e->grads = p, e->adam = 2 * p;
    // the bf16 weights the products read at bf16 precision (Vit.wh)
    e->half = gemm_is_fp32(m->precision) ? 0 : (double)m->pt.total * sizeof(uint16_t);
    e->acts = (double)vit_act_floats(m, mb) * sizeof(float);
    // The batch buffers, the loader's ring of decoded images and its shuffle
    // buffer of encoded samples (taken at a quarter of a decoded image's
    // bytes: JPEG-like compression; Fashion-MNIST PNGs are far smaller).
    double img = (double)c->image_size * c->image_size * c->channels;
    e->data = (double)B * (img + c->classes) * sizeof(float);
    if (strcmp(c->source, "synthetic")) {
        double ring = 2.0 * B + 4.0 * (c->threads > 0 ? c->threads : 1);
        e->data += ring * img * sizeof(float) + (double)c->shuffle_buffer * img / 4;
    }
    e->total = e->params + e->grads + e->adam + e->half + e->acts + e->data;
    e->local_ranks = local_ranks();
    e->avail = machine_memory() / e->local_ranks;
}

void mem_format(const MemEstimate *e, char *buf, size_t n) {
    // GB for real models, MB for the small ones the tests and examples use
    const double u = e->total >= 1e9 ? 1e9 : 1e6;
    const char *unit = u == 1e9 ? "GB" : "MB";
    char half[64] = "";
    if (e->half > 0) snprintf(half, sizeof half, ", bf16 weights %.2f", e->half / u);
    snprintf(buf, n, "%.2f %s per rank (params %.2f, grads %.2f, Adam %.2f%s, activations %.2f, "
             "data %.2f) of %.1f GB%s", e->total / u, unit, e->params / u, e->grads / u,
             e->adam / u, half, e->acts / u, e->data / u, e->avail / 1e9,
             e->local_ranks > 1 ? " (this node's memory over its ranks)" : "");
}

int mem_check(const MemEstimate *e, const Config *c, char *err, size_t n) {
    if (e->total <= e->avail || c->allow_oversubscribe_memory) return 0;
    char what[256];
    mem_format(e, what, sizeof what);
    snprintf(err, n, "this run needs about %s: it would not fit. Lower train.batch_size, use more "
             "ranks (experts and batch split over them), or set "
             "train.allow_oversubscribe_memory=true to start anyway", what);
    return -1;
}
