// train.init (see trainer.h): another run's parameters, from a softmoe .h5 or
// a big_vision / vmoe .npz, adapted where the head or the resolution differs.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"
#include "../model/layers.h"
#include "ckpt.h"
#include "npz.h"
#include "trainer.h"

// One tensor of train.init whose shape differs: a classifier head for other
// classes is left at its fresh init (fine-tuning on a new label set); a
// learned position embedding from another resolution is resized on its 2-D
// grid (a cls position, if any, is kept as it is). Anything else is an error.
static void adapt_tensor(Trainer *t, const ParamSpec *s, const float *src, int nd,
                         const long *dims, const char *path, int quiet) {
    const VitDims *d = &t->m.d;
    float *dst = t->m.params + s->offset;
    if (!strncmp(s->name, "head/", 5)) {
        if (!quiet)
            fprintf(stderr, "softmoe: train.init: %s has %ld classes, the config %d: head "
                    "re-initialised\n", s->name, dims[nd - 1], d->K);
        return;
    }
    int cls = d->pool == POOL_TOK;
    long Go2 = src && nd == 3 ? dims[1] - cls : -1;
    int Go = (int)lround(sqrt((double)(Go2 > 0 ? Go2 : 0)));
    if (!strcmp(s->name, "Encoder/posembed_input/pos_embedding") && nd == 3 &&
        dims[2] == d->D && (long)Go * Go == Go2) {
        if (cls) memcpy(dst, src, (size_t)d->D * sizeof(float));
        posemb_resize(dst + (size_t)cls * d->D, d->G, src + (size_t)cls * d->D, Go, d->D);
        if (!quiet)
            fprintf(stderr, "softmoe: train.init: position embedding resized from %dx%d to %dx%d\n",
                    Go, Go, d->G, d->G);
        return;
    }
    char want[64], got[128] = "(";
    ptable_shape_str(s, want, sizeof want);
    for (int k = 0; k < nd && k < 8; k++)
        snprintf(got + strlen(got), sizeof got - strlen(got), k ? ",%ld" : "%ld", dims[k]);
    strcat(got, ")");
    sm_die("train.init: checkpoint '%s': dataset /params/%s has shape %s, which does not fit the "
           "config's shape %s", path, s->name, got, want);
}

// train.init = FILE.npz (big_vision / vision_transformer / vmoe names): the
// arrays through the same adaptation as an .h5 (npz.c).
typedef struct { Trainer *t; int quiet; } NpzCtx;
static void npz_adapt(void *ctx, const ParamSpec *s, const float *src, int nd, const long *dims,
                      const char *path) {
    NpzCtx *x = ctx;
    adapt_tensor(x->t, s, src, nd, dims, path, x->quiet);
}

// train.init: parameters from another checkpoint (no optimiser state, step 0).
void trainer_init_params(Trainer *t, const char *path, int quiet) {
    char name[PARAM_NAME + 16], err[1024];
    t->m.wh_ready = 0;  // new params: the next forward converts its bf16 weights
    size_t len = strlen(path);
    if (len > 4 && !strcmp(path + len - 4, ".npz")) {
        NpzCtx x = {t, quiet};
        if (npz_load_params(path, &t->m.pt, t->m.params, t->m.d.pool == POOL_TOK, npz_adapt, &x,
                            err, sizeof err) != 0)
            sm_die("%s", err);
        if (!quiet) fprintf(stderr, "softmoe: initialised from %s\n", path);
        return;
    }
    for (int i = 0; i < t->m.pt.n; i++) {
        const ParamSpec *s = &t->m.pt.t[i];
        int nd;
        long dims[8];
        // same shape: read in place (a stacked expert tensor: this rank's experts only)
        int rc = ckpt_read_param(path, s, t->m.params + s->offset, &nd, dims, err, sizeof err);
        if (rc < 0) sm_die("%s (train.init)", err);
        if (rc == 0) continue;
        // Only the head and a learned position embedding may differ; their
        // declared size is bounded before anything is read for them.
        if (strncmp(s->name, "head/", 5) && strcmp(s->name, "Encoder/posembed_input/pos_embedding"))
            adapt_tensor(t, s, NULL, nd, dims, path, quiet);
        float *src;
        snprintf(name, sizeof name, "/params/%s", s->name);
        if (ckpt_read_any(path, name, (size_t)1 << 28, &src, &nd, dims, err, sizeof err) != 0)
            sm_die("%s (train.init)", err);
        adapt_tensor(t, s, src, nd, dims, path, quiet);
        free(src);
    }
    if (!quiet) fprintf(stderr, "softmoe: initialised from %s\n", path);
}
