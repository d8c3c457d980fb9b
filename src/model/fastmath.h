// exp for the softmax and GELU inner loops: 2^n * p(r) with r = x - n ln2 in
// [-ln2/2, ln2/2] and a degree-6 Taylor polynomial (relative error < 2e-7
// over the clamped range). Plain float ops, so GCC vectorises the loops that
// call it; libm's expf/tanhf are scalar calls.
#pragma once
#include <stdint.h>

static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x > 87.0f ? 87.0f : x;
    // round to nearest by the 1.5*2^23 trick (roundf is a call)
    float n = (x * 1.4426950408889634f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f +
              r * (0.008333334f + r * 0.0013888889f)))));
    union { float f; int32_t i; } u = {.f = p};
    u.i += (int32_t)((uint32_t)(int32_t)n << 23);  // unsigned shift: n may be negative
    return u.f;
}
