/* A register-blocked float32 matrix product for the convolution kernels, AVX-512 when the CPU
 * has it (checked at run time, so the build needs no -march flag):
 *
 *     C[i, j] (+)= sum_s sum_t A[i*sa + aoff[s] + t*sb] * B[(boff[s] + t)*ldb + j]
 *                                    0 <= i < M, 0 <= j < N, 0 <= s < nseg, 0 <= t < T
 *
 * One form serves all the products of a convolution (see conv.pyx): A is read by broadcasting
 * single elements (any strides), B and C by rows of contiguous vectors.  The segments let A be a
 * strided view of the input image itself ("implicit im2col": segment s is one kernel row, whose
 * taps sit at a fixed offset from each output pixel), so no im2col copy is needed.
 *
 * A tile of 12 rows x 32 columns of C stays in 24 vector registers for the whole sum: per step,
 * two loads of B, twelve broadcasts of A and 24 fused multiply-adds (8-row and 1-row tiles take
 * the remaining rows, and 16-column tiles narrow outputs).  Ragged edges use masked loads and
 * stores.  Each output element is summed in the same order whatever tile it falls in, so results
 * do not depend on how rows are cut into chunks.
 *
 * OpenBLAS reaches only about half of peak on the thin products a convolution makes (few output
 * channels, short sums); this simple kernel does better there.  cnnframe_mk_available() says
 * whether it can run; callers fall back to BLAS otherwise.
 */
#ifndef CNNFRAME_MICROKERNEL_H
#define CNNFRAME_MICROKERNEL_H

#include <stddef.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(CNNFRAME_NO_AVX512)
#define CNNFRAME_MK_X86 1
#include <immintrin.h>
#endif

static int cnnframe_mk_available(void) {
#ifdef CNNFRAME_MK_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
    return 0;
#endif
}

#ifdef CNNFRAME_MK_X86

static inline __mmask16 cnnframe_mask16(ptrdiff_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u));
}

#define CNN_ROW_DECL(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = _mm512_setzero_ps();
#define CNN_ROW_FMA(r)                                                        \
    {                                                                         \
        __m512 a = _mm512_set1_ps(at[(r) * sa]);                              \
        c##r##0 = _mm512_fmadd_ps(a, b0, c##r##0);                            \
        c##r##1 = _mm512_fmadd_ps(a, b1, c##r##1);                            \
    }
#define CNN_ROW_FMA_HALF(r) c##r##0 = _mm512_fmadd_ps(_mm512_set1_ps(at[(r) * sa]), b0, c##r##0);
#define CNN_ROW_STORE(r)                                                      \
    {                                                                         \
        float *cp = C + (i + (r)) * ldc + j;                                  \
        if (accumulate) {                                                     \
            c##r##0 = _mm512_add_ps(c##r##0, _mm512_maskz_loadu_ps(m0, cp));  \
            c##r##1 = _mm512_add_ps(c##r##1, _mm512_maskz_loadu_ps(m1, cp + 16)); \
        }                                                                     \
        _mm512_mask_storeu_ps(cp, m0, c##r##0);                               \
        _mm512_mask_storeu_ps(cp + 16, m1, c##r##1);                          \
    }

__attribute__((target("avx512f")))
static void cnnframe_mk_sgemm_seg(ptrdiff_t M, ptrdiff_t N, ptrdiff_t nseg, ptrdiff_t T,
                                  const float *A, ptrdiff_t sa, ptrdiff_t sb, const ptrdiff_t *aoff,
                                  const float *B, ptrdiff_t ldb, const ptrdiff_t *boff,
                                  float *C, ptrdiff_t ldc, int accumulate) {
    for (ptrdiff_t j = 0; j < N; j += 32) {
        const __mmask16 m0 = cnnframe_mask16(N - j), m1 = cnnframe_mask16(N - j - 16);
        ptrdiff_t i = 0;
        if (m1) {
            /* 12 rows x 32 columns: 24 accumulators amortise the loads and loop overhead best. */
            for (; i + 12 <= M; i += 12) {
                CNN_ROW_DECL(0) CNN_ROW_DECL(1) CNN_ROW_DECL(2) CNN_ROW_DECL(3)
                CNN_ROW_DECL(4) CNN_ROW_DECL(5) CNN_ROW_DECL(6) CNN_ROW_DECL(7)
                CNN_ROW_DECL(8) CNN_ROW_DECL(9) CNN_ROW_DECL(10) CNN_ROW_DECL(11)
                for (ptrdiff_t s = 0; s < nseg; ++s) {
                    const float *arow = A + i * sa + aoff[s];
                    const float *b = B + boff[s] * ldb + j;
                    for (ptrdiff_t t = 0; t < T; ++t, b += ldb) {
                        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
                        const float *at = arow + t * sb;
                        CNN_ROW_FMA(0) CNN_ROW_FMA(1) CNN_ROW_FMA(2) CNN_ROW_FMA(3)
                        CNN_ROW_FMA(4) CNN_ROW_FMA(5) CNN_ROW_FMA(6) CNN_ROW_FMA(7)
                        CNN_ROW_FMA(8) CNN_ROW_FMA(9) CNN_ROW_FMA(10) CNN_ROW_FMA(11)
                    }
                }
                CNN_ROW_STORE(0) CNN_ROW_STORE(1) CNN_ROW_STORE(2) CNN_ROW_STORE(3)
                CNN_ROW_STORE(4) CNN_ROW_STORE(5) CNN_ROW_STORE(6) CNN_ROW_STORE(7)
                CNN_ROW_STORE(8) CNN_ROW_STORE(9) CNN_ROW_STORE(10) CNN_ROW_STORE(11)
            }
        }
        for (; i + 8 <= M; i += 8) {
            CNN_ROW_DECL(0) CNN_ROW_DECL(1) CNN_ROW_DECL(2) CNN_ROW_DECL(3)
            CNN_ROW_DECL(4) CNN_ROW_DECL(5) CNN_ROW_DECL(6) CNN_ROW_DECL(7)
            for (ptrdiff_t s = 0; s < nseg; ++s) {
                const float *arow = A + i * sa + aoff[s];
                const float *b = B + boff[s] * ldb + j;
                if (m1) {
                    for (ptrdiff_t t = 0; t < T; ++t, b += ldb) {
                        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
                        const float *at = arow + t * sb;
                        CNN_ROW_FMA(0) CNN_ROW_FMA(1) CNN_ROW_FMA(2) CNN_ROW_FMA(3)
                        CNN_ROW_FMA(4) CNN_ROW_FMA(5) CNN_ROW_FMA(6) CNN_ROW_FMA(7)
                    }
                } else {
                    /* 16 columns or fewer: half the multiply-adds. */
                    for (ptrdiff_t t = 0; t < T; ++t, b += ldb) {
                        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
                        const float *at = arow + t * sb;
                        CNN_ROW_FMA_HALF(0) CNN_ROW_FMA_HALF(1) CNN_ROW_FMA_HALF(2) CNN_ROW_FMA_HALF(3)
                        CNN_ROW_FMA_HALF(4) CNN_ROW_FMA_HALF(5) CNN_ROW_FMA_HALF(6) CNN_ROW_FMA_HALF(7)
                    }
                }
            }
            CNN_ROW_STORE(0) CNN_ROW_STORE(1) CNN_ROW_STORE(2) CNN_ROW_STORE(3)
            CNN_ROW_STORE(4) CNN_ROW_STORE(5) CNN_ROW_STORE(6) CNN_ROW_STORE(7)
        }
        for (; i < M; ++i) {
            CNN_ROW_DECL(0)
            for (ptrdiff_t s = 0; s < nseg; ++s) {
                const float *arow = A + i * sa + aoff[s];
                const float *b = B + boff[s] * ldb + j;
                for (ptrdiff_t t = 0; t < T; ++t, b += ldb) {
                    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
                    const float *at = arow + t * sb;
                    CNN_ROW_FMA(0)
                }
            }
            CNN_ROW_STORE(0)
        }
    }
}

/* The single-segment case: C (+)= A·B with A[i*sa + t*sb], B[t*ldb + j]. */
static void cnnframe_mk_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t T, const float *A, ptrdiff_t sa,
                              ptrdiff_t sb, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                              int accumulate) {
    const ptrdiff_t zero = 0;
    cnnframe_mk_sgemm_seg(M, N, 1, T, A, sa, sb, &zero, B, ldb, &zero, C, ldc, accumulate);
}

#undef CNN_ROW_DECL
#undef CNN_ROW_FMA
#undef CNN_ROW_FMA_HALF
#undef CNN_ROW_STORE

#else

/* Never called: cnnframe_mk_available() is 0 here and the kernels use BLAS. */
static void cnnframe_mk_sgemm_seg(ptrdiff_t M, ptrdiff_t N, ptrdiff_t nseg, ptrdiff_t T,
                                  const float *A, ptrdiff_t sa, ptrdiff_t sb, const ptrdiff_t *aoff,
                                  const float *B, ptrdiff_t ldb, const ptrdiff_t *boff,
                                  float *C, ptrdiff_t ldc, int accumulate) {
    (void)M; (void)N; (void)nseg; (void)T; (void)A; (void)sa; (void)sb; (void)aoff; (void)B;
    (void)ldb; (void)boff; (void)C; (void)ldc; (void)accumulate;
}
static void cnnframe_mk_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t T, const float *A, ptrdiff_t sa,
                              ptrdiff_t sb, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                              int accumulate) {
    (void)M; (void)N; (void)T; (void)A; (void)sa; (void)sb; (void)B; (void)ldb; (void)C; (void)ldc;
    (void)accumulate;
}

#endif
#endif
