// What the checkpoint writer (ckpt.c) and reader (ckpt_read.c) share:
// HDF5 set-up, the error helper, checksum pieces. Internal to src/train.
#pragma once
#include <hdf5.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "ckpt.h"

// HDF5's exit-time cleanup would flush (and on a full disk crash in) a file
// whose close failed; every file here is closed explicitly, so it is off.
static inline void ckpt_quiet_hdf5(void) {
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

// A tensor's checksum pieces: one per expert of a stacked expert tensor (so
// each rank writes and checks the crcs of its own slices), else one.
static inline int ckpt_pieces_total(const ParamSpec *s) { return ptable_is_expert(s) ? s->stack_total : 1; }
static inline int ckpt_pieces_local(const ParamSpec *s) { return ptable_is_expert(s) ? s->n_stack : 1; }
static inline int ckpt_piece_first(const ParamSpec *s) { return ptable_is_expert(s) ? s->stack_first : 0; }

static inline uint32_t ckpt_crc_floats(const float *p, size_t n) {
    uLong c = crc32_z(0L, Z_NULL, 0);
    return (uint32_t)crc32_z(c, (const Bytef *)p, n * sizeof(float));
}

static inline int ckpt_all_finite(const float *p, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++) bad |= !isfinite(p[i]);
    return !bad;
}

// Reads tensor `name` of group `path` into dst (this rank's experts of a
// stacked tensor) and checks each piece against `want` (NULL: the stored
// crc attributes). 0, or -1 with err naming the file and the dataset.
int ckpt_read_tensor(hid_t f, const char *path, const char *name, const ParamSpec *s,
                     float *dst, const uint32_t *want, char *err, size_t n);
