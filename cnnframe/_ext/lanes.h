/* Fixed-order reductions shared by the kernels (norm.pyx, pool.pyx, optim.pyx).

   A sum over a run of n elements uses CNNFRAME_LANES = 8 lanes: element i goes to lane i % 8, and
   cnnframe_lanes_total() adds the 8 double lanes in one fixed tree.  float32 runs are summed in
   blocks of CNNFRAME_BLOCK elements on 8 float lanes, and each block's lanes are then added to the
   double lanes: a float lane adds at most 32 values, so the result keeps float32 precision on runs
   of any length.  float64 runs go straight to the double lanes.

   The order of every addition depends only on the run lengths -- never on the thread count -- and
   the SSE2 code (every x86-64 CPU) does exactly the operations of the plain C code that other
   CPUs run, lane by lane, so both give the same bits.  Each function adds into acc, so a reduction
   over several runs (one per image, say) continues where the last one stopped. */
#ifndef CNNFRAME_LANES_H
#define CNNFRAME_LANES_H

#include <stddef.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#define CNNFRAME_SSE2 1
#endif

#define CNNFRAME_LANES 8
#define CNNFRAME_BLOCK 256

static inline void cnnframe_lanes_zero(double *acc) {
    for (int l = 0; l < CNNFRAME_LANES; ++l) acc[l] = 0.0;
}

static inline double cnnframe_lanes_total(const double *acc) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static inline ptrdiff_t cnnframe_block_end(ptrdiff_t i, ptrdiff_t n) {
    return n - i > CNNFRAME_BLOCK ? i + CNNFRAME_BLOCK : n;
}

/* Add a block's float lanes to the double lanes. */
static inline void cnnframe_lanes_flush(const float *a, double *acc) {
    for (int l = 0; l < CNNFRAME_LANES; ++l) acc[l] += (double)a[l];
}

/* ---- acc[lane] += x ---------------------------------------------------------------------- */
static inline void cnnframe_sum_f(const float *x, ptrdiff_t n, double *acc) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t end = cnnframe_block_end(i, n);
        float a[CNNFRAME_LANES];
#ifdef CNNFRAME_SSE2
        __m128 s0 = _mm_setzero_ps(), s1 = _mm_setzero_ps();
        for (; i + 8 <= end; i += 8) {
            s0 = _mm_add_ps(s0, _mm_loadu_ps(x + i));
            s1 = _mm_add_ps(s1, _mm_loadu_ps(x + i + 4));
        }
        _mm_storeu_ps(a, s0);
        _mm_storeu_ps(a + 4, s1);
#else
        for (int l = 0; l < CNNFRAME_LANES; ++l) a[l] = 0.0f;
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; ++l) a[l] += x[i + l];
#endif
        for (int l = 0; i < end; ++i, ++l) a[l] += x[i];
        cnnframe_lanes_flush(a, acc);
    }
}

static inline void cnnframe_sum_d(const double *x, ptrdiff_t n, double *acc) {
    ptrdiff_t i = 0;
#ifdef CNNFRAME_SSE2
    __m128d s0 = _mm_loadu_pd(acc), s1 = _mm_loadu_pd(acc + 2);
    __m128d s2 = _mm_loadu_pd(acc + 4), s3 = _mm_loadu_pd(acc + 6);
    for (; i + 8 <= n; i += 8) {
        s0 = _mm_add_pd(s0, _mm_loadu_pd(x + i));
        s1 = _mm_add_pd(s1, _mm_loadu_pd(x + i + 2));
        s2 = _mm_add_pd(s2, _mm_loadu_pd(x + i + 4));
        s3 = _mm_add_pd(s3, _mm_loadu_pd(x + i + 6));
    }
    _mm_storeu_pd(acc, s0);
    _mm_storeu_pd(acc + 2, s1);
    _mm_storeu_pd(acc + 4, s2);
    _mm_storeu_pd(acc + 6, s3);
#else
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) acc[l] += x[i + l];
#endif
    for (int l = 0; i < n; ++i, ++l) acc[l] += x[i];
}

/* ---- acc[lane] += (x − c)², with x − c formed in the data type ------------------------------ */
static inline void cnnframe_sqdev_f(const float *x, ptrdiff_t n, float c, double *acc) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t end = cnnframe_block_end(i, n);
        float a[CNNFRAME_LANES];
#ifdef CNNFRAME_SSE2
        const __m128 vc = _mm_set1_ps(c);
        __m128 s0 = _mm_setzero_ps(), s1 = _mm_setzero_ps();
        for (; i + 8 <= end; i += 8) {
            __m128 d0 = _mm_sub_ps(_mm_loadu_ps(x + i), vc), d1 = _mm_sub_ps(_mm_loadu_ps(x + i + 4), vc);
            s0 = _mm_add_ps(s0, _mm_mul_ps(d0, d0));
            s1 = _mm_add_ps(s1, _mm_mul_ps(d1, d1));
        }
        _mm_storeu_ps(a, s0);
        _mm_storeu_ps(a + 4, s1);
#else
        for (int l = 0; l < CNNFRAME_LANES; ++l) a[l] = 0.0f;
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; ++l) {
                float d = x[i + l] - c;
                a[l] += d * d;
            }
#endif
        for (int l = 0; i < end; ++i, ++l) {
            float d = x[i] - c;
            a[l] += d * d;
        }
        cnnframe_lanes_flush(a, acc);
    }
}

static inline void cnnframe_sqdev_d(const double *x, ptrdiff_t n, double c, double *acc) {
    ptrdiff_t i = 0;
#ifdef CNNFRAME_SSE2
    const __m128d vc = _mm_set1_pd(c);
    __m128d s[4];
    for (int k = 0; k < 4; ++k) s[k] = _mm_loadu_pd(acc + 2 * k);
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 4; ++k) {
            __m128d d = _mm_sub_pd(_mm_loadu_pd(x + i + 2 * k), vc);
            s[k] = _mm_add_pd(s[k], _mm_mul_pd(d, d));
        }
    for (int k = 0; k < 4; ++k) _mm_storeu_pd(acc + 2 * k, s[k]);
#else
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) {
            double d = x[i + l] - c;
            acc[l] += d * d;
        }
#endif
    for (int l = 0; i < n; ++i, ++l) {
        double d = x[i] - c;
        acc[l] += d * d;
    }
}

/* ---- ag[lane] += g,  agx[lane] += g·x̂  with x̂ = (x − mean)·inv formed in the data type -------- */
static inline void cnnframe_dots_f(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
                                   double *ag, double *agx) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t end = cnnframe_block_end(i, n);
        float a[CNNFRAME_LANES], b[CNNFRAME_LANES];
#ifdef CNNFRAME_SSE2
        const __m128 vm = _mm_set1_ps(mean), vi = _mm_set1_ps(inv);
        __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps(), b0 = _mm_setzero_ps(), b1 = _mm_setzero_ps();
        for (; i + 8 <= end; i += 8) {
            __m128 g0 = _mm_loadu_ps(g + i), g1 = _mm_loadu_ps(g + i + 4);
            __m128 h0 = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i), vm), vi);
            __m128 h1 = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 4), vm), vi);
            a0 = _mm_add_ps(a0, g0);
            a1 = _mm_add_ps(a1, g1);
            b0 = _mm_add_ps(b0, _mm_mul_ps(g0, h0));
            b1 = _mm_add_ps(b1, _mm_mul_ps(g1, h1));
        }
        _mm_storeu_ps(a, a0);
        _mm_storeu_ps(a + 4, a1);
        _mm_storeu_ps(b, b0);
        _mm_storeu_ps(b + 4, b1);
#else
        for (int l = 0; l < CNNFRAME_LANES; ++l) a[l] = b[l] = 0.0f;
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; ++l) {
                float xh = (x[i + l] - mean) * inv;
                a[l] += g[i + l];
                b[l] += g[i + l] * xh;
            }
#endif
        for (int l = 0; i < end; ++i, ++l) {
            float xh = (x[i] - mean) * inv;
            a[l] += g[i];
            b[l] += g[i] * xh;
        }
        cnnframe_lanes_flush(a, ag);
        cnnframe_lanes_flush(b, agx);
    }
}

static inline void cnnframe_dots_d(const double *g, const double *x, ptrdiff_t n, double mean, double inv,
                                   double *ag, double *agx) {
    ptrdiff_t i = 0;
#ifdef CNNFRAME_SSE2
    const __m128d vm = _mm_set1_pd(mean), vi = _mm_set1_pd(inv);
    __m128d a[4], b[4];
    for (int k = 0; k < 4; ++k) {
        a[k] = _mm_loadu_pd(ag + 2 * k);
        b[k] = _mm_loadu_pd(agx + 2 * k);
    }
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 4; ++k) {
            __m128d gv = _mm_loadu_pd(g + i + 2 * k);
            __m128d h = _mm_mul_pd(_mm_sub_pd(_mm_loadu_pd(x + i + 2 * k), vm), vi);
            a[k] = _mm_add_pd(a[k], gv);
            b[k] = _mm_add_pd(b[k], _mm_mul_pd(gv, h));
        }
    for (int k = 0; k < 4; ++k) {
        _mm_storeu_pd(ag + 2 * k, a[k]);
        _mm_storeu_pd(agx + 2 * k, b[k]);
    }
#else
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) {
            double xh = (x[i + l] - mean) * inv;
            ag[l] += g[i + l];
            agx[l] += g[i + l] * xh;
        }
#endif
    for (int l = 0; i < n; ++i, ++l) {
        double xh = (x[i] - mean) * inv;
        ag[l] += g[i];
        agx[l] += g[i] * xh;
    }
}

#endif
