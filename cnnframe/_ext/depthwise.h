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

#endif
