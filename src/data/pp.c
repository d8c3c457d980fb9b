// Preprocessing chains in big_vision's string syntax: parsing
// "inception_crop(224)|flip_lr|value_range(-1,1)" and running a chain on one
// decoded image to produce the float (S,S,C) model input.
//
// Pipeline: crops only move a view over the current uint8 pixels; resizes
// resample into a new buffer; the last geometric op writes floats straight
// into the caller's output (no rounding there, where big_vision casts back to
// uint8 by truncation); value_range is affine, commutes with the linear
// resampling, and is applied once at the end.
#include "image.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/common.h"

#define PP_MAX_SIZE 16384    // largest size argument accepted
#define INCEPTION_TRIES 10   // attempts before falling back to the whole image


// ---------------------------------------------------------------- parsing

typedef struct {
    const char *name;
    PpKind kind;
    int min_args, max_args;
} OpSpec;

static const OpSpec op_specs[] = {
    {"inception_crop", PP_INCEPTION_CROP, 1, 2},  // (size[, area_min percent])
    {"flip_lr", PP_FLIP_LR, 0, 0},
    {"resize", PP_RESIZE, 1, 2},
    {"resize_small", PP_RESIZE_SMALL, 1, 1},
    {"central_crop", PP_CENTRAL_CROP, 1, 2},
    {"value_range", PP_VALUE_RANGE, 2, 2},
};
#define N_OP_SPECS (int)(sizeof op_specs / sizeof op_specs[0])
#define KNOWN_OPS "inception_crop, flip_lr, resize, resize_small, central_crop, value_range"

static int is_size(float v) {
    return v >= 1 && v <= PP_MAX_SIZE && v == floorf(v);
}

// Reads "(a, b, ...)" up to the closing parenthesis; *n = number of args.
// Returns a pointer past ')' or NULL on a syntax error.
static const char *parse_args(const char *s, float *args, int max, int *n) {
    *n = 0;
    while (isspace((unsigned char)*s)) s++;
    if (*s == ')') return s + 1;
    for (;;) {
        char *end;
        float v = strtof(s, &end);
        if (end == s || !isfinite(v) || *n == max) return NULL;
        args[(*n)++] = v;
        s = end;
        while (isspace((unsigned char)*s)) s++;
        if (*s == ')') return s + 1;
        if (*s++ != ',') return NULL;
    }
}

// Checks argument values and fills op->a, op->b.
static int set_op_args(const OpSpec *sp, const float *v, int n, PpOp *op, char *err,
                       size_t errlen) {
    op->kind = sp->kind;
    op->a = n > 0 ? v[0] : 0;
    op->b = n > 1 ? v[1] : 0;
    switch (sp->kind) {
    case PP_INCEPTION_CROP:
        op->b = n > 1 ? v[1] : 5;  // big_vision's area_min default, in percent
        if (!is_size(op->a) || !(op->b > 0 && op->b <= 100))
            return sm_fail(err, errlen, "pp: inception_crop(size[, area_min]) needs an integer "
                        "size in 1..%d and 0 < area_min <= 100", PP_MAX_SIZE);
        return 0;
    case PP_RESIZE:
    case PP_CENTRAL_CROP:
        if (n == 1) op->b = op->a;
        if (!is_size(op->a) || !is_size(op->b))
            return sm_fail(err, errlen, "pp: %s(size) or %s(h, w) needs integers in 1..%d",
                        sp->name, sp->name, PP_MAX_SIZE);
        return 0;
    case PP_RESIZE_SMALL:
        if (!is_size(op->a))
            return sm_fail(err, errlen, "pp: resize_small(size) needs an integer in 1..%d",
                        PP_MAX_SIZE);
        return 0;
    case PP_VALUE_RANGE:
        if (op->a == op->b)
            return sm_fail(err, errlen, "pp: value_range(lo, hi) needs lo != hi");
        return 0;
    case PP_FLIP_LR:
        return 0;
    }
    return 0;
}

// Parses one "name" or "name(args)" from [s, e) (already trimmed). Adds it to
// pp unless it is big_vision's "decode", which the loader always does first.
static int parse_op(const char *s, const char *e, PpChain *pp, char *err, size_t errlen) {
    const char *name_end = s;
    while (name_end < e && (isalnum((unsigned char)*name_end) || *name_end == '_')) name_end++;
    int nlen = (int)(name_end - s);
    if (nlen == 0) return sm_fail(err, errlen, "pp: empty or malformed op '%.*s'", (int)(e - s), s);
    if (nlen == 6 && strncmp(s, "decode", 6) == 0 && name_end == e) return 0;
    const OpSpec *sp = NULL;
    for (int i = 0; i < N_OP_SPECS; i++)
        if ((int)strlen(op_specs[i].name) == nlen && strncmp(op_specs[i].name, s, nlen) == 0)
            sp = &op_specs[i];
    if (!sp)
        return sm_fail(err, errlen, "pp: unknown op '%.*s' (known: %s)", nlen, s, KNOWN_OPS);
    float v[4];
    int n = 0;
    const char *p = name_end;
    while (p < e && isspace((unsigned char)*p)) p++;
    if (p < e && *p == '(') {
        char tmp[128];  // strtof needs a terminated string
        int len = (int)(e - p - 1);
        if (len >= (int)sizeof tmp)
            return sm_fail(err, errlen, "pp: %s: arguments too long", sp->name);
        memcpy(tmp, p + 1, (size_t)len);
        tmp[len] = '\0';
        const char *q = parse_args(tmp, v, 4, &n);
        if (!q || *q != '\0')
            return sm_fail(err, errlen, "pp: %s: cannot parse arguments '%.*s'", sp->name,
                        (int)(e - p), p);
    } else if (p != e) {
        return sm_fail(err, errlen, "pp: %s: unexpected '%.*s'", sp->name, (int)(e - p), p);
    }
    if (n < sp->min_args || n > sp->max_args)
        return sm_fail(err, errlen, "pp: %s takes %d..%d arguments, got %d", sp->name,
                    sp->min_args, sp->max_args, n);
    if (pp->n == PP_MAX_OPS) return sm_fail(err, errlen, "pp: more than %d ops", PP_MAX_OPS);
    return set_op_args(sp, v, n, &pp->op[pp->n++], err, errlen);
}

int pp_parse(const char *spec, PpChain *pp, char *err, size_t errlen) {
    memset(pp, 0, sizeof *pp);
    if (!spec) return sm_fail(err, errlen, "pp: no preprocessing spec");
    const char *s = spec;
    for (;;) {
        const char *e = strchr(s, '|');
        if (!e) e = s + strlen(s);
        const char *a = s, *b = e;
        while (a < b && isspace((unsigned char)*a)) a++;
        while (b > a && isspace((unsigned char)b[-1])) b--;
        if (parse_op(a, b, pp, err, errlen)) return -1;
        if (*e == '\0') break;
        s = e + 1;
    }
    if (pp->n == 0) return sm_fail(err, errlen, "pp: spec '%s' has no ops", spec);
    return 0;
}

static int is_geometric(PpKind k) {
    return k == PP_INCEPTION_CROP || k == PP_RESIZE || k == PP_RESIZE_SMALL ||
           k == PP_CENTRAL_CROP;
}

int pp_output_size(const PpChain *pp) {
    for (int i = pp->n - 1; i >= 0; i--) {
        const PpOp *op = &pp->op[i];
        if (!is_geometric(op->kind)) continue;
        if (op->kind == PP_INCEPTION_CROP) return (int)op->a;
        if (op->kind == PP_RESIZE_SMALL || op->a != op->b) return -1;
        return (int)op->a;
    }
    return -1;
}

// Decoding at a DCT scale must not lower the resolution the first geometric
// op reads: resize_small(s) and resize(h, w) need s resp. max(h, w) on the
// shorter side; an inception crop may cover only area_min of the image, so
// s / sqrt(area_min) keeps even the smallest crop at >= s pixels; a crop
// without resize reads stored pixels, so no scaling at all.
int pp_min_side(const PpChain *pp) {
    for (int i = 0; i < pp->n; i++) {
        const PpOp *op = &pp->op[i];
        switch (op->kind) {
        case PP_RESIZE_SMALL: return (int)op->a;
        case PP_RESIZE: return (int)fmaxf(op->a, op->b);
        case PP_INCEPTION_CROP: return (int)ceil(op->a / sqrt(op->b / 100.0));
        case PP_CENTRAL_CROP: return 0;
        case PP_FLIP_LR:
        case PP_VALUE_RANGE: break;
        }
    }
    return 0;
}

// ---------------------------------------------------------------- geometry

void pp_resize_small_dims(int h, int w, int s, int *oh, int *ow) {
    // float32 and round-half-to-even (rintf), exactly as tf.round in big_vision.
    float factor = (float)s / (float)(h < w ? h : w);
    *oh = (int)rintf((float)h * factor);
    *ow = (int)rintf((float)w * factor);
}

// The sampler of torchvision's RandomResizedCrop (uniform area, log-uniform
// aspect, 10 tries). TF's sample_distorted_bounding_box has the same ranges
// but draws the aspect uniformly and then a height; its exact crops depend on
// TF's own RNG and cannot be matched anyway.
void pp_inception_box(int h, int w, float area_min, Rng *rng, int *y, int *x, int *ch,
                      int *cw) {
    const float lr0 = logf(3.0f / 4.0f), lr1 = logf(4.0f / 3.0f);
    for (int t = 0; t < INCEPTION_TRIES; t++) {
        float area = (float)h * (float)w * (area_min + (1.0f - area_min) * rng_uniform(rng));
        float ratio = expf(lr0 + (lr1 - lr0) * rng_uniform(rng));  // w / h
        int bw = (int)lrintf(sqrtf(area * ratio)), bh = (int)lrintf(sqrtf(area / ratio));
        if (bw >= 1 && bh >= 1 && bw <= w && bh <= h) {
            *y = (int)rng_below(rng, (uint32_t)(h - bh + 1));
            *x = (int)rng_below(rng, (uint32_t)(w - bw + 1));
            *ch = bh, *cw = bw;
            return;
        }
    }
    *y = *x = 0, *ch = h, *cw = w;
}

// A window on uint8 pixels: crops move px and shrink w, h; stride (bytes per
// row) stays the parent's, so cropping copies nothing.
typedef struct {
    const uint8_t *px;
    int w, h, c;
    size_t stride;
} View;

static View view_crop(View v, int y, int x, int h, int w) {
    v.px += (size_t)y * v.stride + (size_t)x * v.c;
    v.h = h, v.w = w;
    return v;
}

// Per output coordinate along one axis: the first input index, the number of
// taps and their weights (maxn per entry).
typedef struct {
    int *first, *n, maxn;
    float *w;
} Taps;

static void taps_alloc(Taps *t, int n_out, int maxn) {
    t->maxn = maxn;
    t->first = sm_malloc(sizeof(int) * 2 * (size_t)n_out);
    t->n = t->first + n_out;
    t->w = sm_malloc(sizeof(float) * (size_t)n_out * maxn);
}

static void taps_free(Taps *t) {
    free(t->first);
    free(t->w);
}

// tf.image.resize bilinear, antialias=False (half-pixel centers): sample at
// (i + 0.5) * in/out - 0.5, neighbours clamped to the edge.
static void taps_bilinear(Taps *t, int n_in, int n_out) {
    taps_alloc(t, n_out, 2);
    float scale = (float)n_in / (float)n_out;
    for (int i = 0; i < n_out; i++) {
        float src = ((float)i + 0.5f) * scale - 0.5f, f = floorf(src);
        int lo = (int)f < 0 ? 0 : (int)f;
        int hi = (int)ceilf(src) > n_in - 1 ? n_in - 1 : (int)ceilf(src);
        if (lo > n_in - 1) lo = n_in - 1;
        float frac = src - f;
        t->first[i] = lo;
        t->n[i] = hi > lo ? 2 : 1;
        t->w[i * 2] = hi > lo ? 1.0f - frac : 1.0f;
        t->w[i * 2 + 1] = frac;
    }
}

// tf.image.resize "area" (antialias=False): output i averages input
// [i*s, (i+1)*s), s = in/out, partial pixels weighted by their overlap.
static void taps_area(Taps *t, int n_in, int n_out) {
    float scale = (float)n_in / (float)n_out;
    taps_alloc(t, n_out, (int)ceilf(scale) + 2);
    for (int i = 0; i < n_out; i++) {
        float x0 = (float)i * scale, x1 = (float)(i + 1) * scale;
        int a = (int)floorf(x0), b = (int)ceilf(x1);
        if (b > n_in) b = n_in;  // float rounding at the far edge
        if (b - a > t->maxn) b = a + t->maxn;
        float sum = 0, *w = t->w + (size_t)i * t->maxn;
        for (int k = a; k < b; k++) {
            float lo = fmaxf((float)k, x0), hi = fminf((float)(k + 1), x1);
            w[k - a] = hi - lo;
            sum += w[k - a];
        }
        for (int k = 0; k < b - a; k++) w[k] /= sum;  // weights sum to 1
        t->first[i] = a, t->n[i] = b - a;
    }
}

// Horizontal pass: input rows [r0, r1) of src to floats tmp (r1-r0, ow, c),
// only those marked in need (bilinear on a big crop reads 2 rows per output).
static void resample_rows(const View *src, const Taps *tx, int r0, int r1, const uint8_t *need,
                          int ow, float *tmp) {
    int c = src->c;
    for (int r = r0; r < r1; r++) {
        if (!need[r - r0]) continue;
        const uint8_t *row = src->px + (size_t)r * src->stride;
        float *dst = tmp + (size_t)(r - r0) * ow * c;
        for (int x = 0; x < ow; x++) {
            const float *wx = tx->w + (size_t)x * tx->maxn;
            const uint8_t *p = row + (size_t)tx->first[x] * c;
            for (int k = 0; k < c; k++) {
                float acc = 0;
                for (int j = 0; j < tx->n[x]; j++) acc += wx[j] * p[j * c + k];
                dst[x * c + k] = acc;
            }
        }
    }
}

// Resamples src to (oh, ow): separable, horizontal then vertical, so area
// downscaling costs O(taps) per axis instead of their product. Writes floats
// to fout (oh,ow,c) when given, otherwise rounded bytes to uout.
static void resample(const View *src, int oh, int ow, int area, float *fout, uint8_t *uout) {
    Taps ty, tx;
    if (area) taps_area(&ty, src->h, oh), taps_area(&tx, src->w, ow);
    else taps_bilinear(&ty, src->h, oh), taps_bilinear(&tx, src->w, ow);
    int c = src->c, r0 = ty.first[0], r1 = ty.first[oh - 1] + ty.n[oh - 1];
    size_t rowlen = (size_t)ow * c;
    float *tmp = sm_malloc(sizeof(float) * (size_t)(r1 - r0) * rowlen);
    uint8_t *need = sm_calloc((size_t)(r1 - r0), 1);
    for (int y = 0; y < oh; y++)
        for (int t = 0; t < ty.n[y]; t++) need[ty.first[y] + t - r0] = 1;
    resample_rows(src, &tx, r0, r1, need, ow, tmp);
    for (int y = 0; y < oh; y++) {
        const float *wy = ty.w + (size_t)y * ty.maxn;
        const float *rows = tmp + (size_t)(ty.first[y] - r0) * rowlen;
        for (size_t i = 0; i < rowlen; i++) {
            float acc = 0;
            for (int t = 0; t < ty.n[y]; t++) acc += wy[t] * rows[t * rowlen + i];
            if (fout) fout[(size_t)y * rowlen + i] = acc;
            else uout[(size_t)y * rowlen + i] =
                (uint8_t)(acc <= 0 ? 0 : acc >= 255 ? 255 : acc + 0.5f);
        }
    }
    free(tmp);
    free(need);
    taps_free(&ty);
    taps_free(&tx);
}

// ---------------------------------------------------------------- apply

// Running state of pp_apply: the uint8 view (maybe over `own`), and once the
// last geometric op ran, the float result in out.
typedef struct {
    View v;
    uint8_t *own;     // buffer behind v when an op made new pixels
    float *out;       // (S,S,C), the caller's
    int S;
    int done;         // out holds the image; later ops work on floats
    double scale, shift;  // pending value_range: out = out * scale + shift (double so
                          // value_range(-1,1) maps 0 and 255 to exactly -1 and 1)
} PpState;

static void state_replace(PpState *st, uint8_t *px, int h, int w) {
    free(st->own);
    st->own = px;
    st->v.px = px, st->v.h = h, st->v.w = w, st->v.stride = (size_t)w * st->v.c;
}

static int check_final(const PpState *st, int h, int w, const char *op, char *err,
                       size_t errlen) {
    if (h == st->S && w == st->S) return 0;
    return sm_fail(err, errlen, "pp: %s produces %dx%d but the output is %dx%d", op, h, w,
                st->S, st->S);
}

// Resizes the view to (h, w); the final geometric op writes floats to out.
static int do_resize(PpState *st, int h, int w, int area, int last, const char *op, char *err,
                     size_t errlen) {
    if (last) {
        if (check_final(st, h, w, op, err, errlen)) return -1;
        resample(&st->v, h, w, area, st->out, NULL);
        st->done = 1;
        return 0;
    }
    uint8_t *px = sm_malloc((size_t)h * w * st->v.c);
    resample(&st->v, h, w, area, NULL, px);
    state_replace(st, px, h, w);
    return 0;
}

static void view_to_floats(const View *v, float *out) {
    for (int y = 0; y < v->h; y++) {
        const uint8_t *row = v->px + (size_t)y * v->stride;
        for (int i = 0; i < v->w * v->c; i++) out[(size_t)y * v->w * v->c + i] = row[i];
    }
}

static int materialize(PpState *st, const char *op, char *err, size_t errlen) {
    if (check_final(st, st->v.h, st->v.w, op, err, errlen)) return -1;
    view_to_floats(&st->v, st->out);
    st->done = 1;
    return 0;
}

static void do_flip(PpState *st) {
    int c = st->v.c, w = st->done ? st->S : st->v.w, h = st->done ? st->S : st->v.h;
    if (st->done) {  // in place on the floats
        for (int y = 0; y < h; y++) {
            float *row = st->out + (size_t)y * w * c;
            for (int x = 0; x < w / 2; x++)
                for (int k = 0; k < c; k++) {
                    float t = row[x * c + k];
                    row[x * c + k] = row[(w - 1 - x) * c + k];
                    row[(w - 1 - x) * c + k] = t;
                }
        }
        return;
    }
    uint8_t *px = sm_malloc((size_t)h * w * c);  // the view may be the caller's image
    for (int y = 0; y < h; y++) {
        const uint8_t *src = st->v.px + (size_t)y * st->v.stride;
        uint8_t *dst = px + (size_t)y * w * c;
        for (int x = 0; x < w; x++) memcpy(dst + x * c, src + (w - 1 - x) * c, (size_t)c);
    }
    state_replace(st, px, h, w);
}

static int do_central_crop(PpState *st, const PpOp *op, int last, char *err, size_t errlen) {
    int ch = (int)op->a, cw = (int)op->b;
    if (ch > st->v.h || cw > st->v.w)
        return sm_fail(err, errlen, "pp: central_crop(%d, %d) on a %dx%d image", ch, cw, st->v.h,
                    st->v.w);
    st->v = view_crop(st->v, (st->v.h - ch) / 2, (st->v.w - cw) / 2, ch, cw);
    return last ? materialize(st, "central_crop", err, errlen) : 0;
}

static int do_op(PpState *st, const PpOp *op, int last, Rng *rng, char *err, size_t errlen) {
    switch (op->kind) {
    case PP_INCEPTION_CROP: {
        int y, x, ch, cw;
        pp_inception_box(st->v.h, st->v.w, op->b / 100.0f, rng, &y, &x, &ch, &cw);
        st->v = view_crop(st->v, y, x, ch, cw);
        return do_resize(st, (int)op->a, (int)op->a, 0, last, "inception_crop", err, errlen);
    }
    case PP_RESIZE:
        return do_resize(st, (int)op->a, (int)op->b, 0, last, "resize", err, errlen);
    case PP_RESIZE_SMALL: {
        int h, w;
        pp_resize_small_dims(st->v.h, st->v.w, (int)op->a, &h, &w);
        // big_vision's resize_small default: method="area", antialias=False.
        return do_resize(st, h, w, 1, last, "resize_small", err, errlen);
    }
    case PP_CENTRAL_CROP:
        return do_central_crop(st, op, last, err, errlen);
    case PP_FLIP_LR:
        if (rng_uniform(rng) < 0.5f) do_flip(st);
        return 0;
    case PP_VALUE_RANGE: {
        // Each value_range reads its input as [0, 255], as big_vision's does.
        double s = ((double)op->b - op->a) / 255.0;
        st->scale *= s;
        st->shift = op->a + s * st->shift;
        return 0;
    }
    }
    return sm_fail(err, errlen, "pp: unknown op kind %d", (int)op->kind);
}

int pp_apply(const PpChain *pp, const Image *in, float *out, int S, Rng *rng, char *err,
             size_t errlen) {
    if (!in || !in->px || in->w < 1 || in->h < 1 || (in->c != 1 && in->c != 3))
        return sm_fail(err, errlen, "pp: bad input image (%dx%dx%d)", in ? in->h : 0,
                    in ? in->w : 0, in ? in->c : 0);
    PpState st = {.v = {in->px, in->w, in->h, in->c, (size_t)in->w * in->c},
                  .out = out, .S = S, .scale = 1, .shift = 0};
    int last = -1;  // index of the last geometric op
    for (int i = 0; i < pp->n; i++)
        if (is_geometric(pp->op[i].kind)) last = i;
    int rc = last < 0 ? materialize(&st, "the chain", err, errlen) : 0;
    for (int i = 0; i < pp->n && rc == 0; i++)
        rc = do_op(&st, &pp->op[i], i == last, rng, err, errlen);
    free(st.own);
    if (rc) return -1;
    if (st.scale != 1 || st.shift != 0) {
        size_t n = (size_t)S * S * in->c;
        for (size_t i = 0; i < n; i++) out[i] = (float)(out[i] * st.scale + st.shift);
    }
    return 0;
}
