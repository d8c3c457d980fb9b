// Tests for src/data/image.c and src/data/pp.c: JPEG (RGB, gray, CMYK, YCCK)
// and PNG (gray, RGB, palette, 16-bit, RGBA) made in memory and decoded;
// corrupt, truncated, empty and oversized input refused with a message; DCT
// downscaling; each preprocessing op against hand-computed values.
//
// JPEG tolerance: the test images are solid 8x8 blocks at quality 100 with no
// chroma subsampling, so only DC coefficients are nonzero, quantized with step
// 1 (error <= 1/16 level after the 1/8-scaled DC); what remains is the
// YCbCr<->RGB rounding on encode and decode, 1 level each. Observed with
// libjpeg-turbo 2.1: max error 1 (RGB, YCCK), 0 (gray, CMYK); allowed 2 where
// a color transform is involved (SIMD and C paths round differently), 1
// without.
#include "data/image.h"
#include "testutil.h"

#include <jpeglib.h>
#include <png.h>
#include <stdint.h>
#include <string.h>

static char err[512];

#define ASSERT_HAS(msg, part) \
    ck_assert_msg(strstr((msg), (part)) != NULL, "message '%s' lacks '%s'", (msg), (part))

// ---------------------------------------------------------------- encoders

// Encodes (h,w,comps) pixels in color space `in_cs`, stored as `jpeg_cs`,
// quality 100 without chroma subsampling. adobe = 0 drops the Adobe marker;
// adobe = 2 keeps it and writes a progressive JPEG.
static uint8_t *jpeg_encode(const uint8_t *px, int w, int h, int comps, J_COLOR_SPACE in_cs,
                            J_COLOR_SPACE jpeg_cs, int adobe, size_t *len) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr em;
    c.err = jpeg_std_error(&em);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long n = 0;
    jpeg_mem_dest(&c, &buf, &n);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h;
    c.input_components = comps, c.in_color_space = in_cs;
    jpeg_set_defaults(&c);
    jpeg_set_colorspace(&c, jpeg_cs);
    if (!adobe) c.write_Adobe_marker = FALSE;
    jpeg_set_quality(&c, 100, TRUE);
    for (int i = 0; i < c.num_components; i++)
        c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
    if (adobe == 2) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)px + (size_t)c.next_scanline * w * comps;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *len = n;
    return buf;
}

typedef struct {
    uint8_t *p;
    size_t n, cap;
} Buf;

static void buf_write(png_structp png, png_bytep data, size_t n) {
    Buf *b = png_get_io_ptr(png);
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void buf_flush(png_structp png) { (void)png; }

// Rows are given packed as libpng wants them (16-bit big-endian). plte/trns
// are used for palette images.
static uint8_t *png_encode(const uint8_t *rows, int w, int h, int ct, int depth,
                           const png_color *plte, int nplte, const uint8_t *trns, int ntrns,
                           size_t *len) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert_ptr_nonnull(info);
    Buf b = {0};
    png_set_write_fn(png, &b, buf_write, buf_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, ct, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (plte) png_set_PLTE(png, info, plte, nplte);
    if (trns) png_set_tRNS(png, info, trns, ntrns, NULL);
    png_write_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, rows + (size_t)y * rowbytes);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    *len = b.n;
    return b.p;
}

// (h,w,c) image filled with one color per 8x8 block column: left half `a`,
// right half `b` (w a multiple of 16), so every JPEG block is solid.
static uint8_t *two_colors(int w, int h, int c, const uint8_t *a, const uint8_t *b) {
    uint8_t *px = malloc((size_t)w * h * c);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            memcpy(px + ((size_t)y * w + x) * c, x < w / 2 ? a : b, (size_t)c);
    return px;
}

static uint8_t *noise(int n, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed, 7);
    uint8_t *p = malloc((size_t)n);
    for (int i = 0; i < n; i++) p[i] = (uint8_t)rng_u32(&r);
    return p;
}

static Image decode_ok(const uint8_t *buf, size_t len, int channels, int min_side) {
    Image im;
    ck_assert_msg(image_decode(buf, len, channels, min_side, &im, err, sizeof err) == 0, "%s",
                  err);
    return im;
}

static void decode_fails(const uint8_t *buf, size_t len, const char *part) {
    Image im;
    err[0] = '\0';
    ck_assert_int_eq(image_decode(buf, len, 3, 0, &im, err, sizeof err), -1);
    ck_assert_ptr_null(im.px);
    ASSERT_HAS(err, part);
}

// Every pixel of the left/right half equals a/b within tol.
static void check_halves(const Image *im, const uint8_t *a, const uint8_t *b, int tol) {
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++)
            for (int k = 0; k < im->c; k++) {
                int want = (x < im->w / 2 ? a : b)[k];
                int got = im->px[((size_t)y * im->w + x) * im->c + k];
                ck_assert_msg(abs(got - want) <= tol, "(%d,%d,%d): got %d want %d (tol %d)", y,
                              x, k, got, want, tol);
            }
}

static uint8_t gray601(const uint8_t *rgb) {
    return (uint8_t)((299 * rgb[0] + 587 * rgb[1] + 114 * rgb[2] + 500) / 1000);
}

// ---------------------------------------------------------------- JPEG

START_TEST(test_jpeg_rgb) {
    const uint8_t a[3] = {200, 30, 90}, b[3] = {10, 180, 250};
    uint8_t *px = two_colors(32, 16, 3, a, b);
    size_t len;
    uint8_t *jpg = jpeg_encode(px, 32, 16, 3, JCS_RGB, JCS_YCbCr, 1, &len);
    Image im = decode_ok(jpg, len, 3, 0);
    ck_assert_int_eq(im.w, 32); ck_assert_int_eq(im.h, 16); ck_assert_int_eq(im.c, 3);
    check_halves(&im, a, b, 2);
    image_free(&im);
    // One channel: libjpeg keeps the luma plane, i.e. Rec.601 gray.
    im = decode_ok(jpg, len, 1, 0);
    ck_assert_int_eq(im.c, 1);
    uint8_t ga = gray601(a), gb = gray601(b);
    check_halves(&im, &ga, &gb, 2);
    image_free(&im);
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_jpeg_gray) {
    const uint8_t a = 50, b = 181;
    uint8_t *px = two_colors(16, 8, 1, &a, &b);
    size_t len;
    uint8_t *jpg = jpeg_encode(px, 16, 8, 1, JCS_GRAYSCALE, JCS_GRAYSCALE, 1, &len);
    Image im = decode_ok(jpg, len, 1, 0);
    ck_assert_int_eq(im.w, 16); ck_assert_int_eq(im.h, 8); ck_assert_int_eq(im.c, 1);
    check_halves(&im, &a, &b, 1);  // no color conversion: DC rounding only
    Image rgb = decode_ok(jpg, len, 3, 0);
    ck_assert_int_eq(rgb.c, 3);
    for (int i = 0; i < 16 * 8; i++)  // replicated exactly from the gray decode
        for (int k = 0; k < 3; k++) ck_assert_int_eq(rgb.px[i * 3 + k], im.px[i]);
    image_free(&im);
    image_free(&rgb);
    free(jpg);
    free(px);
}
END_TEST

// CMYK as ink amounts; stored inverted (Adobe/Photoshop style) or plain.
// Both conventions must give the same RGB = (255-C)(255-K)/255 etc.
static void check_cmyk(J_COLOR_SPACE jpeg_cs, int adobe, int tol) {
    const uint8_t ink_a[4] = {51, 153, 0, 25}, ink_b[4] = {0, 0, 204, 102};
    uint8_t sa[4], sb[4], rgb_a[3], rgb_b[3];
    for (int k = 0; k < 4; k++) {
        sa[k] = adobe ? 255 - ink_a[k] : ink_a[k];
        sb[k] = adobe ? 255 - ink_b[k] : ink_b[k];
    }
    for (int k = 0; k < 3; k++) {
        rgb_a[k] = (uint8_t)(((255 - ink_a[k]) * (255 - ink_a[3]) + 127) / 255);
        rgb_b[k] = (uint8_t)(((255 - ink_b[k]) * (255 - ink_b[3]) + 127) / 255);
    }
    uint8_t *px = two_colors(32, 16, 4, sa, sb);
    size_t len;
    uint8_t *jpg = jpeg_encode(px, 32, 16, 4, JCS_CMYK, jpeg_cs, adobe, &len);
    Image im = decode_ok(jpg, len, 3, 0);
    ck_assert_int_eq(im.c, 3);
    check_halves(&im, rgb_a, rgb_b, tol);
    image_free(&im);
    im = decode_ok(jpg, len, 1, 0);
    uint8_t ga = gray601(rgb_a), gb = gray601(rgb_b);
    check_halves(&im, &ga, &gb, tol);
    image_free(&im);
    free(jpg);
    free(px);
}

START_TEST(test_jpeg_cmyk) {
    check_cmyk(JCS_CMYK, 1, 1);   // Adobe marker: inverted data
    check_cmyk(JCS_CMYK, 0, 1);   // no marker: plain ink amounts
    check_cmyk(JCS_YCCK, 1, 2);   // YCCK adds the YCC round trip on C, M, Y
}
END_TEST

// 400x300 decodes at 1/4 for min_side 64: 1/8 would give 50x38 (38 < 64).
START_TEST(test_jpeg_dct_scaling) {
    uint8_t *px = noise(400 * 300 * 3, 1);
    size_t len;
    uint8_t *jpg = jpeg_encode(px, 400, 300, 3, JCS_RGB, JCS_YCbCr, 1, &len);
    const int cases[][3] = {{0, 400, 300}, {64, 100, 75}, {38, 50, 38}, {39, 100, 75},
                            {150, 200, 150}, {151, 400, 300}, {1000, 400, 300}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Image im = decode_ok(jpg, len, 3, cases[i][0]);
        ck_assert_msg(im.w == cases[i][1] && im.h == cases[i][2],
                      "min_side %d: got %dx%d, want %dx%d", cases[i][0], im.w, im.h,
                      cases[i][1], cases[i][2]);
        image_free(&im);
    }
    free(jpg);
    free(px);
}
END_TEST

START_TEST(test_jpeg_corrupt) {
    // A JPEG start followed by garbage, for several seeds.
    for (uint64_t seed = 1; seed <= 20; seed++) {
        uint8_t *p = noise(2000, seed);
        p[0] = 0xFF, p[1] = 0xD8, p[2] = 0xFF, p[3] = 0xE0;
        decode_fails(p, 2000, "corrupt or truncated JPEG");
        free(p);
    }
    // Truncated anywhere in the entropy-coded data.
    uint8_t *px = noise(64 * 64 * 3, 2);
    size_t len;
    uint8_t *jpg = jpeg_encode(px, 64, 64, 3, JCS_RGB, JCS_YCbCr, 1, &len);
    decode_fails(jpg, len / 2, "Premature end");
    decode_fails(jpg, len * 9 / 10, "Premature end");
    decode_fails(jpg, len - 20, "Premature end");
    decode_fails(jpg, 100, "truncated JPEG");
    decode_fails(jpg, 3, "truncated JPEG");
    free(jpg);
    // Progressive: all scans are read before the first row; a cut in any
    // later scan must still fail, not return the coarse image.
    jpg = jpeg_encode(px, 64, 64, 3, JCS_RGB, JCS_YCbCr, 2, &len);
    Image im = decode_ok(jpg, len, 3, 0);
    ck_assert_int_eq(im.w, 64);
    image_free(&im);
    decode_fails(jpg, len * 3 / 4, "Premature end");
    decode_fails(jpg, len - 20, "Premature end");
    // A header claiming 10000x10000 (SOF0/SOF2: FF C0/C2, len, precision, h, w).
    uint8_t *big = malloc(len);
    memcpy(big, jpg, len);
    size_t sof = 2;
    while (sof + 9 < len && !(big[sof] == 0xFF && (big[sof + 1] & 0xFD) == 0xC0)) sof++;
    ck_assert_uint_lt(sof + 9, len);
    big[sof + 5] = 10000 >> 8, big[sof + 6] = 10000 & 255;
    big[sof + 7] = 10000 >> 8, big[sof + 8] = 10000 & 255;
    decode_fails(big, len, "pixel limit");
    free(big);
    free(jpg);
    free(px);
}
END_TEST

// ---------------------------------------------------------------- PNG

START_TEST(test_png_gray_rgb) {
    const uint8_t gray[6] = {0, 17, 128, 200, 254, 255};
    size_t len;
    uint8_t *png = png_encode(gray, 3, 2, PNG_COLOR_TYPE_GRAY, 8, NULL, 0, NULL, 0, &len);
    Image im = decode_ok(png, len, 1, 0);
    ck_assert_int_eq(im.w, 3); ck_assert_int_eq(im.h, 2); ck_assert_int_eq(im.c, 1);
    ck_assert_mem_eq(im.px, gray, 6);
    image_free(&im);
    im = decode_ok(png, len, 3, 0);
    for (int i = 0; i < 6; i++)
        for (int k = 0; k < 3; k++) ck_assert_int_eq(im.px[i * 3 + k], gray[i]);
    image_free(&im);
    free(png);

    const uint8_t rgb[12] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 77, 77, 77};
    png = png_encode(rgb, 2, 2, PNG_COLOR_TYPE_RGB, 8, NULL, 0, NULL, 0, &len);
    im = decode_ok(png, len, 3, 0);
    ck_assert_int_eq(im.c, 3);
    ck_assert_mem_eq(im.px, rgb, 12);
    image_free(&im);
    im = decode_ok(png, len, 1, 0);  // libpng's fixed-point Rec.601: within 1
    for (int i = 0; i < 4; i++)
        ck_assert_int_le(abs(im.px[i] - gray601(rgb + 3 * i)), 1);
    ck_assert_int_eq(im.px[3], 77);  // r = g = b stays exact
    image_free(&im);
    free(png);
}
END_TEST

START_TEST(test_png_palette_16bit_alpha) {
    // Palette with a tRNS entry: colors come through, transparency is dropped.
    const png_color plte[3] = {{10, 20, 30}, {200, 100, 0}, {1, 2, 3}};
    const uint8_t trns[1] = {0}, idx[4] = {0, 1, 2, 1};
    size_t len;
    uint8_t *png = png_encode(idx, 4, 1, PNG_COLOR_TYPE_PALETTE, 8, plte, 3, trns, 1, &len);
    Image im = decode_ok(png, len, 3, 0);
    ck_assert_int_eq(im.w, 4); ck_assert_int_eq(im.c, 3);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(im.px[3 * i], plte[idx[i]].red);
        ck_assert_int_eq(im.px[3 * i + 1], plte[idx[i]].green);
        ck_assert_int_eq(im.px[3 * i + 2], plte[idx[i]].blue);
    }
    image_free(&im);
    free(png);

    // 16-bit RGB, big-endian: v -> round(v * 255 / 65535). 0x12FF is 18.92:
    // 19 by rounding, where png_set_strip_16 would keep the high byte 18.
    const uint16_t v16[3] = {0x1280, 0x12FF, 0xFFFF};
    uint8_t row16[6];
    for (int k = 0; k < 3; k++) row16[2 * k] = v16[k] >> 8, row16[2 * k + 1] = v16[k] & 255;
    png = png_encode(row16, 1, 1, PNG_COLOR_TYPE_RGB, 16, NULL, 0, NULL, 0, &len);
    im = decode_ok(png, len, 3, 0);
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(im.px[k], (int)(((uint32_t)v16[k] * 255 + 32767) / 65535));
    ck_assert_int_eq(im.px[1], 19);
    image_free(&im);
    free(png);

    // RGBA: alpha dropped, even where it is 0.
    const uint8_t rgba[8] = {9, 99, 199, 255, 50, 60, 70, 0};
    png = png_encode(rgba, 2, 1, PNG_COLOR_TYPE_RGBA, 8, NULL, 0, NULL, 0, &len);
    im = decode_ok(png, len, 3, 0);
    const uint8_t want[6] = {9, 99, 199, 50, 60, 70};
    ck_assert_mem_eq(im.px, want, 6);
    image_free(&im);
    free(png);

    // 4-bit gray expands to 8 bits (v * 17).
    const uint8_t g4[1] = {0x3F};  // two pixels: 3 and 15
    png = png_encode(g4, 2, 1, PNG_COLOR_TYPE_GRAY, 4, NULL, 0, NULL, 0, &len);
    im = decode_ok(png, len, 1, 0);
    ck_assert_int_eq(im.px[0], 51); ck_assert_int_eq(im.px[1], 255);
    image_free(&im);
    free(png);
}
END_TEST

// Standard CRC-32 (PNG chunk CRCs cover type and data).
static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24, p[1] = (v >> 16) & 255, p[2] = (v >> 8) & 255, p[3] = v & 255;
}

START_TEST(test_png_bad) {
    uint8_t *px = noise(64 * 64 * 3, 3);
    size_t len;
    uint8_t *png = png_encode(px, 64, 64, PNG_COLOR_TYPE_RGB, 8, NULL, 0, NULL, 0, &len);
    decode_fails(png, len / 2, "truncated PNG");
    decode_fails(png, 40, "truncated PNG");
    decode_fails(png, 8, "truncated PNG");
    // Damage inside the image data: the IDAT CRC no longer matches.
    png[len / 2] ^= 0x55;
    decode_fails(png, len, "corrupt");
    png[len / 2] ^= 0x55;
    // IHDR (bytes 8..32: length, "IHDR", w, h, ..., CRC) claiming 100000^2.
    put_be32(png + 16, 100000), put_be32(png + 20, 100000);
    put_be32(png + 29, crc32_png(png + 12, 17));
    decode_fails(png, len, "pixel limit");
    free(png);
    free(px);
}
END_TEST

START_TEST(test_magic) {
    // PNG bytes from a file named x.jpg: only the content decides.
    const uint8_t rgb[3] = {1, 2, 3};
    size_t len;
    uint8_t *png = png_encode(rgb, 1, 1, PNG_COLOR_TYPE_RGB, 8, NULL, 0, NULL, 0, &len);
    Image im = decode_ok(png, len, 3, 0);
    ck_assert_mem_eq(im.px, rgb, 3);
    image_free(&im);
    free(png);
    decode_fails((const uint8_t *)"GIF89a\1\0\1\0", 10, "not a JPEG or PNG");
    decode_fails((const uint8_t *)"x", 1, "not a JPEG or PNG");
    decode_fails((const uint8_t *)"", 0, "empty");
    decode_fails(NULL, 0, "empty");
    ck_assert_int_eq(image_decode(rgb, 3, 2, 0, &im, err, sizeof err), -1);
    ASSERT_HAS(err, "channels");
}
END_TEST

// ---------------------------------------------------------------- pp

static PpChain parse_ok(const char *spec) {
    PpChain pp;
    ck_assert_msg(pp_parse(spec, &pp, err, sizeof err) == 0, "%s: %s", spec, err);
    return pp;
}

// Runs spec on a (h,w,c) uint8 image into out (S,S,c).
static void apply_ok(const char *spec, const uint8_t *px, int h, int w, int c, float *out,
                     int S, Rng *rng) {
    PpChain pp = parse_ok(spec);
    Image im = {w, h, c, (uint8_t *)px};
    Rng dummy;
    rng_seed(&dummy, 0, 0);
    ck_assert_msg(pp_apply(&pp, &im, out, S, rng ? rng : &dummy, err, sizeof err) == 0,
                  "%s: %s", spec, err);
}

START_TEST(test_pp_parse) {
    PpChain pp = parse_ok("inception_crop(224)|flip_lr|value_range(-1,1)");
    ck_assert_int_eq(pp.n, 3);
    ck_assert_int_eq(pp.op[0].kind, PP_INCEPTION_CROP);
    ck_assert_float_eq(pp.op[0].a, 224); ck_assert_float_eq(pp.op[0].b, 5);
    ck_assert_int_eq(pp.op[1].kind, PP_FLIP_LR);
    ck_assert_int_eq(pp.op[2].kind, PP_VALUE_RANGE);
    ck_assert_float_eq(pp.op[2].a, -1); ck_assert_float_eq(pp.op[2].b, 1);
    ck_assert_int_eq(pp_output_size(&pp), 224);

    pp = parse_ok("  decode | resize_small( 256 ) |central_crop(224)| value_range(-1, 1) ");
    ck_assert_int_eq(pp.n, 3);  // "decode" is implicit
    ck_assert_int_eq(pp.op[0].kind, PP_RESIZE_SMALL);
    ck_assert_int_eq(pp.op[1].kind, PP_CENTRAL_CROP);
    ck_assert_float_eq(pp.op[1].b, 224);
    ck_assert_int_eq(pp_output_size(&pp), 224);

    pp = parse_ok("resize(224,200)");
    ck_assert_float_eq(pp.op[0].a, 224); ck_assert_float_eq(pp.op[0].b, 200);
    ck_assert_int_eq(pp_output_size(&pp), -1);  // not square
    ck_assert_int_eq(pp_output_size(&(PpChain){0}), -1);
    pp = parse_ok("resize(64)|resize_small(32)");
    ck_assert_int_eq(pp_output_size(&pp), -1);  // depends on the image
    pp = parse_ok("inception_crop(32, 8)|flip_lr()");
    ck_assert_float_eq(pp.op[0].b, 8);
    ck_assert_int_eq(pp_output_size(&pp), 32);
    pp = parse_ok("central_crop(28)|flip_lr");
    ck_assert_int_eq(pp_output_size(&pp), 28);

    // DCT scaling budget for the decoder.
    const struct { const char *spec; int min_side; } ms[] = {
        {"inception_crop(224)|flip_lr", 1002},  // 224 / sqrt(0.05) = 1001.7
        {"inception_crop(224, 25)", 448},       {"resize_small(256)|central_crop(224)", 256},
        {"flip_lr|resize(224, 300)", 300},     {"central_crop(224)|resize(64)", 0},
        {"value_range(-1, 1)", 0},
    };
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        pp = parse_ok(ms[i].spec);
        ck_assert_msg(pp_min_side(&pp) == ms[i].min_side, "%s: min_side %d, want %d",
                      ms[i].spec, pp_min_side(&pp), ms[i].min_side);
    }

    const char *bad[][2] = {
        {"foo(3)", "foo"},           {"resize()", "resize"},
        {"resize(0)", "resize"},     {"resize(1.5)", "resize"},
        {"resize(1,2,3)", "resize"}, {"value_range(1)", "value_range"},
        {"value_range(1,1)", "value_range"}, {"central_crop(224", "central_crop"},
        {"flip_lr(1)", "flip_lr"},   {"resize(224)x", "resize"},
        {"resize(a)", "resize"},     {"inception_crop(224, 0)", "inception_crop"},
        {"", "empty"},               {"flip_lr||flip_lr", "empty"},
        {"resize_small(nan)", "resize_small"}, {"resize(99999)", "resize"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        ck_assert_msg(pp_parse(bad[i][0], &pp, err, sizeof err) == -1, "'%s' parsed", bad[i][0]);
        ASSERT_HAS(err, bad[i][1]);
    }
    char many[256] = "flip_lr";
    for (int i = 0; i < PP_MAX_OPS; i++) strcat(many, "|flip_lr");
    ck_assert_int_eq(pp_parse(many, &pp, err, sizeof err), -1);
    ASSERT_HAS(err, "more than");
}
END_TEST

START_TEST(test_pp_central_crop) {
    // 4 rows x 5 columns, value = 10*y + x. Crop 2x2: offset (1, 1) by floor.
    uint8_t px[20];
    for (int i = 0; i < 20; i++) px[i] = (uint8_t)(10 * (i / 5) + i % 5);
    float out[4];
    apply_ok("central_crop(2)", px, 4, 5, 1, out, 2, NULL);
    const float want[4] = {11, 12, 21, 22};
    for (int i = 0; i < 4; i++) ck_assert_float_eq(out[i], want[i]);
    // (h, w) form on 3 channels: 1 row x 3 columns out of 4x5 -> offset (1, 1).
    uint8_t rgb[60];
    for (int i = 0; i < 60; i++) rgb[i] = (uint8_t)i;
    float o3[5 * 5 * 3];  // room for the largest S used below
    PpChain pp = parse_ok("central_crop(1, 3)");
    Image im = {5, 4, 3, rgb};
    Rng r;
    rng_seed(&r, 1, 0);
    // Output is not square: pp_apply refuses and says why.
    ck_assert_int_eq(pp_apply(&pp, &im, o3, 3, &r, err, sizeof err), -1);
    ASSERT_HAS(err, "1x3");
    apply_ok("central_crop(3)", rgb, 4, 5, 3, o3, 3, NULL);  // offset (0, 1)
    for (int y = 0; y < 3; y++)
        for (int i = 0; i < 9; i++) ck_assert_float_eq(o3[y * 9 + i], rgb[(y * 5 + 1) * 3 + i]);
    // Crop larger than the image.
    pp = parse_ok("central_crop(5)");
    ck_assert_int_eq(pp_apply(&pp, &im, o3, 5, &r, err, sizeof err), -1);
    ASSERT_HAS(err, "central_crop");
}
END_TEST

// 2x2 -> 4x4, half-pixel centers: sample x = (i + 0.5) / 2 - 0.5 =
// -0.25, 0.25, 0.75, 1.25 -> weights (clamped) 0, 0.25, 0.75, 1 toward the
// second pixel. Row [0,100] -> 0 25 75 100; row [200,40] -> 200 160 80 40.
START_TEST(test_pp_resize_bilinear) {
    const uint8_t px[4] = {0, 100, 200, 40};
    float out[16];
    apply_ok("resize(4)", px, 2, 2, 1, out, 4, NULL);
    const float want[16] = {0,   25,     75,    100,  //
                            50,  58.75f, 76.25f, 85,  // 0.75 row0 + 0.25 row1
                            150, 126.25f, 78.75f, 55, // 0.25 row0 + 0.75 row1
                            200, 160,    80,    40};
    for (int i = 0; i < 16; i++) ck_assert_float_eq(out[i], want[i]);
    // Same size is the identity; 4x4 -> 2x2 samples between pixel pairs.
    uint8_t p4[16];
    for (int i = 0; i < 16; i++) p4[i] = (uint8_t)(i * 10);
    float o2[4];
    apply_ok("resize(2)", p4, 4, 4, 1, o2, 2, NULL);
    const float want2[4] = {25, 45, 105, 125};  // mean of each 2x2 block
    for (int i = 0; i < 4; i++) ck_assert_float_eq(o2[i], want2[i]);
}
END_TEST

START_TEST(test_pp_resize_small) {
    int h, w;
    pp_resize_small_dims(20, 40, 10, &h, &w);
    ck_assert_int_eq(h, 10); ck_assert_int_eq(w, 20);
    pp_resize_small_dims(300, 400, 64, &h, &w);  // 400 * 64/300 = 85.33
    ck_assert_int_eq(h, 64); ck_assert_int_eq(w, 85);
    pp_resize_small_dims(20, 33, 10, &h, &w);  // 16.5 rounds half to even
    ck_assert_int_eq(w, 16);
    pp_resize_small_dims(20, 35, 10, &h, &w);  // 17.5 -> 18
    ck_assert_int_eq(w, 18);
    pp_resize_small_dims(50, 20, 10, &h, &w);  // portrait
    ck_assert_int_eq(h, 25); ck_assert_int_eq(w, 10);
    // Content: 20x40 with columns in equal pairs, value 10 * (x / 2). Area
    // halving gives 10 * x' (10x20); central_crop(10) starts at x' = 5.
    uint8_t px[20 * 40];
    for (int i = 0; i < 20 * 40; i++) px[i] = (uint8_t)(10 * ((i % 40) / 2));
    float out[100];
    apply_ok("resize_small(10)|central_crop(10)", px, 20, 40, 1, out, 10, NULL);
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 10; x++) ck_assert_float_eq(out[y * 10 + x], 10 * (x + 5));
    // Area averaging, not bilinear sampling: 3x3 -> 1x1 of columns
    // {0, 90, 0} is the mean 30, where bilinear would sample the center, 90.
    const uint8_t p3[9] = {0, 90, 0, 0, 90, 0, 0, 90, 0};
    float o1[1];
    apply_ok("resize_small(1)", p3, 3, 3, 1, o1, 1, NULL);
    ck_assert_float_eq_tol(o1[0], 30, 1e-4);
}
END_TEST

START_TEST(test_pp_value_range) {
    const uint8_t px[4] = {0, 255, 51, 102};
    float out[4];
    apply_ok("value_range(-1,1)", px, 2, 2, 1, out, 2, NULL);
    ck_assert_float_eq(out[0], -1); ck_assert_float_eq(out[1], 1);
    ck_assert_float_eq_tol(out[2], -0.6f, 1e-6); ck_assert_float_eq_tol(out[3], -0.2f, 1e-6);
    apply_ok("value_range(0,1)", px, 2, 2, 1, out, 2, NULL);
    ck_assert_float_eq(out[0], 0); ck_assert_float_eq(out[1], 1);
    ck_assert_float_eq_tol(out[2], 0.2f, 1e-6);
    // Before a resize it means the same (affine commutes with interpolation);
    // a second value_range reads its input as [0, 255] again (identity here).
    float o2[16];
    const uint8_t p2[4] = {0, 100, 200, 40};
    apply_ok("value_range(-1,1)|resize(4)|value_range(0,255)", p2, 2, 2, 1, o2, 4, NULL);
    ck_assert_float_eq_tol(o2[5], -1 + 2 * 58.75f / 255, 1e-6);
}
END_TEST

// flip_lr draws one uniform and flips when it is < 0.5, swapping whole
// pixels, both before the last geometric op (uint8 path) and after it (in
// place on the floats).
START_TEST(test_pp_flip) {
    const uint8_t px[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};  // 2x2 RGB
    const float flipped[12] = {4, 5, 6, 1, 2, 3, 10, 11, 12, 7, 8, 9};
    const char *specs[2] = {"flip_lr", "flip_lr|resize(2)"};
    int seen[2] = {0, 0};
    for (uint64_t seed = 1; seed < 50 && !(seen[0] && seen[1]); seed++) {
        for (int s = 0; s < 2; s++) {
            Rng r, probe;
            rng_seed(&r, seed, 3);
            probe = r;
            int flips = rng_uniform(&probe) < 0.5f;
            float out[12];
            apply_ok(specs[s], px, 2, 2, 3, out, 2, &r);
            for (int i = 0; i < 12; i++) ck_assert_float_eq(out[i], (flips ? flipped[i] : px[i]));
            ck_assert_uint_eq(r.state, probe.state);  // exactly one draw
            seen[flips] += s;
        }
    }
    ck_assert(seen[0] && seen[1]);
}
END_TEST

START_TEST(test_pp_inception_crop) {
    const int H = 48, W = 64, S = 16;
    uint8_t *px = noise(H * W * 3, 5);
    float a[S * S * 3], b[S * S * 3], c[S * S * 3];
    Rng r;
    rng_seed(&r, 42, 1);
    apply_ok("inception_crop(16)", px, H, W, 3, a, S, &r);
    rng_seed(&r, 42, 1);
    apply_ok("inception_crop(16)", px, H, W, 3, b, S, &r);
    ck_assert_mem_eq(a, b, sizeof a);  // deterministic for a seed
    rng_seed(&r, 43, 1);
    apply_ok("inception_crop(16)", px, H, W, 3, c, S, &r);
    ck_assert(memcmp(a, c, sizeof a) != 0);  // another seed, another crop

    // The op is "crop the sampled box, then resize(16)".
    int y, x, ch, cw;
    rng_seed(&r, 42, 1);
    pp_inception_box(H, W, 0.05f, &r, &y, &x, &ch, &cw);
    uint8_t *crop = malloc((size_t)ch * cw * 3);
    for (int i = 0; i < ch; i++)
        memcpy(crop + (size_t)i * cw * 3, px + ((size_t)(y + i) * W + x) * 3, (size_t)cw * 3);
    apply_ok("resize(16)", crop, ch, cw, 3, c, S, NULL);
    ck_assert_mem_eq(a, c, sizeof a);
    free(crop);

    // Box statistics over many draws: inside the image, area 5%..100% and
    // aspect 3/4..4/3 up to rounding of the integer sides; boxes vary.
    int min_area = H * W, max_area = 0;
    for (int i = 0; i < 2000; i++) {
        pp_inception_box(H, W, 0.05f, &r, &y, &x, &ch, &cw);
        ck_assert(y >= 0 && x >= 0 && y + ch <= H && x + cw <= W && ch >= 1 && cw >= 1);
        if (ch == H && cw == W) continue;  // fallback or a full-size draw
        float ar = (float)cw / ch;
        ck_assert_msg(ar > 0.75f * 0.9f && ar < 1.3334f * 1.1f, "aspect %f", ar);
        ck_assert_msg(ch * cw >= 0.05 * H * W * 0.85, "area %d", ch * cw);
        if (ch * cw < min_area) min_area = ch * cw;
        if (ch * cw > max_area) max_area = ch * cw;
    }
    ck_assert_int_lt(min_area, H * W / 10);
    ck_assert_int_gt(max_area, H * W / 2);
    // A 1x1 image can only fall back to itself.
    pp_inception_box(1, 1, 0.05f, &r, &y, &x, &ch, &cw);
    ck_assert(y == 0 && x == 0 && ch == 1 && cw == 1);
    free(px);
}
END_TEST

// The two chains of DESIGN.md on a decoded JPEG: right size, right range.
START_TEST(test_pp_chains_end_to_end) {
    uint8_t *px = noise(400 * 300 * 3, 9);
    size_t len;
    uint8_t *jpg = jpeg_encode(px, 400, 300, 3, JCS_RGB, JCS_YCbCr, 1, &len);
    Image im = decode_ok(jpg, len, 3, 64 * 8 / 7);
    const char *specs[2] = {"inception_crop(64)|flip_lr|value_range(-1,1)",
                            "resize_small(73)|central_crop(64)|value_range(-1,1)"};
    static float out[64 * 64 * 3];
    for (int s = 0; s < 2; s++) {
        PpChain pp = parse_ok(specs[s]);
        ck_assert_int_eq(pp_output_size(&pp), 64);
        Rng r;
        rng_seed(&r, 7, 0);
        ck_assert_msg(pp_apply(&pp, &im, out, 64, &r, err, sizeof err) == 0, "%s", err);
        for (int i = 0; i < 64 * 64 * 3; i++) ck_assert(out[i] >= -1 && out[i] <= 1);
        // Wrong S is refused, not written past.
        ck_assert_int_eq(pp_apply(&pp, &im, out, 32, &r, err, sizeof err), -1);
        ASSERT_HAS(err, "64x64");
    }
    image_free(&im);
    free(jpg);
    free(px);
}
END_TEST

static Suite *image_suite(void) {
    Suite *s = suite_create("image");
    TCase *dec = tcase_create("decode");
    tcase_add_test(dec, test_jpeg_rgb);
    tcase_add_test(dec, test_jpeg_gray);
    tcase_add_test(dec, test_jpeg_cmyk);
    tcase_add_test(dec, test_jpeg_dct_scaling);
    tcase_add_test(dec, test_jpeg_corrupt);
    tcase_add_test(dec, test_png_gray_rgb);
    tcase_add_test(dec, test_png_palette_16bit_alpha);
    tcase_add_test(dec, test_png_bad);
    tcase_add_test(dec, test_magic);
    suite_add_tcase(s, dec);
    TCase *pp = tcase_create("pp");
    tcase_add_test(pp, test_pp_parse);
    tcase_add_test(pp, test_pp_central_crop);
    tcase_add_test(pp, test_pp_resize_bilinear);
    tcase_add_test(pp, test_pp_resize_small);
    tcase_add_test(pp, test_pp_value_range);
    tcase_add_test(pp, test_pp_flip);
    tcase_add_test(pp, test_pp_inception_crop);
    tcase_add_test(pp, test_pp_chains_end_to_end);
    suite_add_tcase(s, pp);
    return s;
}

SM_TEST_MAIN(image_suite)
