// Size limits checked on the config before anything is built or allocated:
// every size is computed in double, so a config like image_size 100000 /
// patch 1 or width 1e9 is refused with the keys named instead of wrapping an
// int or a size_t somewhere inside the model.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "vit.h"

// One dimension of any tensor, and the element count of one image's (or one
// expert's) tensor: the kernels index those with int, and BLAS takes int sizes.
#define MAX_DIM (1 << 24)
#define MAX_ELEMS 2147483647.0
#define MAX_CHANNELS 64

static int over(char *err, size_t n, const char *what, const char *keys, double v, double lim) {
    snprintf(err, n, "%s is %.4g, more than the %.4g this build supports (%s)", what, v, lim, keys);
    return -1;
}

int vit_check_sizes(const Config *c, int B, char *err, size_t n) {
    const struct { const char *key; double v; } dims[] = {
        {"model.image_size", c->image_size}, {"model.width", c->width},
        {"model.mlp_dim", c->mlp_dim},       {"model.classes", c->classes},
        {"model.channels", c->channels},     {"model.heads", c->heads},
        {"moe.experts", c->experts},         {"moe.slots", c->slots},
        {"train.batch_size", c->batch_size},
    };
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].v > MAX_DIM) return over(err, n, dims[i].key, dims[i].key, dims[i].v, MAX_DIM);
    // Images have 1 (gray) or 3 (RGB) channels; synthetic data may have a few more.
    if (c->channels > MAX_CHANNELS)
        return over(err, n, "model.channels", "model.channels", c->channels, MAX_CHANNELS);
    double P = c->patch, G = floor((double)c->image_size / P), Np = G * G, N = Np + 1;
    double D = c->width, M = c->mlp_dim, H = c->heads, C = c->channels, K = c->classes;
    if (Np > MAX_DIM)
        return over(err, n, "the number of patches (model.image_size / model.patch)^2",
                    "model.image_size, model.patch", Np, MAX_DIM);
    double E = c->experts, EP = c->slots;
    if (E > 0 && EP <= 0) EP = fmax(1, round(N * c->capacity_factor / E));
    const struct { const char *what, *keys; double v; } t[] = {
        {"an image (pixels x channels)", "model.image_size, model.channels",
         (double)c->image_size * c->image_size * C},
        {"the patch embedding kernel", "model.patch, model.channels, model.width", P * P * C * D},
        {"one image's attention scores (tokens^2 x heads)", "model.image_size, model.patch, "
         "model.heads", N * N * H},
        {"one image's MLP activations (tokens x mlp_dim)", "model.mlp_dim", N * M},
        {"an MLP kernel (width x mlp_dim)", "model.width, model.mlp_dim", D * M},
        {"the head kernel (width x classes)", "model.width, model.classes", D * K},
        {"one image's Soft MoE slots (slots x width)", "moe.experts, moe.slots, model.width",
         E * EP * D},
        {"one image's routing weights (tokens x slots)", "moe.experts, moe.slots", N * E * EP},
        {"one batch's tokens (batch x tokens x width)", "train.batch_size, model.width", B * N * D},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].v > MAX_ELEMS) return over(err, n, t[i].what, t[i].keys, t[i].v, MAX_ELEMS);
    return 0;
}
