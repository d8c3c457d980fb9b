// Image decoding for the data loader: JPEG through libjpeg-turbo, PNG through
// libpng, chosen by magic bytes so a mislabelled file still decodes. Both
// libraries report errors by longjmp. Every decode keeps its mutable state in
// a heap "job" whose pointer is set before setjmp, so the error path never
// reads a local that C11 7.13.2.1 would leave indeterminate.
#include "image.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>   // before jpeglib.h, which uses FILE
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "../core/common.h"

// Progressive JPEGs may carry thousands of tiny scans; a corrupt or hostile
// file can make decoding take minutes. libjpeg-turbo suggests a cap of this
// order (its TJPARAM_SCANLIMIT examples use 500).
#define JPEG_MAX_SCANS 500

static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};


static int too_many_pixels(uint64_t w, uint64_t h) {
    return w * h > (uint64_t)IMAGE_MAX_PIXELS;
}

// ---------------------------------------------------------------- JPEG

typedef struct {
    struct jpeg_decompress_struct d;
    struct jpeg_error_mgr em;
    struct jpeg_progress_mgr pm;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    uint8_t *px;    // (oh, ow, channels) result, handed to the Image on success
    uint8_t *row;   // one CMYK scanline (ow, 4) when we convert CMYK ourselves
} JpegJob;

static void jpg_on_error(j_common_ptr c) {
    JpegJob *j = c->client_data;
    c->err->format_message(c, j->msg);
    longjmp(j->jb, 1);
}

// Warnings normally only count. Running out of data is different: libjpeg
// would pad the image with gray and report success, so a truncated file would
// train as a half-gray picture. Those two warnings become errors.
static void jpg_on_message(j_common_ptr c, int level) {
    if (level >= 0) return;  // trace messages
    int code = c->err->msg_code;
    if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER) jpg_on_error(c);
    c->err->num_warnings++;
}

static void jpg_on_progress(j_common_ptr c) {
    JpegJob *j = c->client_data;
    if (j->d.input_scan_number > JPEG_MAX_SCANS) {
        snprintf(j->msg, sizeof j->msg, "more than %d scans (corrupt progressive JPEG?)",
                 JPEG_MAX_SCANS);
        longjmp(j->jb, 1);
    }
}

// Largest DCT scale 1/8, 1/4 or 1/2 that keeps the shorter side (libjpeg
// rounds scaled sizes up) at least min_side; 1 when min_side <= 0.
static unsigned jpg_scale_denom(unsigned w, unsigned h, int min_side) {
    if (min_side <= 0) return 1;
    unsigned s = w < h ? w : h;
    for (unsigned d = 8; d >= 2; d /= 2)
        if ((s + d - 1) / d >= (unsigned)min_side) return d;
    return 1;
}

// Adobe (Photoshop) CMYK is stored inverted: 255 means no ink, so the
// channel times K is already the RGB value. Plain CMYK stores ink amounts.
static void cmyk_to_out(const uint8_t *cmyk, uint8_t *out, int w, int channels, int inverted) {
    for (int x = 0; x < w; x++, cmyk += 4) {
        int c = cmyk[0], m = cmyk[1], y = cmyk[2], k = cmyk[3];
        if (!inverted) c = 255 - c, m = 255 - m, y = 255 - y, k = 255 - k;
        int r = (c * k + 127) / 255, g = (m * k + 127) / 255, b = (y * k + 127) / 255;
        if (channels == 3) {
            out[3 * x] = (uint8_t)r, out[3 * x + 1] = (uint8_t)g, out[3 * x + 2] = (uint8_t)b;
        } else {  // the same Rec.601 weights libjpeg uses for RGB -> gray
            out[x] = (uint8_t)((299 * r + 587 * g + 114 * b + 500) / 1000);
        }
    }
}

// Everything between setjmp and the result; libjpeg errors longjmp out.
static int jpg_run(JpegJob *j, const uint8_t *buf, size_t len, int channels, int min_side,
                    Image *out, char *err, size_t errlen) {
    struct jpeg_decompress_struct *d = &j->d;
    jpeg_mem_src(d, buf, (unsigned long)len);
    jpeg_read_header(d, TRUE);
    if (too_many_pixels(d->image_width, d->image_height))
        return sm_fail(err, errlen, "JPEG is %ux%u, above the %d-pixel limit", d->image_width,
                    d->image_height, IMAGE_MAX_PIXELS);
    // libjpeg converts gray <-> RGB and YCCK -> CMYK; CMYK -> RGB is ours.
    int cmyk = d->jpeg_color_space == JCS_CMYK || d->jpeg_color_space == JCS_YCCK;
    d->out_color_space = cmyk ? JCS_CMYK : channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
    d->scale_num = 1;
    d->scale_denom = jpg_scale_denom(d->image_width, d->image_height, min_side);
    jpeg_start_decompress(d);
    int ow = (int)d->output_width, oh = (int)d->output_height;
    if (d->output_components != (cmyk ? 4 : channels))
        return sm_fail(err, errlen, "JPEG decodes to %d components, expected %d",
                    d->output_components, cmyk ? 4 : channels);
    j->px = sm_malloc((size_t)ow * oh * channels);
    if (cmyk) j->row = sm_malloc((size_t)ow * 4);
    while (d->output_scanline < d->output_height) {
        uint8_t *dst = j->px + (size_t)d->output_scanline * ow * channels;
        JSAMPROW row = cmyk ? j->row : dst;
        if (jpeg_read_scanlines(d, &row, 1) != 1)
            return sm_fail(err, errlen, "truncated JPEG (no data for row %u)", d->output_scanline);
        if (cmyk) cmyk_to_out(j->row, dst, ow, channels, d->saw_Adobe_marker);
    }
    // No jpeg_finish_decompress: what follows the last row (EOI, trailing
    // bytes) does not change the pixels.
    out->w = ow, out->h = oh, out->c = channels;
    return 0;
}

static int jpg_decode(const uint8_t *buf, size_t len, int channels, int min_side, Image *out,
                       char *err, size_t errlen) {
    JpegJob *j = sm_calloc(1, sizeof *j);
    j->d.err = jpeg_std_error(&j->em);
    j->em.error_exit = jpg_on_error;
    j->em.emit_message = jpg_on_message;
    j->pm.progress_monitor = jpg_on_progress;
    j->d.client_data = j;  // jpeg_create_decompress keeps err and client_data
    int rc = -1;
    if (setjmp(j->jb)) {
        sm_fail(err, errlen, "corrupt or truncated JPEG: %s", j->msg);
    } else {
        jpeg_create_decompress(&j->d);
        j->d.progress = &j->pm;
        rc = jpg_run(j, buf, len, channels, min_side, out, err, errlen);
    }
    // rc changes only after jpg_run returned, i.e. never before a longjmp.
    if (rc == 0) out->px = j->px, j->px = NULL;
    jpeg_destroy_decompress(&j->d);
    free(j->px);
    free(j->row);
    free(j);
    return rc;
}

// ---------------------------------------------------------------- PNG

typedef struct {
    png_structp png;
    png_infop info;
    const uint8_t *buf;
    size_t len, pos;
    char msg[256];
    uint8_t *px;       // (h, w, channels)
    png_bytep *rows;   // h pointers into px
} PngJob;

static void pngd_on_error(png_structp png, png_const_charp msg) {
    PngJob *j = png_get_error_ptr(png);
    snprintf(j->msg, sizeof j->msg, "%s", msg);
    png_longjmp(png, 1);  // returning would make libpng print to stderr first
}

static void pngd_on_warning(png_structp png, png_const_charp msg) {
    (void)png, (void)msg;  // ancillary-chunk trouble; the pixels are fine
}

static void pngd_read_mem(png_structp png, png_bytep dst, size_t n) {
    PngJob *j = png_get_io_ptr(png);
    if (n > j->len - j->pos) png_error(png, "unexpected end of data");
    memcpy(dst, j->buf + j->pos, n);
    j->pos += n;
}

// Asks libpng for 8-bit gray or RGB whatever the file holds. Alpha is
// dropped, not composited (tf.io.decode_png does the same, so big_vision
// configs see the same pixels); tRNS transparency is ignored for that reason.
// No gamma correction: stored values pass through, as in TF.
static void pngd_set_transforms(png_structp png, png_infop info, int channels) {
    int ct = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ct == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_scale_16(png);  // rounds, where strip_16 truncates
    png_set_strip_alpha(png);                // no-op when there is none
    int color = (ct & PNG_COLOR_MASK_COLOR) != 0;
    if (channels == 3 && !color) png_set_gray_to_rgb(png);
    // Rec.601 weights (0.299, 0.587) in libpng's 1/100000 units, like libjpeg.
    if (channels == 1 && color) png_set_rgb_to_gray_fixed(png, 1, 29900, 58700);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
}

static int pngd_run(PngJob *j, int channels, Image *out, char *err, size_t errlen) {
    png_set_read_fn(j->png, j, pngd_read_mem);
    png_read_info(j->png, j->info);
    png_uint_32 w = png_get_image_width(j->png, j->info);
    png_uint_32 h = png_get_image_height(j->png, j->info);
    if (too_many_pixels(w, h))
        return sm_fail(err, errlen, "PNG is %ux%u, above the %d-pixel limit", (unsigned)w,
                    (unsigned)h, IMAGE_MAX_PIXELS);
    pngd_set_transforms(j->png, j->info, channels);
    size_t rowbytes = png_get_rowbytes(j->png, j->info);
    if (rowbytes != (size_t)w * channels)
        return sm_fail(err, errlen, "PNG rows are %zu bytes after conversion, expected %zu",
                    rowbytes, (size_t)w * channels);
    j->px = sm_malloc((size_t)w * h * channels);
    j->rows = sm_malloc(sizeof *j->rows * h);
    for (png_uint_32 y = 0; y < h; y++) j->rows[y] = j->px + (size_t)y * rowbytes;
    png_read_image(j->png, j->rows);
    // No png_read_end: chunks after the image data do not change the pixels.
    out->w = (int)w, out->h = (int)h, out->c = channels;
    return 0;
}

static int pngd_decode(const uint8_t *buf, size_t len, int channels, Image *out, char *err,
                      size_t errlen) {
    PngJob *j = sm_calloc(1, sizeof *j);
    j->buf = buf, j->len = len;
    j->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, j, pngd_on_error, pngd_on_warning);
    if (j->png) j->info = png_create_info_struct(j->png);
    int rc = -1;
    if (!j->info) {
        sm_fail(err, errlen, "libpng could not allocate its structures");
    } else if (setjmp(png_jmpbuf(j->png))) {
        sm_fail(err, errlen, "corrupt or truncated PNG: %s", j->msg);
    } else {
        rc = pngd_run(j, channels, out, err, errlen);
    }
    if (rc == 0) out->px = j->px, j->px = NULL;
    png_destroy_read_struct(&j->png, &j->info, NULL);
    free(j->px);
    free(j->rows);
    free(j);
    return rc;
}

// ---------------------------------------------------------------- API

int image_decode(const uint8_t *buf, size_t len, int channels, int min_side, Image *out,
                 char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (channels != 1 && channels != 3)
        return sm_fail(err, errlen, "image_decode: channels must be 1 or 3, got %d", channels);
    if (!buf || len == 0) return sm_fail(err, errlen, "empty image (0 bytes)");
    if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF)
        return jpg_decode(buf, len, channels, min_side, out, err, errlen);
    if (len >= 8 && memcmp(buf, png_magic, 8) == 0)
        return pngd_decode(buf, len, channels, out, err, errlen);
    unsigned char head[4] = {0};
    memcpy(head, buf, len < 4 ? len : 4);
    return sm_fail(err, errlen,
                "not a JPEG or PNG image (first bytes %02x %02x %02x %02x); "
                "only JPEG and PNG are supported",
                head[0], head[1], head[2], head[3]);
}

void image_free(Image *im) {
    if (!im) return;
    free(im->px);
    im->px = NULL;
    im->w = im->h = im->c = 0;
}
