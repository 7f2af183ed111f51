/* Depthwise convolution (groups = C = K: each channel has its own kh x kw kernel) on one
 * channels-last image, the three passes of docs/math.md eq. (5) with one input and one output
 * channel per group.  Every loop runs along the channels, which are contiguous here, so it
 * vectorises; GCC builds an AVX-512 clone chosen at load time next to the baseline one
 * (target_clones), so the build needs no -march flag.  Sums run in a fixed order (taps, then
 * pixels) whatever the clone.
 *
 *   xh: padded input (Hp, Wp, C); g: output gradient (Ho, Wo, C); wd: kernel (kh*kw, C),
 *   tap t = m*kw + l reads xh at row i*sh + m*dh, column j*sw + l*dw.
 */
#ifndef CNNFRAME_DEPTHWISE_H
#define CNNFRAME_DEPTHWISE_H

#include <stddef.h>

#include "simd.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(CNNFRAME_NO_AVX512)
#define CNNFRAME_CLONES __attribute__((target_clones("avx512f", "default")))
#else
#define CNNFRAME_CLONES
#endif

#define CNNFRAME_DEPTHWISE(T, SFX)                                                                    \
    /* y[(i*Wo + j)*C + c] = b[c] + sum_t xh[pixel(i, j, t)*C + c] * wd[t*C + c]   (eq. 1) */      \
    CNNFRAME_CLONES static void cnnframe_dw_forward_##SFX(                                           \
        const T *xh, int Wp, int C, const T *wd, int kh, int kw, int sh, int sw, int dh, int dw,   \
        int Ho, int Wo, const T *b, T *y) {                                                        \
        for (int i = 0; i < Ho; ++i)                                                               \
            for (int j = 0; j < Wo; ++j) {                                                         \
                T *__restrict o = y + ((ptrdiff_t)i * Wo + j) * C;                                 \
                for (int c = 0; c < C; ++c) o[c] = b[c];                                           \
                for (int m = 0; m < kh; ++m)                                                       \
                    for (int l = 0; l < kw; ++l) {                                                 \
                        const T *__restrict xp =                                                   \
                            xh + ((ptrdiff_t)(i * sh + m * dh) * Wp + j * sw + l * dw) * C;        \
                        const T *__restrict wp = wd + ((ptrdiff_t)m * kw + l) * C;                 \
                        for (int c = 0; c < C; ++c) o[c] += xp[c] * wp[c];                         \
                    }                                                                              \
            }                                                                                      \
    }                                                                                              \
    /* gw[t*C + c] += sum_(i,j) g[(i*Wo + j)*C + c] * xh[pixel(i, j, t)*C + c]        (eq. 2)      \
       dxh[pixel(i, j, t)*C + c] += g[(i*Wo + j)*C + c] * wd[t*C + c]                 (eq. 4)      \
       (dxh may be NULL: no input gradient) */                                                     \
    CNNFRAME_CLONES static void cnnframe_dw_backward_##SFX(                                          \
        const T *xh, int Wp, int C, const T *wd, int kh, int kw, int sh, int sw, int dh, int dw,   \
        int Ho, int Wo, const T *g, T *gw, T *dxh) {                                               \
        for (int i = 0; i < Ho; ++i)                                                               \
            for (int j = 0; j < Wo; ++j) {                                                         \
                const T *__restrict gp = g + ((ptrdiff_t)i * Wo + j) * C;                          \
                for (int m = 0; m < kh; ++m)                                                       \
                    for (int l = 0; l < kw; ++l) {                                                 \
                        const ptrdiff_t at = ((ptrdiff_t)(i * sh + m * dh) * Wp + j * sw + l * dw) * C; \
                        const T *__restrict xp = xh + at;                                          \
                        T *__restrict wg = gw + ((ptrdiff_t)m * kw + l) * C;                       \
                        for (int c = 0; c < C; ++c) wg[c] += gp[c] * xp[c];                        \
                        if (dxh) {                                                                 \
                            T *__restrict dp = dxh + at;                                           \
                            const T *__restrict wp = wd + ((ptrdiff_t)m * kw + l) * C;             \
                            for (int c = 0; c < C; ++c) dp[c] += gp[c] * wp[c];                   \
                        }                                                                          \
                    }                                                                              \
            }                                                                                      \
    }

CNNFRAME_DEPTHWISE(float, f)
CNNFRAME_DEPTHWISE(double, d)

#undef CNNFRAME_DEPTHWISE

#ifdef CNNFRAME_SIMD_X86
/* The float32 forward with AVX-512: blocks of 16 channels, four output pixels at a time held in
   registers (each kernel vector loaded once for four pixels).  Same sums, same order. */
__attribute__((target("avx512f"))) static void cnnframe_dw_forward_f_avx512(
    const float *xh, int Wp, int C, const float *wd, int kh, int kw, int sh, int sw, int dh, int dw,
    int Ho, int Wo, const float *b, float *y) {
    const ptrdiff_t step = (ptrdiff_t)sw * C;
    for (int c0 = 0; c0 < C; c0 += 16) {
        const __mmask16 mk = cnnframe_simd_mask16(C - c0);
        const __m512 bv = _mm512_maskz_loadu_ps(mk, b + c0);
        for (int i = 0; i < Ho; ++i) {
            int j = 0;
            for (; j + 4 <= Wo; j += 4) {
                __m512 a0 = bv, a1 = bv, a2 = bv, a3 = bv;
                for (int m = 0; m < kh; ++m)
                    for (int l = 0; l < kw; ++l) {
                        const float *xp = xh + ((ptrdiff_t)(i * sh + m * dh) * Wp + j * sw + l * dw) * C + c0;
                        const __m512 wv = _mm512_maskz_loadu_ps(mk, wd + ((ptrdiff_t)m * kw + l) * C + c0);
                        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xp), wv, a0);
                        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xp + step), wv, a1);
                        a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xp + 2 * step), wv, a2);
                        a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xp + 3 * step), wv, a3);
                    }
                float *o = y + ((ptrdiff_t)i * Wo + j) * C + c0;
                _mm512_mask_storeu_ps(o, mk, a0);
                _mm512_mask_storeu_ps(o + C, mk, a1);
                _mm512_mask_storeu_ps(o + 2 * C, mk, a2);
                _mm512_mask_storeu_ps(o + 3 * C, mk, a3);
            }
            for (; j < Wo; ++j) {
                __m512 a0 = bv;
                for (int m = 0; m < kh; ++m)
                    for (int l = 0; l < kw; ++l) {
                        const float *xp = xh + ((ptrdiff_t)(i * sh + m * dh) * Wp + j * sw + l * dw) * C + c0;
                        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, xp),
                                             _mm512_maskz_loadu_ps(mk, wd + ((ptrdiff_t)m * kw + l) * C + c0), a0);
                    }
                _mm512_mask_storeu_ps(y + ((ptrdiff_t)i * Wo + j) * C + c0, mk, a0);
            }
        }
    }
}

/* gw[t*C + c] += sum_(i,j) g[(i*g_row + j)*C + c] * xh[pixel(i, j, t)*C + c]  (eq. 2), float32
   AVX-512: per block of 16 channels, up to eight taps at once, each summing over the pixels in
   order in its own register (independent chains, and each G vector loaded once for all). */
__attribute__((target("avx512f"))) static void cnnframe_dw_weight_grad_f_avx512(
    const float *xh, int Wp, int C, int kh, int kw, int sh, int sw, int dh, int dw, int Ho, int Wo,
    const float *g, int g_row, float *gw) {
    const int taps = kh * kw;
    for (int c0 = 0; c0 < C; c0 += 16) {
        const __mmask16 mk = cnnframe_simd_mask16(C - c0);
        for (int t0 = 0; t0 < taps; t0 += 8) {
            const int nt = taps - t0 < 8 ? taps - t0 : 8;
            ptrdiff_t off[8];
            __m512 acc[8];
            for (int u = 0; u < 8; ++u) {
                const int t = t0 + (u < nt ? u : 0);
                off[u] = ((ptrdiff_t)(t / kw) * dh * Wp + (ptrdiff_t)(t % kw) * dw) * C;
                acc[u] = _mm512_setzero_ps();
            }
            for (int i = 0; i < Ho; ++i) {
                const float *xr = xh + (ptrdiff_t)i * sh * Wp * C + c0;
                const float *gr = g + (ptrdiff_t)i * g_row * C + c0;
                for (int j = 0; j < Wo; ++j) {
                    const __m512 gv = _mm512_maskz_loadu_ps(mk, gr + (ptrdiff_t)j * C);
                    const float *xp = xr + (ptrdiff_t)j * sw * C;
#pragma GCC unroll 8
                    for (int u = 0; u < 8; ++u)
                        if (u < nt) acc[u] = _mm512_fmadd_ps(gv, _mm512_maskz_loadu_ps(mk, xp + off[u]), acc[u]);
                }
            }
            for (int u = 0; u < nt; ++u) {
                float *wg = gw + (ptrdiff_t)(t0 + u) * C + c0;
                _mm512_mask_storeu_ps(wg, mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, wg), acc[u]));
            }
        }
    }
}
#endif

/* Dispatch: AVX-512 for float32 where the CPU has it (cnnframe_simd_avx512), the loops above
   otherwise. */
static void cnnframe_dw_forward(const float *xh, int Wp, int C, const float *wd, int kh, int kw, int sh,
                                int sw, int dh, int dw, int Ho, int Wo, const float *b, float *y) {
#ifdef CNNFRAME_SIMD_X86
    if (cnnframe_simd_avx512) {
        cnnframe_dw_forward_f_avx512(xh, Wp, C, wd, kh, kw, sh, sw, dh, dw, Ho, Wo, b, y);
        return;
    }
#endif
    cnnframe_dw_forward_f(xh, Wp, C, wd, kh, kw, sh, sw, dh, dw, Ho, Wo, b, y);
}

/* gw only (g with rows g_row pixels apart): eq. (2) of the channels-last form. */
static void cnnframe_dw_weight_grad(const float *xh, int Wp, int C, int kh, int kw, int sh, int sw, int dh,
                                    int dw, int Ho, int Wo, const float *g, int g_row, float *gw) {
#ifdef CNNFRAME_SIMD_X86
    if (cnnframe_simd_avx512) {
        cnnframe_dw_weight_grad_f_avx512(xh, Wp, C, kh, kw, sh, sw, dh, dw, Ho, Wo, g, g_row, gw);
        return;
    }
#endif
    for (int i = 0; i < Ho; ++i)
        for (int j = 0; j < Wo; ++j)
            for (int m = 0; m < kh; ++m)
                for (int l = 0; l < kw; ++l) {
                    const float *xp = xh + ((ptrdiff_t)(i * sh + m * dh) * Wp + j * sw + l * dw) * C;
                    const float *gp = g + ((ptrdiff_t)i * g_row + j) * C;
                    float *wg = gw + ((ptrdiff_t)m * kw + l) * C;
                    for (int c = 0; c < C; ++c) wg[c] += gp[c] * xp[c];
                }
}
#endif
