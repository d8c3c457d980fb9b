// Fuzzes the image decoder (src/data/image.c): the input is decoded by its
// magic bytes as RGB at full size and as grayscale with DCT downscaling
// allowed, as the loader does. A decoded image must have the asked channels,
// a positive size within IMAGE_MAX_PIXELS, and readable pixels; a refusal
// must say why.
#include "fuzz.h"

#include "data/image.h"

static void decode(const uint8_t *data, size_t size, int channels, int min_side) {
    Image im;
    char err[512] = "";
    if (image_decode(data, size, channels, min_side, &im, err, sizeof err) != 0) {
        if (!err[0]) abort();
        return;
    }
    if (im.c != channels || im.w <= 0 || im.h <= 0 || (size_t)im.w * im.h > IMAGE_MAX_PIXELS) abort();
    volatile uint8_t sink = im.px[0] ^ im.px[(size_t)im.w * im.h * im.c - 1];
    (void)sink;
    image_free(&im);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    decode(data, size, 3, 0);
    decode(data, size, 1, 8);
    return 0;
}
