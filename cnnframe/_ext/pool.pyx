# cython: language_level=3
"""Max and average pooling kernels, parallel over the N·C planes (planes never share memory).

Windows start at i·s - p; padding is -inf for max and 0 for average.  Callers
(``cnnframe.ops.pool``) validate shapes and keep padding <= kernel/2, so every window holds at
least one real input.
"""
cimport cython
from cython.parallel cimport prange

ctypedef fused floating:
    float
    double


cdef inline bint takes(floating v, floating best) noexcept nogil:
    """Strict '>' keeps the first maximum on ties; a NaN is taken once (as in PyTorch).
    Bitwise & and | keep it free of branches."""
    return (v > best) | ((v != v) & (best == best))


cdef extern from *:
    """
    /* The common 2x2 window, stride 2, no padding: four loads per output, no bounds, and selects
       instead of branches (a branch on the comparison mispredicts half the time on real data).
       'take' is the same rule as takes() below. */
    #define CNNFRAME_TAKE(v, best) (((v) > (best)) | (((v) != (v)) & ((best) == (best))))
    #define CNNFRAME_MAX2X2(NAME, T)                                                          \
    static void NAME(const T *xp, int W, int Ho, int Wo, T *yp, long long *ap) {              \
        for (int i = 0; i < Ho; ++i) {                                                        \
            for (int j = 0; j < Wo; ++j) {                                                    \
                long long idx = (long long)(2 * i) * W + 2 * j, bi = idx;                     \
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
    CNNFRAME_MAX2X2(cnnframe_max2x2_scalar_f, float)
    CNNFRAME_MAX2X2(cnnframe_max2x2_d, double)

    /* float32: four outputs at a time with SSE2 (every x86-64 CPU).  Shuffles split each input
       row into its even and odd columns; the same 'take' rule runs as compare masks. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline __m128 cnnframe_take4(__m128 v, __m128 best) {
        return _mm_or_ps(_mm_cmpgt_ps(v, best), _mm_and_ps(_mm_cmpunord_ps(v, v), _mm_cmpord_ps(best, best)));
    }
    static void cnnframe_max2x2_f(const float *xp, int W, int Ho, int Wo, float *yp, long long *ap) {
        const __m128i zero = _mm_setzero_si128(), lanes = _mm_set_epi32(6, 4, 2, 0);
        if ((long long)Ho * 2 * W >= 2147483647LL) {  /* int32 lane indices would overflow */
            cnnframe_max2x2_scalar_f(xp, W, Ho, Wo, yp, ap);
            return;
        }
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
                /* indices are non-negative: widen to int64 by interleaving with zeros */
                _mm_storeu_si128((__m128i *)(ap + i * Wo + j), _mm_unpacklo_epi32(bi, zero));
                _mm_storeu_si128((__m128i *)(ap + i * Wo + j + 2), _mm_unpackhi_epi32(bi, zero));
            }
            for (; j < Wo; ++j) {
                long long idx = (long long)(2 * i) * W + 2 * j, b_i = idx;
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
    #define cnnframe_max2x2_f cnnframe_max2x2_scalar_f
    #endif
    """
    void cnnframe_max2x2_f(const float* xp, int W, int Ho, int Wo, float* yp, long long* ap) noexcept nogil
    void cnnframe_max2x2_d(const double* xp, int W, int Ho, int Wo, double* yp, long long* ap) noexcept nogil


cdef inline void max_plane_2x2(floating* xp, int W, int Ho, int Wo, floating* yp, long long* ap) noexcept nogil:
    if floating is float:
        cnnframe_max2x2_f(xp, W, Ho, Wo, yp, ap)
    else:
        cnnframe_max2x2_d(xp, W, Ho, Wo, yp, ap)


cdef void max_plane(floating* xp, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                    int ph, int pw, floating* yp, long long* ap) noexcept nogil:
    cdef int i, j, r, q, r0, r1, q0, q1
    cdef long long best_idx
    cdef floating best, v
    for i in range(Ho):
        r0 = i * sh - ph
        r1 = r0 + kh
        if r0 < 0:
            r0 = 0
        if r1 > H:
            r1 = H
        for j in range(Wo):
            q0 = j * sw - pw
            q1 = q0 + kw
            if q0 < 0:
                q0 = 0
            if q1 > W:
                q1 = W
            best_idx = r0 * W + q0
            best = xp[best_idx]
            for r in range(r0, r1):
                for q in range(q0, q1):
                    v = xp[r * W + q]
                    if takes(v, best):
                        best = v
                        best_idx = r * W + q
            yp[i * Wo + j] = best
            ap[i * Wo + j] = best_idx


@cython.boundscheck(False)
@cython.wraparound(False)
def max_forward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, long long[:, :, :, ::1] arg,
                int kh, int kw, int sh, int sw, int ph, int pw, int nthreads):
    """y = max over each window; arg = flat index r·W + q of the first maximum (NaN wins, as in PyTorch)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef bint two_by_two = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    if nplanes == 0:
        return
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        if two_by_two:
            max_plane_2x2(&x[0, 0, 0, 0] + plane * H * W, W, Ho, Wo,
                          &y[0, 0, 0, 0] + plane * Ho * Wo, &arg[0, 0, 0, 0] + plane * Ho * Wo)
        else:
            max_plane(&x[0, 0, 0, 0] + plane * H * W, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw,
                      &y[0, 0, 0, 0] + plane * Ho * Wo, &arg[0, 0, 0, 0] + plane * Ho * Wo)


@cython.boundscheck(False)
@cython.wraparound(False)
def max_backward(floating[:, :, :, ::1] gy, long long[:, :, :, ::1] arg, floating[:, :, :, ::1] dx,
                 int nthreads):
    """dx[n, c, arg] += gy (dx starts zeroed)."""
    cdef int N = gy.shape[0], C = gy.shape[1], Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef int i, j, n, c
    cdef floating* dp
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        n = plane // C
        c = plane % C
        dp = &dx[n, c, 0, 0]
        for i in range(Ho):
            for j in range(Wo):
                dp[arg[n, c, i, j]] += gy[n, c, i, j]


@cython.boundscheck(False)
@cython.wraparound(False)
def avg_forward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                int kh, int kw, int sh, int sw, int ph, int pw, int nthreads):
    """y = (1 / (kh·kw)) · sum over each window (padded zeros count in the divisor)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef int i, j, r, q, r0, r1, q0, q1, n, c
    cdef floating acc
    cdef floating scale = 1.0 / (kh * kw)
    cdef floating* xp
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        n = plane // C
        c = plane % C
        xp = &x[n, c, 0, 0]
        for i in range(Ho):
            r0 = max(i * sh - ph, 0)
            r1 = min(i * sh - ph + kh, H)
            for j in range(Wo):
                q0 = max(j * sw - pw, 0)
                q1 = min(j * sw - pw + kw, W)
                acc = 0
                for r in range(r0, r1):
                    for q in range(q0, q1):
                        acc = acc + xp[r * W + q]
                y[n, c, i, j] = acc * scale


@cython.boundscheck(False)
@cython.wraparound(False)
def avg_backward(floating[:, :, :, ::1] gy, floating[:, :, :, ::1] dx,
                 int kh, int kw, int sh, int sw, int ph, int pw, int nthreads):
    """dx[window] += gy / (kh·kw) for every window (dx starts zeroed)."""
    cdef int N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef int i, j, r, q, r0, r1, q0, q1, n, c
    cdef floating g
    cdef floating scale = 1.0 / (kh * kw)
    cdef floating* dp
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        n = plane // C
        c = plane % C
        dp = &dx[n, c, 0, 0]
        for i in range(Ho):
            r0 = max(i * sh - ph, 0)
            r1 = min(i * sh - ph + kh, H)
            for j in range(Wo):
                q0 = max(j * sw - pw, 0)
                q1 = min(j * sw - pw + kw, W)
                g = gy[n, c, i, j] * scale
                for r in range(r0, r1):
                    for q in range(q0, q1):
                        dp[r * W + q] += g
