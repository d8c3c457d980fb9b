// Multi-head scaled dot-product attention, one (image, head) pair per task:
// each pair is two small GEMMs on strided views of the (B,N,H*Dh) tensors, so
// no head is ever transposed into its own buffer. BLAS runs single-threaded
// inside the parallel region (OpenBLAS's OpenMP build detects it).
#include <cblas.h>
#include <math.h>

#include "fastmath.h"
#include "gemm.h"
#include "layers.h"

void attention_forward(float *out, float *att, const float *q, const float *k,
                       const float *v, int B, int Nq, int Nk, int H, int Dh) {
    // q (B,Nq,D), k v (B,Nk,D), att (B,H,Nq,Nk), out (B,Nq,D); D = H*Dh
    const int D = H * Dh;
    const float scale = 1.0f / sqrtf((float)Dh);
    #pragma omp parallel for schedule(static) collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const float *qb = q + (size_t)b * Nq * D + h * Dh;
            const float *kb = k + (size_t)b * Nk * D + h * Dh;
            const float *vb = v + (size_t)b * Nk * D + h * Dh;
            float *a = att + ((size_t)b * H + h) * Nq * Nk;
            // a (Nq,Nk) = scale * q_bh (Nq,Dh) @ k_bh^T
            gemm_run(CblasNoTrans, CblasTrans, Nq, Nk, Dh, scale, qb, D,
                     kb, D, 0.0f, a, Nk);
            for (int i = 0; i < Nq; i++) {
                float *row = a + (size_t)i * Nk;
                // vectorised: the sums' order is fixed by the vector width,
                // never by the thread count
                float mx = row[0];
                #pragma omp simd reduction(max : mx)
                for (int j = 1; j < Nk; j++) mx = row[j] > mx ? row[j] : mx;
                float sum = 0.0f;
                #pragma omp simd reduction(+ : sum)
                for (int j = 0; j < Nk; j++) {
                    row[j] = fast_expf(row[j] - mx);
                    sum += row[j];
                }
                float inv = 1.0f / sum;
                for (int j = 0; j < Nk; j++) row[j] *= inv;
            }
            // out_bh (Nq,Dh) = a @ v_bh
            gemm_run(CblasNoTrans, CblasNoTrans, Nq, Dh, Nk, 1.0f, a, Nk,
                     vb, D, 0.0f, out + (size_t)b * Nq * D + h * Dh, D);
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, float *scratch,
                        const float *dout, const float *att, const float *q,
                        const float *k, const float *v, int B, int Nq, int Nk,
                        int H, int Dh) {
    const int D = H * Dh;
    // dq, dk, dv written (beta 0): each (image, head) slice is one task's
    const float scale = 1.0f / sqrtf((float)Dh);
    #pragma omp parallel for schedule(static) collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            size_t qo = (size_t)b * Nq * D + h * Dh, ko = (size_t)b * Nk * D + h * Dh;
            const float *a = att + ((size_t)b * H + h) * Nq * Nk;
            float *da = scratch + ((size_t)b * H + h) * Nq * Nk;
            // dv = a^T @ dout ; da = dout @ v^T
            gemm_run(CblasTrans, CblasNoTrans, Nk, Dh, Nq, 1.0f, a, Nk,
                     dout + qo, D, 0.0f, dv + ko, D);
            gemm_run(CblasNoTrans, CblasTrans, Nq, Nk, Dh, 1.0f, dout + qo,
                     D, v + ko, D, 0.0f, da, Nk);
            // softmax backward, with the 1/sqrt(Dh) of the logits folded in
            for (int i = 0; i < Nq; i++) {
                const float *ar = a + (size_t)i * Nk;
                float *dr = da + (size_t)i * Nk;
                float dot = 0.0f;
                #pragma omp simd reduction(+ : dot)
                for (int j = 0; j < Nk; j++) dot += ar[j] * dr[j];
                for (int j = 0; j < Nk; j++) dr[j] = scale * ar[j] * (dr[j] - dot);
            }
            // dq = ds @ k ; dk = ds^T @ q
            gemm_run(CblasNoTrans, CblasNoTrans, Nq, Dh, Nk, 1.0f, da, Nk,
                     k + ko, D, 0.0f, dq + qo, D);
            gemm_run(CblasTrans, CblasNoTrans, Nk, Dh, Nq, 1.0f, da, Nk,
                     q + qo, D, 0.0f, dk + ko, D);
        }
    }
}
