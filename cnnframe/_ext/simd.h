/* Small vector helpers for the convolution kernels (conv.pyx): runs added and summed, and the 2-D
 * transposes between NCHW and channels-last.  AVX-512 code is compiled with
 * __attribute__((target)) and chosen at run time (cnnframe_simd_avx512), so the build needs no
 * -march flag; SSE2 (every x86-64 CPU) or plain loops otherwise.
 */
#ifndef CNNFRAME_SIMD_H
#define CNNFRAME_SIMD_H

#include <stddef.h>
#include <string.h>

#include "cpu.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__) && !defined(CNNFRAME_NO_AVX512)
#define CNNFRAME_SIMD_X86 1
#include <immintrin.h>
#endif

/* 1 when the AVX-512 helpers run (the CPU has them); conv.pyx may switch them off for tests. */
static int cnnframe_simd_avx512 = 0;

/* restrict tells the compiler the two runs never overlap, so the loop vectorises. */
static inline void cnnframe_add_f(float *__restrict dst, const float *__restrict src, ptrdiff_t n) {
    for (ptrdiff_t t = 0; t < n; ++t) dst[t] += src[t];
}
static inline void cnnframe_add_d(double *__restrict dst, const double *__restrict src, ptrdiff_t n) {
    for (ptrdiff_t t = 0; t < n; ++t) dst[t] += src[t];
}

/* Sums in eight interleaved partial sums (vectorisable without -ffast-math; a fixed order, so
   still deterministic). */
#define CNNFRAME_SUM(NAME, T)                                                                     \
    static inline T NAME(const T *x, ptrdiff_t n) {                                               \
        T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                      \
        ptrdiff_t t = 0;                                                                          \
        for (; t + 8 <= n; t += 8)                                                                \
            for (int k = 0; k < 8; ++k) acc[k] += x[t + k];                                       \
        for (; t < n; ++t) acc[0] += x[t];                                                        \
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])); \
    }
CNNFRAME_SUM(cnnframe_sum_f, float)
CNNFRAME_SUM(cnnframe_sum_d, double)
#undef CNNFRAME_SUM

#ifdef CNNFRAME_SIMD_X86
static inline __mmask16 cnnframe_simd_mask16(ptrdiff_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : (n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u));
}

/* r[k] <- column k of the 16 x 16 matrix whose rows are r[0..15]. */
__attribute__((target("avx512f"))) static inline void cnnframe_transpose16x16(__m512 r[16]) {
    __m512 t[16];
    for (int k = 0; k < 16; k += 2) {
        t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 16; k += 4) {
        r[k] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[k]), _mm512_castps_pd(t[k + 2])));
        r[k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[k]), _mm512_castps_pd(t[k + 2])));
        r[k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[k + 1]), _mm512_castps_pd(t[k + 3])));
        r[k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[k + 1]), _mm512_castps_pd(t[k + 3])));
    }
    /* Each 128-bit lane now holds a 4 x 4 block transposed; two rounds of 128-bit lane shuffles
       put the blocks in place. */
    for (int k = 0; k < 4; ++k) {
        t[k] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0x88);
        t[k + 4] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0xDD);
        t[k + 8] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0x88);
        t[k + 12] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0xDD);
    }
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
        r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xDD);
        r[k + 4] = _mm512_shuffle_f32x4(t[k + 4], t[k + 12], 0x88);
        r[k + 12] = _mm512_shuffle_f32x4(t[k + 4], t[k + 12], 0xDD);
    }
}

/* The AVX-512 form of cnnframe_transpose_f: 16 x 16 blocks in registers, masks at the edges. */
__attribute__((target("avx512f"))) static void cnnframe_transpose_f_avx512(
    const float *src, ptrdiff_t lds, ptrdiff_t npix, ptrdiff_t F, float *dst, ptrdiff_t ldd, const float *b) {
    for (ptrdiff_t f = 0; f < F; f += 16) {
        const ptrdiff_t nf = F - f < 16 ? F - f : 16;
        const __mmask16 mf = cnnframe_simd_mask16(nf);
        for (ptrdiff_t p = 0; p < npix; p += 16) {
            const ptrdiff_t np = npix - p < 16 ? npix - p : 16;
            const __mmask16 mp = cnnframe_simd_mask16(np);
            __m512 r[16];
            for (int k = 0; k < 16; ++k)
                r[k] = k < np ? _mm512_maskz_loadu_ps(mf, src + (p + k) * lds + f) : _mm512_setzero_ps();
            cnnframe_transpose16x16(r);
            for (int k = 0; k < nf; ++k) {
                const __m512 v = b ? _mm512_add_ps(r[k], _mm512_set1_ps(b[f + k])) : r[k];
                _mm512_mask_storeu_ps(dst + (f + k) * ldd + p, mp, v);
            }
        }
    }
}
#endif

/* dst[f*ldd + p] = src[p*lds + f] (+ b[f] when b is not NULL) for p < npix, f < F: a 2-D
   transpose, e.g. the GEMM's pixel-major result turned channel-major (NCHW) with the bias
   added, or an image between NCHW and channels-last.  16x16 register tiles with AVX-512, 4x4
   (float) or 2x2 (double) with SSE2 (every x86-64 CPU), plain loops elsewhere. */
static void cnnframe_transpose_f(const float *src, ptrdiff_t lds, ptrdiff_t npix, ptrdiff_t F,
                                 float *dst, ptrdiff_t ldd, const float *b) {
#ifdef CNNFRAME_SIMD_X86
    if (cnnframe_simd_avx512) {
        cnnframe_transpose_f_avx512(src, lds, npix, F, dst, ldd, b);
        return;
    }
#endif
    ptrdiff_t p, f = 0, p4 = npix & ~(ptrdiff_t)3;
#if defined(__SSE2__)
    /* Four rows of dst at a time along the whole run: each is written as one sequential stream
       (rows of Y are often 4 KiB apart, and hopping between many of them per pixel would
       thrash the cache sets). */
    for (; f + 4 <= F; f += 4) {
        __m128 b0 = _mm_set1_ps(b ? b[f] : 0.0f), b1 = _mm_set1_ps(b ? b[f + 1] : 0.0f);
        __m128 b2 = _mm_set1_ps(b ? b[f + 2] : 0.0f), b3 = _mm_set1_ps(b ? b[f + 3] : 0.0f);
        for (p = 0; p < p4; p += 4) {
            __m128 r0 = _mm_loadu_ps(src + (p + 0) * lds + f), r1 = _mm_loadu_ps(src + (p + 1) * lds + f);
            __m128 r2 = _mm_loadu_ps(src + (p + 2) * lds + f), r3 = _mm_loadu_ps(src + (p + 3) * lds + f);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            _mm_storeu_ps(dst + (f + 0) * ldd + p, _mm_add_ps(r0, b0));
            _mm_storeu_ps(dst + (f + 1) * ldd + p, _mm_add_ps(r1, b1));
            _mm_storeu_ps(dst + (f + 2) * ldd + p, _mm_add_ps(r2, b2));
            _mm_storeu_ps(dst + (f + 3) * ldd + p, _mm_add_ps(r3, b3));
        }
        for (p = p4; p < npix; ++p)
            for (ptrdiff_t k = 0; k < 4; ++k)
                dst[(f + k) * ldd + p] = src[p * lds + f + k] + (b ? b[f + k] : 0.0f);
    }
#endif
    for (; f < F; ++f) {
        const float bf = b ? b[f] : 0.0f;
        for (p = 0; p < npix; ++p) dst[f * ldd + p] = src[p * lds + f] + bf;
    }
}

static void cnnframe_transpose_d(const double *src, ptrdiff_t lds, ptrdiff_t npix, ptrdiff_t F,
                                 double *dst, ptrdiff_t ldd, const double *b) {
    ptrdiff_t p, f = 0, p2 = npix & ~(ptrdiff_t)1;
#if defined(__SSE2__)
    for (; f + 2 <= F; f += 2) {
        __m128d b0 = _mm_set1_pd(b ? b[f] : 0.0), b1 = _mm_set1_pd(b ? b[f + 1] : 0.0);
        for (p = 0; p < p2; p += 2) {
            __m128d r0 = _mm_loadu_pd(src + p * lds + f), r1 = _mm_loadu_pd(src + (p + 1) * lds + f);
            _mm_storeu_pd(dst + f * ldd + p, _mm_add_pd(_mm_unpacklo_pd(r0, r1), b0));
            _mm_storeu_pd(dst + (f + 1) * ldd + p, _mm_add_pd(_mm_unpackhi_pd(r0, r1), b1));
        }
        for (p = p2; p < npix; ++p) {
            dst[f * ldd + p] = src[p * lds + f] + (b ? b[f] : 0.0);
            dst[(f + 1) * ldd + p] = src[p * lds + f + 1] + (b ? b[f + 1] : 0.0);
        }
    }
#endif
    for (; f < F; ++f) {
        const double bf = b ? b[f] : 0.0;
        for (p = 0; p < npix; ++p) dst[f * ldd + p] = src[p * lds + f] + bf;
    }
}

#endif
