/* Pooling loops over one N·C plane (pool.pyx runs planes in parallel).  Argmax indices are int32
   flat offsets r·W + q into the plane (the caller keeps planes below 2^31 elements).

   'take' is the max-pooling rule everywhere: a value replaces the running maximum when it is
   larger (strict '>', so the first maximum wins ties) or when it is a NaN and the maximum is not
   (a NaN is taken once and then kept, as in PyTorch).  Bitwise & and | keep it free of branches. */
#ifndef CNNFRAME_POOL_H
#define CNNFRAME_POOL_H

#include <string.h>
#include "lanes.h"

/* The common 2x2 window, stride 2, no padding: four loads per output, no bounds, and selects
   instead of branches (a branch on the comparison mispredicts half the time on real data). */
#define CNNFRAME_TAKE(v, best) (((v) > (best)) | (((v) != (v)) & ((best) == (best))))
#define CNNFRAME_MAX2X2(NAME, T)                                                          \
static inline void NAME(const T *xp, int W, int Ho, int Wo, T *yp, int *ap) {              \
    for (int i = 0; i < Ho; ++i) {                                                        \
        for (int j = 0; j < Wo; ++j) {                                                    \
            int idx = 2 * i * W + 2 * j, bi = idx;                     \
            T best = xp[idx], v;                                                          \
            int t;                                                                        \
            v = xp[idx + 1]; t = CNNFRAME_TAKE(v, best);                                  \
            best = t ? v : best; bi = t ? idx + 1 : bi;                                   \
            v = xp[idx + W]; t = CNNFRAME_TAKE(v, best);                                  \
            best = t ? v : best; bi = t ? idx + W : bi;                                   \
            v = xp[idx + W + 1]; t = CNNFRAME_TAKE(v, best);                              \
            best = t ? v : best; bi = t ? idx + W + 1 : bi;                               \
            yp[i * Wo + j] = best;                                                        \
            ap[i * Wo + j] = bi;                                                          \
        }                                                                                 \
    }                                                                                     \
}
CNNFRAME_MAX2X2(cnnframe_max2x2_d, double)

/* float32: four outputs at a time with SSE2 (every x86-64 CPU).  Shuffles split each input
   row into its even and odd columns; the same 'take' rule runs as compare masks. */
#if defined(__SSE2__)
#include <emmintrin.h>
static inline __m128 cnnframe_take4(__m128 v, __m128 best) {
    return _mm_or_ps(_mm_cmpgt_ps(v, best), _mm_and_ps(_mm_cmpunord_ps(v, v), _mm_cmpord_ps(best, best)));
}
static inline void cnnframe_max2x2_f(const float *xp, int W, int Ho, int Wo, float *yp, int *ap) {
    const __m128i lanes = _mm_set_epi32(6, 4, 2, 0);
    for (int i = 0; i < Ho; ++i) {
        const float *r0 = xp + (long long)(2 * i) * W, *r1 = r0 + W;
        int j = 0;
        for (; j + 4 <= Wo; j += 4) {
            __m128 lo = _mm_loadu_ps(r0 + 2 * j), hi = _mm_loadu_ps(r0 + 2 * j + 4);
            __m128 a = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
            __m128 b = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
            lo = _mm_loadu_ps(r1 + 2 * j); hi = _mm_loadu_ps(r1 + 2 * j + 4);
            __m128 c = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
            __m128 d = _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
            __m128i ia = _mm_add_epi32(_mm_set1_epi32(2 * i * W + 2 * j), lanes);
            __m128 best = a, m;
            __m128i bi = ia, mi, cand;
            /* in window order: (0,1), (1,0), (1,1) against the running best */
            m = cnnframe_take4(b, best); mi = _mm_castps_si128(m); cand = _mm_add_epi32(ia, _mm_set1_epi32(1));
            best = _mm_or_ps(_mm_and_ps(m, b), _mm_andnot_ps(m, best));
            bi = _mm_or_si128(_mm_and_si128(mi, cand), _mm_andnot_si128(mi, bi));
            m = cnnframe_take4(c, best); mi = _mm_castps_si128(m); cand = _mm_add_epi32(ia, _mm_set1_epi32(W));
            best = _mm_or_ps(_mm_and_ps(m, c), _mm_andnot_ps(m, best));
            bi = _mm_or_si128(_mm_and_si128(mi, cand), _mm_andnot_si128(mi, bi));
            m = cnnframe_take4(d, best); mi = _mm_castps_si128(m); cand = _mm_add_epi32(ia, _mm_set1_epi32(W + 1));
            best = _mm_or_ps(_mm_and_ps(m, d), _mm_andnot_ps(m, best));
            bi = _mm_or_si128(_mm_and_si128(mi, cand), _mm_andnot_si128(mi, bi));
            _mm_storeu_ps(yp + i * Wo + j, best);
            _mm_storeu_si128((__m128i *)(ap + i * Wo + j), bi);
        }
        for (; j < Wo; ++j) {
            int idx = 2 * i * W + 2 * j, b_i = idx;
            float best = xp[idx], v;
            int t;
            v = xp[idx + 1]; t = CNNFRAME_TAKE(v, best); best = t ? v : best; b_i = t ? idx + 1 : b_i;
            v = xp[idx + W]; t = CNNFRAME_TAKE(v, best); best = t ? v : best; b_i = t ? idx + W : b_i;
            v = xp[idx + W + 1]; t = CNNFRAME_TAKE(v, best); best = t ? v : best; b_i = t ? idx + W + 1 : b_i;
            yp[i * Wo + j] = best;
            ap[i * Wo + j] = b_i;
        }
    }
}
#else
CNNFRAME_MAX2X2(cnnframe_max2x2_f, float)
#endif

/* Any window, stride and padding: the window is clipped to the plane (padding never wins). */
#define CNNFRAME_MAX_PLANE(NAME, T)                                                           \
static inline void NAME(const T *xp, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,   \
                 int ph, int pw, T *yp, int *ap) {                                      \
    for (int i = 0; i < Ho; ++i) {                                                            \
        int r0 = i * sh - ph, r1 = r0 + kh;                                                   \
        r0 = r0 < 0 ? 0 : r0;                                                                 \
        r1 = r1 > H ? H : r1;                                                                 \
        for (int j = 0; j < Wo; ++j) {                                                        \
            int q0 = j * sw - pw, q1 = q0 + kw;                                               \
            q0 = q0 < 0 ? 0 : q0;                                                             \
            q1 = q1 > W ? W : q1;                                                             \
            int bi = r0 * W + q0;                                            \
            T best = xp[bi];                                                                  \
            for (int r = r0; r < r1; ++r) {                                                   \
                const T *row = xp + (long long)r * W;                                         \
                for (int q = q0; q < q1; ++q) {                                               \
                    T v = row[q];                                                             \
                    int t = CNNFRAME_TAKE(v, best);                                           \
                    best = t ? v : best;                                                      \
                    bi = t ? r * W + q : bi;                                       \
                }                                                                             \
            }                                                                                 \
            yp[(long long)i * Wo + j] = best;                                                 \
            ap[(long long)i * Wo + j] = bi;                                                   \
        }                                                                                     \
    }                                                                                         \
}
CNNFRAME_MAX_PLANE(cnnframe_max_plane_f, float)
CNNFRAME_MAX_PLANE(cnnframe_max_plane_d, double)

/* Max-pooling backward of one plane: dx = 0, then dx[argmax] += G (overlapping windows add).
   An index outside the plane is skipped and counted: the caller reports it (the indices may come
   from the user), and nothing is written out of bounds. */
#define CNNFRAME_MAX_GRAD_PLANE(NAME, T)                                                      \
static inline long long NAME(const T *gy, const int *ap, long long hw, long long howo, T *dx) {     \
    long long bad = 0;                                                                        \
    memset(dx, 0, (size_t)hw * sizeof(T));                                                    \
    for (long long k = 0; k < howo; ++k) {                                                    \
        unsigned int a = (unsigned int)ap[k];                                                 \
        if (a < (unsigned long long)hw) dx[a] += gy[k];                                       \
        else ++bad;                                                                           \
    }                                                                                         \
    return bad;                                                                               \
}
CNNFRAME_MAX_GRAD_PLANE(cnnframe_max_grad_plane_f, float)
CNNFRAME_MAX_GRAD_PLANE(cnnframe_max_grad_plane_d, double)

#endif
