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


@cython.boundscheck(False)
@cython.wraparound(False)
def max_forward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, long long[:, :, :, ::1] arg,
                int kh, int kw, int sh, int sw, int ph, int pw, int nthreads):
    """y = max over each window; arg = flat index r·W + q of the first maximum (NaN wins, as in PyTorch)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef int i, j, r, q, r0, r1, q0, q1, n, c
    cdef long long best_idx
    cdef floating best, v
    cdef floating* xp
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        n = plane // C
        c = plane % C
        xp = &x[n, c, 0, 0]
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
                        # Strict '>' keeps the first maximum on ties; a NaN is taken once.
                        if v > best or (v != v and best == best):
                            best = v
                            best_idx = r * W + q
                y[n, c, i, j] = best
                arg[n, c, i, j] = best_idx


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
