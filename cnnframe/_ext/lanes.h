/* Fixed-order reductions shared by the kernels (norm.pyx, pool.pyx, optim.pyx).

   A sum goes through a cnnframe_acc: CNNFRAME_LANES = 8 double lanes, and for float32 data 8 float
   lanes in front of them.  A reduction over several runs (one per image, say) feeds the runs one
   after the other.  Each run is taken in chunks of up to CNNFRAME_BLOCK elements from its start;
   element i of a chunk goes to lane i % 8.  float32 chunks add into the float lanes, which are
   added into the double lanes (at the end of a chunk) once some lane has taken 32 values: no float
   lane adds more than 39, so the result keeps float32 precision on reductions of any length,
   while short runs (an 8×8 image) do not pay for a flush each.  float64 chunks go straight to the
   double lanes.  cnnframe_acc_total() adds the lanes in one fixed tree.

   The order of every addition therefore depends only on the run lengths -- never on the thread
   count -- and the SSE2 code (every x86-64 CPU) and the AVX2 code below do exactly the operations of
   the plain C code that other CPUs run, lane by lane, so all give the same bits. */
#ifndef CNNFRAME_LANES_H
#define CNNFRAME_LANES_H

#include <stddef.h>

#include "cpu.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#define CNNFRAME_SSE2 1
#endif

#define CNNFRAME_LANES 8
#define CNNFRAME_BLOCK 256

/* AVX2 forms of the loops (one 256-bit register holds the 8 float lanes, two hold the 8 double
   lanes: the same operations lane by lane, so the same bits) are compiled with
   __attribute__((target("avx2"))) -- no "fma", so no a*b + c can become a fused multiply-add -- and
   run when cnnframe_avx2 is set: each module that wants them sets it from cnnframe_cpu_avx2()
   (cpu.h) at import (norm.pyx does), so the build needs no -march flag. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(CNNFRAME_NO_AVX2)
#define CNNFRAME_HAVE_AVX2 1
#include <immintrin.h>
#define CNNFRAME_AVX2_FN __attribute__((target("avx2"))) static
#endif

static int cnnframe_avx2 = 0;

typedef struct {
    double d[CNNFRAME_LANES];
    float f[CNNFRAME_LANES];
    ptrdiff_t pending; /* values in the fullest float lane */
} cnnframe_acc;

static inline void cnnframe_acc_zero(cnnframe_acc *a) {
    for (int l = 0; l < CNNFRAME_LANES; ++l) {
        a->d[l] = 0.0;
        a->f[l] = 0.0f;
    }
    a->pending = 0;
}

/* Add the float lanes to the double lanes. */
static inline void cnnframe_acc_flush(cnnframe_acc *a) {
    for (int l = 0; l < CNNFRAME_LANES; ++l) {
        a->d[l] += (double)a->f[l];
        a->f[l] = 0.0f;
    }
    a->pending = 0;
}

/* After a float32 chunk of n elements (lane 0 took ceil(n / 8) of them). */
static inline void cnnframe_acc_chunk(cnnframe_acc *a, ptrdiff_t n) {
    a->pending += (n + CNNFRAME_LANES - 1) / CNNFRAME_LANES;
    if (a->pending >= CNNFRAME_BLOCK / CNNFRAME_LANES) cnnframe_acc_flush(a);
}

static inline double cnnframe_acc_total(cnnframe_acc *a) {
    const double *d = a->d;
    cnnframe_acc_flush(a);
    return ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]));
}

static inline ptrdiff_t cnnframe_chunk_end(ptrdiff_t i, ptrdiff_t n) {
    return n - i > CNNFRAME_BLOCK ? i + CNNFRAME_BLOCK : n;
}

/* ---- a += x ------------------------------------------------------------------------------ */
static inline void cnnframe_lanes_sum_f_base(const float *x, ptrdiff_t n, cnnframe_acc *a) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        float *f = a->f;
#ifdef CNNFRAME_SSE2
        __m128 s0 = _mm_loadu_ps(f), s1 = _mm_loadu_ps(f + 4);
        for (; i + 8 <= end; i += 8) {
            s0 = _mm_add_ps(s0, _mm_loadu_ps(x + i));
            s1 = _mm_add_ps(s1, _mm_loadu_ps(x + i + 4));
        }
        _mm_storeu_ps(f, s0);
        _mm_storeu_ps(f + 4, s1);
#else
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; ++l) f[l] += x[i + l];
#endif
        for (int l = 0; i < end; ++i, ++l) f[l] += x[i];
        cnnframe_acc_chunk(a, end - start);
    }
}

static inline void cnnframe_lanes_sum_d_base(const double *x, ptrdiff_t n, cnnframe_acc *a) {
    double *d = a->d;
    ptrdiff_t i = 0;
#ifdef CNNFRAME_SSE2
    __m128d s[4];
    for (int k = 0; k < 4; ++k) s[k] = _mm_loadu_pd(d + 2 * k);
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 4; ++k) s[k] = _mm_add_pd(s[k], _mm_loadu_pd(x + i + 2 * k));
    for (int k = 0; k < 4; ++k) _mm_storeu_pd(d + 2 * k, s[k]);
#else
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) d[l] += x[i + l];
#endif
    for (int l = 0; i < n; ++i, ++l) d[l] += x[i];
}

/* ---- a += (x − c)², with x − c formed in the data type -------------------------------------- */
static inline void cnnframe_lanes_sqdev_f_base(const float *x, ptrdiff_t n, float c, cnnframe_acc *a) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        float *f = a->f;
#ifdef CNNFRAME_SSE2
        const __m128 vc = _mm_set1_ps(c);
        __m128 s0 = _mm_loadu_ps(f), s1 = _mm_loadu_ps(f + 4);
        for (; i + 8 <= end; i += 8) {
            __m128 d0 = _mm_sub_ps(_mm_loadu_ps(x + i), vc), d1 = _mm_sub_ps(_mm_loadu_ps(x + i + 4), vc);
            s0 = _mm_add_ps(s0, _mm_mul_ps(d0, d0));
            s1 = _mm_add_ps(s1, _mm_mul_ps(d1, d1));
        }
        _mm_storeu_ps(f, s0);
        _mm_storeu_ps(f + 4, s1);
#else
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; ++l) {
                float v = x[i + l] - c;
                f[l] += v * v;
            }
#endif
        for (int l = 0; i < end; ++i, ++l) {
            float v = x[i] - c;
            f[l] += v * v;
        }
        cnnframe_acc_chunk(a, end - start);
    }
}

static inline void cnnframe_lanes_sqdev_d_base(const double *x, ptrdiff_t n, double c, cnnframe_acc *a) {
    double *d = a->d;
    ptrdiff_t i = 0;
#ifdef CNNFRAME_SSE2
    const __m128d vc = _mm_set1_pd(c);
    __m128d s[4];
    for (int k = 0; k < 4; ++k) s[k] = _mm_loadu_pd(d + 2 * k);
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 4; ++k) {
            __m128d v = _mm_sub_pd(_mm_loadu_pd(x + i + 2 * k), vc);
            s[k] = _mm_add_pd(s[k], _mm_mul_pd(v, v));
        }
    for (int k = 0; k < 4; ++k) _mm_storeu_pd(d + 2 * k, s[k]);
#else
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) {
            double v = x[i + l] - c;
            d[l] += v * v;
        }
#endif
    for (int l = 0; i < n; ++i, ++l) {
        double v = x[i] - c;
        d[l] += v * v;
    }
}

/* ---- ag += g,  agx += g·x̂  with x̂ = (x − mean)·inv formed in the data type --------------------- */
static inline void cnnframe_lanes_dots_f_base(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
                                         cnnframe_acc *ag, cnnframe_acc *agx) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        float *fa = ag->f, *fb = agx->f;
#ifdef CNNFRAME_SSE2
        const __m128 vm = _mm_set1_ps(mean), vi = _mm_set1_ps(inv);
        __m128 a0 = _mm_loadu_ps(fa), a1 = _mm_loadu_ps(fa + 4), b0 = _mm_loadu_ps(fb), b1 = _mm_loadu_ps(fb + 4);
        for (; i + 8 <= end; i += 8) {
            __m128 g0 = _mm_loadu_ps(g + i), g1 = _mm_loadu_ps(g + i + 4);
            __m128 h0 = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i), vm), vi);
            __m128 h1 = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 4), vm), vi);
            a0 = _mm_add_ps(a0, g0);
            a1 = _mm_add_ps(a1, g1);
            b0 = _mm_add_ps(b0, _mm_mul_ps(g0, h0));
            b1 = _mm_add_ps(b1, _mm_mul_ps(g1, h1));
        }
        _mm_storeu_ps(fa, a0);
        _mm_storeu_ps(fa + 4, a1);
        _mm_storeu_ps(fb, b0);
        _mm_storeu_ps(fb + 4, b1);
#else
        for (; i + 8 <= end; i += 8)
            for (int l = 0; l < 8; ++l) {
                float h = (x[i + l] - mean) * inv;
                fa[l] += g[i + l];
                fb[l] += g[i + l] * h;
            }
#endif
        for (int l = 0; i < end; ++i, ++l) {
            float h = (x[i] - mean) * inv;
            fa[l] += g[i];
            fb[l] += g[i] * h;
        }
        cnnframe_acc_chunk(ag, end - start);
        cnnframe_acc_chunk(agx, end - start);
    }
}

static inline void cnnframe_lanes_dots_d_base(const double *g, const double *x, ptrdiff_t n, double mean, double inv,
                                         cnnframe_acc *ag, cnnframe_acc *agx) {
    double *da = ag->d, *db = agx->d;
    ptrdiff_t i = 0;
#ifdef CNNFRAME_SSE2
    const __m128d vm = _mm_set1_pd(mean), vi = _mm_set1_pd(inv);
    __m128d a[4], b[4];
    for (int k = 0; k < 4; ++k) {
        a[k] = _mm_loadu_pd(da + 2 * k);
        b[k] = _mm_loadu_pd(db + 2 * k);
    }
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 4; ++k) {
            __m128d gv = _mm_loadu_pd(g + i + 2 * k);
            __m128d h = _mm_mul_pd(_mm_sub_pd(_mm_loadu_pd(x + i + 2 * k), vm), vi);
            a[k] = _mm_add_pd(a[k], gv);
            b[k] = _mm_add_pd(b[k], _mm_mul_pd(gv, h));
        }
    for (int k = 0; k < 4; ++k) {
        _mm_storeu_pd(da + 2 * k, a[k]);
        _mm_storeu_pd(db + 2 * k, b[k]);
    }
#else
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l) {
            double h = (x[i + l] - mean) * inv;
            da[l] += g[i + l];
            db[l] += g[i + l] * h;
        }
#endif
    for (int l = 0; i < n; ++i, ++l) {
        double h = (x[i] - mean) * inv;
        da[l] += g[i];
        db[l] += g[i] * h;
    }
}

#ifdef CNNFRAME_HAVE_AVX2
/* ---- the AVX2 forms: lane l of a register is lane l of the accumulator ------------------------ */
CNNFRAME_AVX2_FN void cnnframe_lanes_sum_f_avx2(const float *x, ptrdiff_t n, cnnframe_acc *a) {
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        __m256 s = _mm256_loadu_ps(a->f);
        for (; i + 8 <= end; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(x + i));
        _mm256_storeu_ps(a->f, s);
        for (int l = 0; i < end; ++i, ++l) a->f[l] += x[i];
        cnnframe_acc_chunk(a, end - start);
    }
}

CNNFRAME_AVX2_FN void cnnframe_lanes_sum_d_avx2(const double *x, ptrdiff_t n, cnnframe_acc *a) {
    __m256d s0 = _mm256_loadu_pd(a->d), s1 = _mm256_loadu_pd(a->d + 4);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = _mm256_add_pd(s0, _mm256_loadu_pd(x + i));
        s1 = _mm256_add_pd(s1, _mm256_loadu_pd(x + i + 4));
    }
    _mm256_storeu_pd(a->d, s0);
    _mm256_storeu_pd(a->d + 4, s1);
    for (int l = 0; i < n; ++i, ++l) a->d[l] += x[i];
}

CNNFRAME_AVX2_FN void cnnframe_lanes_sqdev_f_avx2(const float *x, ptrdiff_t n, float c, cnnframe_acc *a) {
    const __m256 vc = _mm256_set1_ps(c);
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        __m256 s = _mm256_loadu_ps(a->f);
        for (; i + 8 <= end; i += 8) {
            __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vc);
            s = _mm256_add_ps(s, _mm256_mul_ps(v, v));
        }
        _mm256_storeu_ps(a->f, s);
        for (int l = 0; i < end; ++i, ++l) {
            float v = x[i] - c;
            a->f[l] += v * v;
        }
        cnnframe_acc_chunk(a, end - start);
    }
}

CNNFRAME_AVX2_FN void cnnframe_lanes_sqdev_d_avx2(const double *x, ptrdiff_t n, double c, cnnframe_acc *a) {
    const __m256d vc = _mm256_set1_pd(c);
    __m256d s0 = _mm256_loadu_pd(a->d), s1 = _mm256_loadu_pd(a->d + 4);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d v0 = _mm256_sub_pd(_mm256_loadu_pd(x + i), vc), v1 = _mm256_sub_pd(_mm256_loadu_pd(x + i + 4), vc);
        s0 = _mm256_add_pd(s0, _mm256_mul_pd(v0, v0));
        s1 = _mm256_add_pd(s1, _mm256_mul_pd(v1, v1));
    }
    _mm256_storeu_pd(a->d, s0);
    _mm256_storeu_pd(a->d + 4, s1);
    for (int l = 0; i < n; ++i, ++l) {
        double v = x[i] - c;
        a->d[l] += v * v;
    }
}

CNNFRAME_AVX2_FN void cnnframe_lanes_dots_f_avx2(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
                                                 cnnframe_acc *ag, cnnframe_acc *agx) {
    const __m256 vm = _mm256_set1_ps(mean), vi = _mm256_set1_ps(inv);
    for (ptrdiff_t i = 0; i < n;) {
        ptrdiff_t start = i, end = cnnframe_chunk_end(i, n);
        __m256 sa = _mm256_loadu_ps(ag->f), sb = _mm256_loadu_ps(agx->f);
        for (; i + 8 <= end; i += 8) {
            __m256 gv = _mm256_loadu_ps(g + i), h = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vi);
            sa = _mm256_add_ps(sa, gv);
            sb = _mm256_add_ps(sb, _mm256_mul_ps(gv, h));
        }
        _mm256_storeu_ps(ag->f, sa);
        _mm256_storeu_ps(agx->f, sb);
        for (int l = 0; i < end; ++i, ++l) {
            float h = (x[i] - mean) * inv;
            ag->f[l] += g[i];
            agx->f[l] += g[i] * h;
        }
        cnnframe_acc_chunk(ag, end - start);
        cnnframe_acc_chunk(agx, end - start);
    }
}

CNNFRAME_AVX2_FN void cnnframe_lanes_dots_d_avx2(const double *g, const double *x, ptrdiff_t n, double mean,
                                                 double inv, cnnframe_acc *ag, cnnframe_acc *agx) {
    const __m256d vm = _mm256_set1_pd(mean), vi = _mm256_set1_pd(inv);
    __m256d sa[2] = {_mm256_loadu_pd(ag->d), _mm256_loadu_pd(ag->d + 4)};
    __m256d sb[2] = {_mm256_loadu_pd(agx->d), _mm256_loadu_pd(agx->d + 4)};
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 2; ++k) {
            __m256d gv = _mm256_loadu_pd(g + i + 4 * k);
            __m256d h = _mm256_mul_pd(_mm256_sub_pd(_mm256_loadu_pd(x + i + 4 * k), vm), vi);
            sa[k] = _mm256_add_pd(sa[k], gv);
            sb[k] = _mm256_add_pd(sb[k], _mm256_mul_pd(gv, h));
        }
    for (int k = 0; k < 2; ++k) {
        _mm256_storeu_pd(ag->d + 4 * k, sa[k]);
        _mm256_storeu_pd(agx->d + 4 * k, sb[k]);
    }
    for (int l = 0; i < n; ++i, ++l) {
        double h = (x[i] - mean) * inv;
        ag->d[l] += g[i];
        agx->d[l] += g[i] * h;
    }
}
#define CNNFRAME_AVX2_OR_BASE(NAME, ...)                     \
    do {                                                     \
        if (cnnframe_avx2) NAME##_avx2(__VA_ARGS__);         \
        else NAME##_base(__VA_ARGS__);                       \
    } while (0)
#else
#define CNNFRAME_AVX2_OR_BASE(NAME, ...) NAME##_base(__VA_ARGS__)
#endif

/* The entry points: the AVX2 form when cnnframe_avx2 is set, else SSE2 / plain C. */
static inline void cnnframe_lanes_sum_f(const float *x, ptrdiff_t n, cnnframe_acc *a) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_lanes_sum_f, x, n, a);
}
static inline void cnnframe_lanes_sum_d(const double *x, ptrdiff_t n, cnnframe_acc *a) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_lanes_sum_d, x, n, a);
}
static inline void cnnframe_lanes_sqdev_f(const float *x, ptrdiff_t n, float c, cnnframe_acc *a) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_lanes_sqdev_f, x, n, c, a);
}
static inline void cnnframe_lanes_sqdev_d(const double *x, ptrdiff_t n, double c, cnnframe_acc *a) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_lanes_sqdev_d, x, n, c, a);
}
static inline void cnnframe_lanes_dots_f(const float *g, const float *x, ptrdiff_t n, float mean, float inv,
                                         cnnframe_acc *ag, cnnframe_acc *agx) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_lanes_dots_f, g, x, n, mean, inv, ag, agx);
}
static inline void cnnframe_lanes_dots_d(const double *g, const double *x, ptrdiff_t n, double mean, double inv,
                                         cnnframe_acc *ag, cnnframe_acc *agx) {
    CNNFRAME_AVX2_OR_BASE(cnnframe_lanes_dots_d, g, x, n, mean, inv, ag, agx);
}

#endif
