/* The per-run loops of batch normalisation (norm.pyx walks a channel's runs, one per image).

   x̂ = (x − μ)·inv is always formed in the data type, in that order, by the forward and the backward
   pass alike, so the backward pass sees exactly the x̂ the forward pass used; and γ·x̂ + β is never
   a fused multiply-add (setup.py builds this module with -ffp-contract=off, and the AVX2 code's target
   has no "fma"), so the backward's ReLU mask is the forward's.  Sums go through the fixed lanes of
   lanes.h. */
#ifndef CNNFRAME_NORM_H
#define CNNFRAME_NORM_H

#include "lanes.h"

#define CNNFRAME_DEFINE_NORM(S, T, FN)                                                            \
/* y = γ·x̂ + β */                                                                              \
FN void cnnframe_bn_apply_##S(const T *x, ptrdiff_t n, T mean, T inv, T gamma, T beta, T *y) { \
    for (ptrdiff_t i = 0; i < n; ++i) y[i] = ((x[i] - mean) * inv) * gamma + beta;              \
}                                                                                               \
/* y = max(γ·x̂ + β, 0), a NaN kept: BatchNorm then ReLU in one pass (activation.h's rule) */     \
FN void cnnframe_bn_apply_relu_##S(const T *x, ptrdiff_t n, T mean, T inv, T gamma, T beta, \
                                             T *y) {                                            \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                         \
        T v = ((x[i] - mean) * inv) * gamma + beta;                                             \
        y[i] = ((v > 0) | (v != v)) ? v : (T)0;                                                 \
    }                                                                                           \
}                                                                                               \
/* training: dx = k·((g − mean(g)) − x̂·mean(g·x̂)),  k = γ·inv */                              \
FN void cnnframe_bn_dx_##S(const T *g, const T *x, ptrdiff_t n, T mean, T inv, T k,         \
                               T mean_g, T mean_gx, T *dx) {                                    \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                         \
        T xh = (x[i] - mean) * inv;                                                             \
        dx[i] = k * ((g[i] - mean_g) - xh * mean_gx);                                           \
    }                                                                                           \
}                                                                                               \
/* evaluation (fixed statistics): dx = k·g */                                                   \
FN void cnnframe_bn_dx_eval_##S(const T *g, ptrdiff_t n, T k, T *dx) {                      \
    for (ptrdiff_t i = 0; i < n; ++i) dx[i] = k * g[i];                                         \
}

/* Element by element, so the compiler vectorises these loops at any width with the same bits: once
   for the build's target (SSE2 on x86-64) and once for AVX2. */
CNNFRAME_DEFINE_NORM(f_base, float, static inline)
CNNFRAME_DEFINE_NORM(d_base, double, static inline)
#ifdef CNNFRAME_HAVE_AVX2
CNNFRAME_DEFINE_NORM(f_avx2, float, CNNFRAME_AVX2_FN)
CNNFRAME_DEFINE_NORM(d_avx2, double, CNNFRAME_AVX2_FN)
#endif

#define CNNFRAME_NORM_ENTRIES(S, T)                                                                       \
static inline void cnnframe_bn_apply_##S(const T *x, ptrdiff_t n, T mean, T inv, T gamma, T beta, T *y) {  \
    CNNFRAME_AVX2_OR_BASE(cnnframe_bn_apply_##S, x, n, mean, inv, gamma, beta, y);                       \
}                                                                                                         \
static inline void cnnframe_bn_apply_relu_##S(const T *x, ptrdiff_t n, T mean, T inv, T gamma, T beta,    \
                                              T *y) {                                                     \
    CNNFRAME_AVX2_OR_BASE(cnnframe_bn_apply_relu_##S, x, n, mean, inv, gamma, beta, y);                  \
}                                                                                                         \
static inline void cnnframe_bn_dx_##S(const T *g, const T *x, ptrdiff_t n, T mean, T inv, T k, T mean_g,  \
                                      T mean_gx, T *dx) {                                                 \
    CNNFRAME_AVX2_OR_BASE(cnnframe_bn_dx_##S, g, x, n, mean, inv, k, mean_g, mean_gx, dx);               \
}                                                                                                         \
static inline void cnnframe_bn_dx_eval_##S(const T *g, ptrdiff_t n, T k, T *dx) {                         \
    CNNFRAME_AVX2_OR_BASE(cnnframe_bn_dx_eval_##S, g, n, k, dx);                                         \
}
CNNFRAME_NORM_ENTRIES(f, float)
CNNFRAME_NORM_ENTRIES(d, double)

/* ReLU's backward in front of BatchNorm's, fused with BatchNorm's sums: out = G·[γ·x̂ + β > 0] (the
   forward output recomputed from x exactly as the forward pass formed it, so the mask is the ReLU's
   own), ag += out, agx += out·x̂ -- lanes and chunks as cnnframe_lanes_dots_* (lanes.h). */
static inline void cnnframe_relu_dots_f_base(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
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

static inline void cnnframe_relu_dots_d_base(const double *g, const double *x, ptrdiff_t n, double mean, double inv,
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

#ifdef CNNFRAME_HAVE_AVX2
/* The AVX2 forms: one register of 8 float lanes, or two of 4 double lanes. */
CNNFRAME_AVX2_FN void cnnframe_relu_dots_f_avx2(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
                                                float gamma, float beta, float *out, cnnframe_acc *ag,
                                                cnnframe_acc *agx) {
    const __m256 vm = _mm256_set1_ps(mean), vi = _mm256_set1_ps(inv), vg = _mm256_set1_ps(gamma);
    const __m256 vb = _mm256_set1_ps(beta), zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        __m256 sa = _mm256_loadu_ps(ag->f), sb = _mm256_loadu_ps(agx->f);
        for (; i + 8 <= end; i += 8) {
            __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vi);
            __m256 v = _mm256_add_ps(_mm256_mul_ps(h, vg), vb);
            __m256 ge = _mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), one));
            _mm256_storeu_ps(out + i, ge);
            sa = _mm256_add_ps(sa, ge);
            sb = _mm256_add_ps(sb, _mm256_mul_ps(ge, h));
        }
        _mm256_storeu_ps(ag->f, sa);
        _mm256_storeu_ps(agx->f, sb);
        for (int l = 0; i < end; ++i, ++l) {
            float h = (x[i] - mean) * inv, v = h * gamma + beta;
            float ge = g[i] * (float)(v > 0);
            out[i] = ge;
            ag->f[l] += ge;
            agx->f[l] += ge * h;
        }
        cnnframe_acc_chunk(ag, end - start);
        cnnframe_acc_chunk(agx, end - start);
    }
}

CNNFRAME_AVX2_FN void cnnframe_relu_dots_d_avx2(const double *g, const double *x, ptrdiff_t n, double mean,
                                                double inv, double gamma, double beta, double *out,
                                                cnnframe_acc *ag, cnnframe_acc *agx) {
    const __m256d vm = _mm256_set1_pd(mean), vi = _mm256_set1_pd(inv), vg = _mm256_set1_pd(gamma);
    const __m256d vb = _mm256_set1_pd(beta), zero = _mm256_setzero_pd(), one = _mm256_set1_pd(1.0);
    __m256d sa[2] = {_mm256_loadu_pd(ag->d), _mm256_loadu_pd(ag->d + 4)};
    __m256d sb[2] = {_mm256_loadu_pd(agx->d), _mm256_loadu_pd(agx->d + 4)};
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 2; ++k) {
            __m256d h = _mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(x + i + 4 * k), vm), vi);
            __m256d v = _mm256_add_pd(_mm256_mul_pd(h, vg), vb);
            __m256d ge = _mm256_mul_pd(_mm256_loadu_pd(g + i + 4 * k),
                                       _mm256_and_pd(_mm256_cmp_pd(v, zero, _CMP_GT_OQ), one));
            _mm256_storeu_pd(out + i + 4 * k, ge);
            sa[k] = _mm256_add_pd(sa[k], ge);
            sb[k] = _mm256_add_pd(sb[k], _mm256_mul_pd(ge, h));
        }
    for (int k = 0; k < 2; ++k) {
        _mm256_storeu_pd(ag->d + 4 * k, sa[k]);
        _mm256_storeu_pd(agx->d + 4 * k, sb[k]);
    }
    for (int l = 0; i < n; ++i, ++l) {
        double h = (x[i] - mean) * inv, v = h * gamma + beta;
        double ge = g[i] * (double)(v > 0);
        out[i] = ge;
        ag->d[l] += ge;
        agx->d[l] += ge * h;
    }
}
#endif

static inline void cnnframe_relu_dots_f(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
                                        float gamma, float beta, float *out, cnnframe_acc *ag, cnnframe_acc *agx) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_relu_dots_f, g, x, n, mean, inv, gamma, beta, out, ag, agx);
}
static inline void cnnframe_relu_dots_d(const double *g, const double *x, ptrdiff_t n, double mean, double inv,
                                        double gamma, double beta, double *out, cnnframe_acc *ag, cnnframe_acc *agx) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_relu_dots_d, g, x, n, mean, inv, gamma, beta, out, ag, agx);
}

/* ---- whole channels: N runs of L elements, stride apart ----------------------------------------------

   A float32 sum is a chain of dependent additions per lane, so the loops above wait on the adder's
   latency.  When every flush of the float lanes (lanes.h) falls at the end of a 256-element segment
   -- L a multiple of 8 that divides 256 or that 256 divides, and nothing pending -- the segments
   are independent sums from +0, each added to the double lanes in turn: the AVX2 forms then run
   four segments at once (four chains) and add them to the double lanes in order, which is exactly
   what the run-by-run loops do.  They return how many of the channel's elements (in order) they
   took; the run-by-run loops take the rest. */
static inline int cnnframe_segmented(ptrdiff_t L, const cnnframe_acc *a) {
    return L % CNNFRAME_LANES == 0 && (L % CNNFRAME_BLOCK == 0 || CNNFRAME_BLOCK % L == 0) && a->pending == 0;
}

/* The rest of a channel from element e (in run order), run by run: BODY sees off and len. */
#define CNNFRAME_REST(e, N, stride, L, BODY)                                                      \
    for (ptrdiff_t n = (e) / (L), o = (e) % (L); n < (N); ++n, o = 0) {                           \
        const ptrdiff_t off = n * (stride) + o, len = (L) - o;                                    \
        BODY                                                                                      \
    }

#ifdef CNNFRAME_HAVE_AVX2
/* Segments s..s+3 of a channel: pieces of P = min(L, 256) elements, R = 256 / P to a segment.
   BODY runs for k = 0..3 at each group of 8 (element offset off), in each segment's order. */
#define CNNFRAME_FOUR_SEGMENTS(s, BODY)                                                            \
    for (ptrdiff_t t = 0; t < R; ++t) {                                                            \
        ptrdiff_t at[4];                                                                           \
        for (int k = 0; k < 4; ++k) {                                                              \
            const ptrdiff_t e = (((s) + k) * R + t) * P;                                           \
            at[k] = e / L * stride + e % L;                                                        \
        }                                                                                          \
        for (ptrdiff_t j = 0; j < P; j += 8)                                                       \
            for (int k = 0; k < 4; ++k) {                                                          \
                const ptrdiff_t off = at[k] + j;                                                   \
                BODY                                                                               \
            }                                                                                      \
    }
#define CNNFRAME_SEGMENT_SETUP(acc)                                                                \
    if (!cnnframe_segmented(L, acc)) return 0;                                                     \
    const ptrdiff_t P = L < CNNFRAME_BLOCK ? L : CNNFRAME_BLOCK, R = CNNFRAME_BLOCK / P;           \
    const ptrdiff_t nseg = N * (L / P) / R;                                                        \
    ptrdiff_t s = 0;

/* d[l] += (double)v[l]: one segment's float lanes flushed. */
CNNFRAME_AVX2_FN void cnnframe_flush8(cnnframe_acc *a, __m256 v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    for (int l = 0; l < CNNFRAME_LANES; ++l) a->d[l] += (double)f[l];
}

CNNFRAME_AVX2_FN ptrdiff_t cnnframe_seg_sum_f(const float *x, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L,
                                             cnnframe_acc *a) {
    CNNFRAME_SEGMENT_SETUP(a)
    for (; s + 4 <= nseg; s += 4) {
        __m256 v[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        CNNFRAME_FOUR_SEGMENTS(s, v[k] = _mm256_add_ps(v[k], _mm256_loadu_ps(x + off));)
        for (int k = 0; k < 4; ++k) cnnframe_flush8(a, v[k]);
    }
    return s * CNNFRAME_BLOCK;
}

CNNFRAME_AVX2_FN ptrdiff_t cnnframe_seg_sqdev_f(const float *x, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L,
                                               float c, cnnframe_acc *a) {
    const __m256 vc = _mm256_set1_ps(c);
    CNNFRAME_SEGMENT_SETUP(a)
    for (; s + 4 <= nseg; s += 4) {
        __m256 v[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        CNNFRAME_FOUR_SEGMENTS(s, {
            const __m256 u = _mm256_sub_ps(_mm256_loadu_ps(x + off), vc);
            v[k] = _mm256_add_ps(v[k], _mm256_mul_ps(u, u));
        })
        for (int k = 0; k < 4; ++k) cnnframe_flush8(a, v[k]);
    }
    return s * CNNFRAME_BLOCK;
}

/* ag += G, agx += G·x̂; with relu, G = g·[γ·x̂ + β > 0] is also written to out (as cnnframe_relu_dots_f). */
CNNFRAME_AVX2_FN ptrdiff_t cnnframe_seg_dots_f(const float *g, const float *x, ptrdiff_t N, ptrdiff_t stride,
                                              ptrdiff_t L, float mean, float inv, int relu, float gamma, float beta,
                                              float *out, cnnframe_acc *ag, cnnframe_acc *agx) {
    const __m256 vm = _mm256_set1_ps(mean), vi = _mm256_set1_ps(inv), vg = _mm256_set1_ps(gamma);
    const __m256 vb = _mm256_set1_ps(beta), zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    if (!cnnframe_segmented(L, agx)) return 0;
    CNNFRAME_SEGMENT_SETUP(ag)
    for (; s + 4 <= nseg; s += 4) {
        __m256 va[4] = {zero, zero, zero, zero}, vx[4] = {zero, zero, zero, zero};
        if (relu) {
            CNNFRAME_FOUR_SEGMENTS(s, {
                const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + off), vm), vi);
                const __m256 y = _mm256_add_ps(_mm256_mul_ps(h, vg), vb);
                const __m256 ge = _mm256_mul_ps(_mm256_loadu_ps(g + off),
                                                _mm256_and_ps(_mm256_cmp_ps(y, zero, _CMP_GT_OQ), one));
                _mm256_storeu_ps(out + off, ge);
                va[k] = _mm256_add_ps(va[k], ge);
                vx[k] = _mm256_add_ps(vx[k], _mm256_mul_ps(ge, h));
            })
        } else {
            CNNFRAME_FOUR_SEGMENTS(s, {
                const __m256 gv = _mm256_loadu_ps(g + off);
                const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + off), vm), vi);
                va[k] = _mm256_add_ps(va[k], gv);
                vx[k] = _mm256_add_ps(vx[k], _mm256_mul_ps(gv, h));
            })
        }
        for (int k = 0; k < 4; ++k) {
            cnnframe_flush8(ag, va[k]);
            cnnframe_flush8(agx, vx[k]);
        }
    }
    return s * CNNFRAME_BLOCK;
}
#define CNNFRAME_SEG(CALL) (cnnframe_avx2 ? CALL : 0)
#else
#define CNNFRAME_SEG(CALL) 0
#endif

/* The channel-level entry points (norm.pyx): segments four at a time where they apply, then run by run. */
static inline void cnnframe_channel_sum_f(const float *x, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L,
                                          cnnframe_acc *a) {
    const ptrdiff_t e = CNNFRAME_SEG(cnnframe_seg_sum_f(x, N, stride, L, a));
    CNNFRAME_REST(e, N, stride, L, cnnframe_lanes_sum_f(x + off, len, a);)
}
static inline void cnnframe_channel_sqdev_f(const float *x, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L, float c,
                                            cnnframe_acc *a) {
    const ptrdiff_t e = CNNFRAME_SEG(cnnframe_seg_sqdev_f(x, N, stride, L, c, a));
    CNNFRAME_REST(e, N, stride, L, cnnframe_lanes_sqdev_f(x + off, len, c, a);)
}
/* ag += G, agx += G·x̂ over a channel; with relu, G = g·[γ·x̂ + β > 0] is written to out (g and out
   share the stride and may be the same array). */
static inline void cnnframe_channel_dots_f(const float *g, const float *x, ptrdiff_t N, ptrdiff_t stride,
                                           ptrdiff_t L, float mean, float inv, int relu, float gamma, float beta,
                                           float *out, cnnframe_acc *ag, cnnframe_acc *agx) {
    const ptrdiff_t e = CNNFRAME_SEG(cnnframe_seg_dots_f(g, x, N, stride, L, mean, inv, relu, gamma, beta, out,
                                                         ag, agx));
    CNNFRAME_REST(e, N, stride, L, {
        if (relu) cnnframe_relu_dots_f(g + off, x + off, len, mean, inv, gamma, beta, out + off, ag, agx);
        else cnnframe_lanes_dots_f(g + off, x + off, len, mean, inv, ag, agx);
    })
}
static inline void cnnframe_channel_sum_d(const double *x, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L,
                                          cnnframe_acc *a) {
    CNNFRAME_REST(0, N, stride, L, cnnframe_lanes_sum_d(x + off, len, a);)
}
static inline void cnnframe_channel_sqdev_d(const double *x, ptrdiff_t N, ptrdiff_t stride, ptrdiff_t L, double c,
                                            cnnframe_acc *a) {
    CNNFRAME_REST(0, N, stride, L, cnnframe_lanes_sqdev_d(x + off, len, c, a);)
}
static inline void cnnframe_channel_dots_d(const double *g, const double *x, ptrdiff_t N, ptrdiff_t stride,
                                           ptrdiff_t L, double mean, double inv, int relu, double gamma, double beta,
                                           double *out, cnnframe_acc *ag, cnnframe_acc *agx) {
    CNNFRAME_REST(0, N, stride, L, {
        if (relu) cnnframe_relu_dots_d(g + off, x + off, len, mean, inv, gamma, beta, out + off, ag, agx);
        else cnnframe_lanes_dots_d(g + off, x + off, len, mean, inv, ag, agx);
    })
}

#endif
