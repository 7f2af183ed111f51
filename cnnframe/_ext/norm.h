/* The per-run loops of batch normalisation (norm.pyx walks a channel's runs, one per image).

   x̂ = (x − μ)·inv is always formed in the data type, in that order, by the forward and the backward
   pass alike, so the backward pass sees exactly the x̂ the forward pass used.  Sums go through the
   fixed lanes of lanes.h. */
#ifndef CNNFRAME_NORM_H
#define CNNFRAME_NORM_H

#include "lanes.h"

#define CNNFRAME_DEFINE_NORM(S, T)                                                              \
/* y = γ·x̂ + β */                                                                              \
static inline void cnnframe_bn_apply_##S(const T *x, ptrdiff_t n, T mean, T inv, T gamma, T beta, T *y) { \
    for (ptrdiff_t i = 0; i < n; ++i) y[i] = ((x[i] - mean) * inv) * gamma + beta;              \
}                                                                                               \
/* y = max(γ·x̂ + β, 0), a NaN kept: BatchNorm then ReLU in one pass (activation.h's rule) */     \
static inline void cnnframe_bn_apply_relu_##S(const T *x, ptrdiff_t n, T mean, T inv, T gamma, T beta, \
                                             T *y) {                                            \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                         \
        T v = ((x[i] - mean) * inv) * gamma + beta;                                             \
        y[i] = ((v > 0) | (v != v)) ? v : (T)0;                                                 \
    }                                                                                           \
}                                                                                               \
/* training: dx = k·((g − mean(g)) − x̂·mean(g·x̂)),  k = γ·inv */                              \
static inline void cnnframe_bn_dx_##S(const T *g, const T *x, ptrdiff_t n, T mean, T inv, T k,         \
                               T mean_g, T mean_gx, T *dx) {                                    \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                         \
        T xh = (x[i] - mean) * inv;                                                             \
        dx[i] = k * ((g[i] - mean_g) - xh * mean_gx);                                           \
    }                                                                                           \
}                                                                                               \
/* evaluation (fixed statistics): dx = k·g */                                                   \
static inline void cnnframe_bn_dx_eval_##S(const T *g, ptrdiff_t n, T k, T *dx) {                      \
    for (ptrdiff_t i = 0; i < n; ++i) dx[i] = k * g[i];                                         \
}

CNNFRAME_DEFINE_NORM(f, float)
CNNFRAME_DEFINE_NORM(d, double)

/* ReLU's backward in front of BatchNorm's, fused with BatchNorm's sums: out = G·[γ·x̂ + β > 0] (the
   forward output recomputed from x exactly as the forward pass formed it, so the mask is the ReLU's
   own), ag += out, agx += out·x̂ -- lanes and chunks as cnnframe_lanes_dots_* (lanes.h). */
static inline void cnnframe_relu_dots_f(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
                                        float gamma, float beta, float *out, cnnframe_acc *ag, cnnframe_acc *agx) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        float *fa = ag->f, *fb = agx->f;
#ifdef CNNFRAME_SSE2
        const __m128 vm = _mm_set1_ps(mean), vi = _mm_set1_ps(inv), vg = _mm_set1_ps(gamma), vb = _mm_set1_ps(beta);
        const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
        __m128 acc_a[2] = {_mm_loadu_ps(fa), _mm_loadu_ps(fa + 4)}, acc_b[2] = {_mm_loadu_ps(fb), _mm_loadu_ps(fb + 4)};
        for (; i + 8 <= end; i += 8)
            for (int k = 0; k < 2; ++k) {
                __m128 h = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 4 * k), vm), vi);
                __m128 v = _mm_add_ps(_mm_mul_ps(h, vg), vb);
                __m128 ge = _mm_mul_ps(_mm_loadu_ps(g + i + 4 * k), _mm_and_ps(_mm_cmpgt_ps(v, zero), one));
                _mm_storeu_ps(out + i + 4 * k, ge);
                acc_a[k] = _mm_add_ps(acc_a[k], ge);
                acc_b[k] = _mm_add_ps(acc_b[k], _mm_mul_ps(ge, h));
            }
        _mm_storeu_ps(fa, acc_a[0]);
        _mm_storeu_ps(fa + 4, acc_a[1]);
        _mm_storeu_ps(fb, acc_b[0]);
        _mm_storeu_ps(fb + 4, acc_b[1]);
#else
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; ++l) {
                float h = (x[i + l] - mean) * inv, v = h * gamma + beta;
                float ge = g[i + l] * (float)(v > 0);
                out[i + l] = ge;
                fa[l] += ge;
                fb[l] += ge * h;
            }
#endif
        for (int l = 0; i < end; ++i, ++l) {
            float h = (x[i] - mean) * inv, v = h * gamma + beta;
            float ge = g[i] * (float)(v > 0);
            out[i] = ge;
            fa[l] += ge;
            fb[l] += ge * h;
        }
        cnnframe_acc_chunk(ag, end - start);
        cnnframe_acc_chunk(agx, end - start);
    }
}

static inline void cnnframe_relu_dots_d(const double *g, const double *x, ptrdiff_t n, double mean, double inv,
                                        double gamma, double beta, double *out, cnnframe_acc *ag, cnnframe_acc *agx) {
    double *da = ag->d, *db = agx->d;
    ptrdiff_t i = 0;
#ifdef CNNFRAME_SSE2
    const __m128d vm = _mm_set1_pd(mean), vi = _mm_set1_pd(inv), vg = _mm_set1_pd(gamma), vb = _mm_set1_pd(beta);
    const __m128d zero = _mm_setzero_pd(), one = _mm_set1_pd(1.0);
    __m128d acc_a[4], acc_b[4];
    for (int k = 0; k < 4; ++k) {
        acc_a[k] = _mm_loadu_pd(da + 2 * k);
        acc_b[k] = _mm_loadu_pd(db + 2 * k);
    }
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 4; ++k) {
            __m128d h = _mm_mul_pd(_mm_sub_pd(_mm_loadu_pd(x + i + 2 * k), vm), vi);
            __m128d v = _mm_add_pd(_mm_mul_pd(h, vg), vb);
            __m128d ge = _mm_mul_pd(_mm_loadu_pd(g + i + 2 * k), _mm_and_pd(_mm_cmpgt_pd(v, zero), one));
            _mm_storeu_pd(out + i + 2 * k, ge);
            acc_a[k] = _mm_add_pd(acc_a[k], ge);
            acc_b[k] = _mm_add_pd(acc_b[k], _mm_mul_pd(ge, h));
        }
    for (int k = 0; k < 4; ++k) {
        _mm_storeu_pd(da + 2 * k, acc_a[k]);
        _mm_storeu_pd(db + 2 * k, acc_b[k]);
    }
#else
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) {
            double h = (x[i + l] - mean) * inv, v = h * gamma + beta;
            double ge = g[i + l] * (double)(v > 0);
            out[i + l] = ge;
            da[l] += ge;
            db[l] += ge * h;
        }
#endif
    for (int l = 0; i < n; ++i, ++l) {
        double h = (x[i] - mean) * inv, v = h * gamma + beta;
        double ge = g[i] * (double)(v > 0);
        out[i] = ge;
        da[l] += ge;
        db[l] += ge * h;
    }
}

#endif
