// Image decoding by magic bytes (JPEG via libjpeg-turbo, PNG via libpng) and
// the preprocessing chain in big_vision's string style
// ("inception_crop(224)|flip_lr|value_range(-1,1)").
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "../core/rng.h"

// 8-bit interleaved pixels, c = 1 (gray) or 3 (RGB).
typedef struct {
    int w, h, c;
    uint8_t *px;          // h*w*c bytes, owned (free with image_free)
} Image;

// Decoder limits: images whose header claims more pixels are refused.
#define IMAGE_MAX_PIXELS (64 * 1024 * 1024)

// Decodes buf by its magic bytes into `channels` (1 or 3): grayscale, CMYK,
// palette, 16-bit and alpha are converted. min_side > 0 lets JPEG decode at
// a reduced DCT scale (1/2, 1/4, 1/8) while the shorter side stays >=
// min_side. Returns 0, or -1 with a reason in err (not JPEG/PNG, truncated,
// too large, ...). PNG alpha and tRNS are dropped, not composited (as
// tf.io.decode_png); RGB -> gray uses Rec.601 weights in both decoders.
// Thread-safe: no shared state; out->px is malloc'd (image_free).
int image_decode(const uint8_t *buf, size_t len, int channels, int min_side, Image *out,
                 char *err, size_t errlen);
void image_free(Image *im);

#define PP_MAX_OPS 16

typedef enum {
    PP_INCEPTION_CROP,   // (size[, area_min]) random area area_min%..100% (default 5),
                         // aspect 3/4..4/3, resized to size; b = area_min in percent
    PP_FLIP_LR,          // random horizontal flip, p = 0.5
    PP_RESIZE,           // (size) or (h, w)
    PP_RESIZE_SMALL,     // (size): shorter side to size, aspect kept
    PP_CENTRAL_CROP,     // (size) or (h, w)
    PP_VALUE_RANGE,      // (lo, hi): [0,255] -> [lo,hi] as floats
} PpKind;

typedef struct {
    PpKind kind;
    float a, b;          // arguments (sizes or range ends)
} PpOp;

typedef struct {
    int n;
    PpOp op[PP_MAX_OPS];
} PpChain;

// Parses "op(args)|op|...". Returns 0, or -1 naming the op in err.
int pp_parse(const char *spec, PpChain *pp, char *err, size_t errlen);
// The output size (S) the chain produces: the size of the last
// inception_crop / resize / central_crop, or -1 if none, not square, or the
// last is resize_small (image-dependent).
int pp_output_size(const PpChain *pp);
// The min_side to pass to image_decode: the smallest shorter side at which
// the chain's first geometric op still sees full detail (resize_small(s): s;
// resize(h, w): max(h, w); inception_crop(s): s / sqrt(area_min), 1002 for
// 224; central_crop first or no geometry: 0, i.e. no DCT downscaling).
int pp_min_side(const PpChain *pp);
// The size resize_small(s) gives an h x w image: shorter side s, the other
// scaled in float32 and rounded half-to-even (tf.round), as big_vision does.
void pp_resize_small_dims(int h, int w, int s, int *oh, int *ow);
// The random crop box of inception_crop for an h x w image: area fraction
// uniform in [area_min, 1], aspect w/h log-uniform in [3/4, 4/3], up to 10
// tries, else the whole image. Draws from rng only.
void pp_inception_box(int h, int w, float area_min, Rng *rng, int *y, int *x, int *ch,
                      int *cw);
// Runs the chain on `in`, writing floats (S,S,C) row-major to out (S, C from
// the chain and image); random ops draw from rng. Without value_range the
// output is pixel values in [0,255]. Returns 0, or -1 with err.
// The caller provides out with room for S*S*in->c floats and its own Rng per
// thread; -1 (nothing useful in out) when the chain does not end at S x S or
// a crop exceeds the image. `in` is only read. Temporary buffers for
// intermediate resizes/flips are malloc'd and freed per call. "decode" in a
// spec is accepted and ignored (the loader always decodes first).
int pp_apply(const PpChain *pp, const Image *in, float *out, int S, Rng *rng, char *err,
             size_t errlen);
