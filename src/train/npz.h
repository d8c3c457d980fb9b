// NumPy .npz files (a zip of .npy arrays, read and written with libzip):
// big_vision / vision_transformer ViT checkpoints for train.init, and
// `softmoe export`, which writes our parameters under vmoe's names.
#pragma once
#include <stddef.h>

#include "../model/params.h"

typedef struct Npz Npz;

// Opens an .npz for reading. NULL with err naming the file.
Npz *npz_open(const char *path, char *err, size_t errlen);
void npz_close(Npz *z);
// Checks that path opens as an .npz holding at least one .npy (train.init,
// before any work). 0, or -1 with err naming the file.
int npz_check(const char *path, char *err, size_t errlen);
// Reads array `name` (without ".npy") as float32 (float32 or float64 data,
// C order). Returns 0, 1 when there is no such array, -1 with err (a bad
// header, another dtype). *data malloc'd; dims[ndim] (ndim <= 8).
int npz_read(Npz *z, const char *name, float **data, int *ndim, long *dims, char *err,
             size_t errlen);

// The names an .npz may give our parameter `ours` (vmoe's own name first,
// then big_vision's layout, then the older vision_transformer one); returns
// how many were written to out (each PARAM_NAME long).
int npz_names(const char *ours, char out[][PARAM_NAME], int max);

// A tensor whose shape differs from ours: the caller adapts it (head
// re-initialised, position embedding resized) or dies naming it.
typedef void (*NpzAdapt)(void *ctx, const ParamSpec *s, const float *src, int ndim,
                         const long *dims, const char *path);

// Loads every parameter of pt from the .npz at path into params (a stacked
// expert tensor: this rank's experts). A learned position embedding without
// the cls position (big_vision adds it to the patches before the cls token
// is prepended) gets a zero cls row, which gives the same model. Returns 0,
// or -1 with err naming the file and the names tried.
int npz_load_params(const char *path, const ParamTable *pt, float *params, int has_cls,
                    NpzAdapt adapt, void *ctx, char *err, size_t errlen);

// Writes every tensor of pt (whole, as on one rank) as <name>.npy float32 to
// an uncompressed .npz at path (via path.tmp and a rename). 0 or -1 with err.
int npz_write_params(const char *path, const ParamTable *pt, const float *params, char *err,
                     size_t errlen);
