// The one entry point every GEMM-shaped product of the model goes through
// (patch embedding, q/k/v/out, both attention products, MLPs and experts,
// the Soft MoE logits, dispatch and combine, the heads, and every backward
// product), so that train.precision switches all of them at once.
//
//   fp32  fp32 inputs and accumulation. With oneDNN on an AVX-512 CPU every
//         product runs as a oneDNN fp32 matmul primitive on the operands in
//         place (`make bench-gemm` measured it faster than sgemm and than the
//         few-row kernels on every S/16 shape; table in the README); without
//         them, cblas_sgemm and the few-row expert kernels. The choice is
//         fixed per machine, never a timing, so a run's numbers do not depend
//         on the machine's load.
//   bf16  inputs rounded to bfloat16 (8-bit mantissa, round to nearest even),
//         products accumulated in fp32, fp32 output: a TPU's default matmul
//         precision. With oneDNN (libdnnl) the product is its bf16 matmul
//         primitive (AVX512-BF16 dot products where the CPU has them, its own
//         AVX512 emulation where not). Built without oneDNN, or on a CPU for
//         which oneDNN has no bf16 matmul (before AVX512), the rounded inputs
//         go through sgemm: the same numbers, slower (a bf16 x bf16 product
//         is exact in fp32, so only the summation order differs).
//
// The precision and the plan cache are process-wide state, like BLAS's
// thread count: vit_forward/vit_backward set the model's precision on entry.
// oneDNN primitives are created per shape by a planning pass at model build
// (gemm_plan_begin/end around one forward and backward that does no
// arithmetic), never inside a training step; a shape first seen later (an
// evaluation's short last batch) is created then and counted in gemm_info.
#pragma once
#include <cblas.h>
#include <stddef.h>
#include <stdint.h>

enum {
    GEMM_FP32 = 0,
    GEMM_BF16 = 1,      // oneDNN when built with it, else the rounded-sgemm path
    GEMM_BF16_REF = 2,  // always the rounded-sgemm path (tests compare the two)
    GEMM_FP32_BLAS = 3, // fp32, always cblas_sgemm      } tests and bench-gemm
    GEMM_FP32_DNNL = 4, // fp32, oneDNN for every shape  } compare the paths
};

// Nonzero for the fp32 precisions.
static inline int gemm_is_fp32(int precision) {
    return precision == GEMM_FP32 || precision == GEMM_FP32_BLAS || precision == GEMM_FP32_DNNL;
}
// Nonzero when GEMM_FP32 products go to oneDNN (built with it, AVX-512 CPU).
int gemm_fp32_dnnl(void);
// Nonzero when products at this precision use plans (primitives created by a
// planning pass at model build); sgemm-only precisions need none.
int gemm_uses_plans(int precision);

// Sets the precision of every following gemm_run (process-wide).
void gemm_set_precision(int precision);
int gemm_precision(void);
// GEMM_FP32 or GEMM_BF16 from the config text "fp32" / "bf16".
int gemm_precision_from_name(const char *name);

// C (M,N) = alpha op(A) op(B) + beta C, row-major, operands as cblas_sgemm's.
void gemm_run(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

// The same product with A and/or B already in bfloat16, for a kernel that
// wrote its output straight as bf16 (the GELU of the MLPs) so no product
// converts it again: Ah / Bh, when not NULL, replace A / B and are stored
// contiguous in their given orientation (row stride = their column count:
// lda = K for A (M,K), M for A^T, and likewise for B). Only at the bf16
// precisions, where it gives the same numbers as gemm_run on the floats the
// bf16 values came from.
void gemm_run_h(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
                const float *A, const uint16_t *Ah, int lda, const float *B,
                const uint16_t *Bh, int ldb, float beta, float *C, int ldc);

// A bf16 copy of n floats at base (a model's parameters, converted once per
// step): until it is replaced or cleared (NULL), every bf16 product whose A
// or B lies inside [base, base + n), stored contiguous, reads the copy in
// place of converting it. The caller keeps the copy equal to the floats
// (vit_forward converts on entry, and vit_backward drops it on exit).
void gemm_shadow(const float *base, size_t n, const uint16_t *copy);
// Clears the copy if it is base's (vit_backward, vit_free).
void gemm_shadow_drop(const float *base);
// dst[i] = the bf16 of src[i], i < n, on every thread (outside a parallel region).
void gemm_to_bf16(uint16_t *dst, const float *src, size_t n);

// The bfloat16 bits nearest to f (ties to even), the rounding of every bf16
// product's inputs; NaN stays a quiet NaN, and a subnormal f becomes a zero
// of its sign, as AVX512-BF16's VCVTNEPS2BF16 does, so that every path (that
// instruction, this code, the sgemm fallback) gives the same bits. Plain
// integer ops, so loops that call it vectorise.
static inline uint16_t gemm_bf16_of(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    uint32_t u = v.u;
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);         // subnormal
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float gemm_bf16_to_float(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

// Planning: between begin and end, gemm_run creates what each new shape needs
// (primitive, staging buffers) and computes nothing. Callers must not use the
// outputs of a planning pass; softmoe skips its all-to-alls (gemm_planning()).
void gemm_plan_begin(void);
void gemm_plan_end(void);
int gemm_planning(void);

typedef struct {
    int have_dnnl;            // built with oneDNN
    char isa[64];             // oneDNN's effective ISA, e.g. "avx512_core_bf16"
    char version[32];         // oneDNN version
    int plans;                // shapes planned so far
    int late_plans;           // of which created outside a planning pass
    int sgemm_plans;          // bf16 plans run as rounded inputs through sgemm (no
                              // oneDNN bf16 matmul for this CPU, or GEMM_BF16_REF)
    int fp32_plans;           // fp32 products planned for oneDNN
    int fp32_dnnl_plans;      // of which oneDNN implements (the rest run as sgemm)
    char impls[256];          // distinct oneDNN implementations chosen, e.g. "brg:avx512_core_bf16"
} GemmInfo;
void gemm_info(GemmInfo *info);

// Planned shape i (0 <= i < plans) and how often it ran since the last
// gemm_reset_calls; returns -1 past the end.
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    long calls;
    int in_parallel;          // last called inside a parallel region (one thread each)
    int sgemm;                // through sgemm (bf16: rounded inputs)
    int fp32;                 // an fp32 product (oneDNN fp32 matmul unless sgemm)
    char impl[64];            // oneDNN implementation
} GemmShape;
int gemm_shape(int i, GemmShape *s);
void gemm_reset_calls(void);
// GFLOP/s of the bf16 product on n x n x n, operands already in bf16 (the
// library's own speed, no conversion), best of reps; 0 without oneDNN.
double gemm_bf16_peak(int n, int reps);

// Rounds n floats to the nearest bfloat16 (ties to even), kept as floats.
void gemm_round_bf16(float *out, const float *in, size_t n);
