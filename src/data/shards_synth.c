// `softmoe shards synth`: seeded synthetic JPEG shards (class-dependent
// oriented colour gratings plus noise) for benchmarking and testing the
// JPEG path of the loader where no real dataset is at hand.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>  // after stdio.h: it uses size_t and FILE

#include "../core/common.h"
#include "../core/rng.h"
#include "shards.h"

// Encodes an RGB image (h,w,3) as a quality-90 JPEG into a malloc'd buffer.
static int encode_jpeg(const uint8_t *px, int w, int h, unsigned char **out, unsigned long *len) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);  // encoding our own buffer cannot meet bad input
    jpeg_create_compress(&c);
    *out = NULL, *len = 0;
    jpeg_mem_dest(&c, out, len);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h;
    c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return *len > 0 ? 0 : -1;
}

static void draw(uint8_t *px, int w, int h, int k, int K, Rng *r) {
    double th = M_PI * k / K, f = (2.0 + rng_uniform(r)) * 2.0 * M_PI / 64.0;
    double ph = 2.0 * M_PI * rng_uniform(r), ct = cos(th), st = sin(th);
    double col[3] = {rng_uniform(r), rng_uniform(r), rng_uniform(r)};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double v = 0.5 + 0.4 * sin(f * (x * ct + y * st) + ph);
            for (int c = 0; c < 3; c++) {
                double p = 255.0 * v * (0.5 + 0.5 * col[c]) + 20.0 * rng_normal(r);
                px[((size_t)y * w + x) * 3 + c] = (uint8_t)(p < 0 ? 0 : p > 255 ? 255 : p);
            }
        }
}

long shards_write_synthetic(const char *prefix, long n, int per_shard, int w, int h, int K,
                            uint64_t seed, char *err, size_t errlen) {
    uint8_t *px = sm_malloc((size_t)w * h * 3);
    ShardWriterPublic *sw = shard_writer_open(prefix, per_shard, err, errlen);
    if (!sw) {
        free(px);
        return -1;
    }
    long done = 0;
    for (long i = 0; i < n; i++) {
        Rng r;
        rng_seed(&r, seed, (uint64_t)i);
        int k = (int)rng_below(&r, (uint32_t)K);
        draw(px, w, h, k, K, &r);
        unsigned char *jpg;
        unsigned long len;
        if (encode_jpeg(px, w, h, &jpg, &len) != 0 ||
            shard_writer_add(sw, "jpg", jpg, len, k, err, errlen) != 0) {
            free(jpg);
            done = -1;
            break;
        }
        free(jpg);
        done++;
    }
    long total = shard_writer_close(sw, done >= 0, err, errlen);
    free(px);
    return done < 0 ? -1 : total;
}
