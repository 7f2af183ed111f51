# cython: language_level=3
"""Max, average and global average pooling kernels, parallel over the N·C planes (planes never
share memory, and each plane's sums run in a fixed order, so no result depends on the thread count).

Windows start at i·s - p; padding is -inf for max and 0 for average.  Callers
(``cnnframe.ops.pool``) validate shapes and keep padding <= kernel/2, so every window holds at
least one real input.  The per-plane C loops are in pool.h.  Backward kernels write every element
of dx (zeros included), so callers allocate it uninitialised: each plane is then cleared by the
thread that fills it, while it is in that core's cache.
"""
from cython.parallel cimport prange
from libc.string cimport memset

from cnnframe._ext.lanes cimport cnnframe_acc, cnnframe_acc_total, cnnframe_acc_zero, cnnframe_lanes_sum_d, cnnframe_lanes_sum_f

ctypedef fused floating:
    float
    double


def max_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, int[:, :, :, ::1] arg,
                int kh, int kw, int sh, int sw, int ph, int pw, int nthreads):
    """y = max over each window; arg = flat index r·W + q (int32) of the first maximum (NaN wins, as in PyTorch)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef bint two_by_two = kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0
    cdef const floating* xp
    cdef floating* yp
    cdef int* ap
    if nplanes == 0:
        return
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        xp = &x[0, 0, 0, 0] + plane * H * W
        yp = &y[0, 0, 0, 0] + plane * Ho * Wo
        ap = &arg[0, 0, 0, 0] + plane * Ho * Wo
        if floating is float:
            if two_by_two:
                cnnframe_max2x2_f(xp, W, Ho, Wo, yp, ap)
            else:
                cnnframe_max_plane_f(xp, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, yp, ap)
        else:
            if two_by_two:
                cnnframe_max2x2_d(xp, W, Ho, Wo, yp, ap)
            else:
                cnnframe_max_plane_d(xp, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, yp, ap)


def max_backward(const floating[:, :, :, ::1] gy, const int[:, :, :, ::1] arg, floating[:, :, :, ::1] dx,
                 int nthreads):
    """dx = 0, then dx[n, c, arg] += gy.  Returns how many indices fell outside their plane (skipped)."""
    cdef Py_ssize_t hw = <Py_ssize_t>dx.shape[2] * dx.shape[3], howo = <Py_ssize_t>gy.shape[2] * gy.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>gy.shape[0] * gy.shape[1]
    cdef long long bad = 0
    if nplanes == 0:
        return 0
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        if floating is float:
            bad += cnnframe_max_grad_plane_f(&gy[0, 0, 0, 0] + plane * howo, &arg[0, 0, 0, 0] + plane * howo, hw,
                                             howo, &dx[0, 0, 0, 0] + plane * hw)
        else:
            bad += cnnframe_max_grad_plane_d(&gy[0, 0, 0, 0] + plane * howo, &arg[0, 0, 0, 0] + plane * howo, hw,
                                             howo, &dx[0, 0, 0, 0] + plane * hw)
    return bad


def avg_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                int kh, int kw, int sh, int sw, int ph, int pw, int nthreads):
    """y = (1 / (kh·kw)) · sum over each window (padded zeros count in the divisor)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef int i, j, r, q, r0, r1, q0, q1
    cdef floating acc
    cdef floating scale = 1.0 / (kh * kw)
    cdef const floating* xp
    cdef floating* yp
    if nplanes == 0:
        return
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        xp = &x[0, 0, 0, 0] + plane * H * W
        yp = &y[0, 0, 0, 0] + plane * Ho * Wo
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
                yp[i * Wo + j] = acc * scale


def avg_backward(const floating[:, :, :, ::1] gy, floating[:, :, :, ::1] dx,
                 int kh, int kw, int sh, int sw, int ph, int pw, int nthreads):
    """dx = 0, then dx[window] += gy / (kh·kw) for every window."""
    cdef int N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef int Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>N * C
    cdef int i, j, r, q, r0, r1, q0, q1
    cdef floating g
    cdef floating scale = 1.0 / (kh * kw)
    cdef const floating* gp
    cdef floating* dp
    if nplanes == 0:
        return
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        gp = &gy[0, 0, 0, 0] + plane * Ho * Wo
        dp = &dx[0, 0, 0, 0] + plane * H * W
        memset(dp, 0, H * W * sizeof(floating))
        for i in range(Ho):
            r0 = max(i * sh - ph, 0)
            r1 = min(i * sh - ph + kh, H)
            for j in range(Wo):
                q0 = max(j * sw - pw, 0)
                q1 = min(j * sw - pw + kw, W)
                g = gp[i * Wo + j] * scale
                for r in range(r0, r1):
                    for q in range(q0, q1):
                        dp[r * W + q] += g


cdef floating plane_mean(const floating* xp, Py_ssize_t hw) noexcept nogil:
    cdef cnnframe_acc acc
    cnnframe_acc_zero(&acc)
    if floating is float:
        cnnframe_lanes_sum_f(xp, hw, &acc)
    else:
        cnnframe_lanes_sum_d(xp, hw, &acc)
    return <floating>(cnnframe_acc_total(&acc) / hw)


def global_avg_forward(const floating[:, :, ::1] x, floating[:, ::1] y, int nthreads):
    """y[n, c] = (1/L) Σ_l x[n, c, l] for x of shape (N, C, L = H·W)."""
    cdef Py_ssize_t C = x.shape[1], L = x.shape[2]
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>x.shape[0] * C
    if nplanes == 0:
        return
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        (&y[0, 0])[plane] = plane_mean(&x[0, 0, 0] + plane * L, L)


def global_avg_backward(const floating[:, ::1] g, floating[:, :, ::1] dx, int nthreads):
    """dx[n, c, l] = g[n, c] / L."""
    cdef Py_ssize_t C = dx.shape[1], L = dx.shape[2], l
    cdef Py_ssize_t plane, nplanes = <Py_ssize_t>dx.shape[0] * C
    cdef floating v
    cdef floating* dp
    if nplanes == 0:
        return
    for plane in prange(nplanes, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        v = (&g[0, 0])[plane] / <floating>L
        dp = &dx[0, 0, 0] + plane * L
        for l in range(L):
            dp[l] = v
