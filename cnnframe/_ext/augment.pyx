# cython: language_level=3
"""Data augmentation kernels: per-image shifts, parallel over images (each image alone, so nothing
depends on the thread count).  Callers (``cnnframe.ops.augment``) validate every argument.
"""
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

ctypedef fused floating:
    float
    double


cdef void shift_image(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t dy, Py_ssize_t dx,
                      floating* out) noexcept nogil:
    """out[c, i, j] = x[c, i − dy, j − dx], 0 where that falls outside the image."""
    cdef Py_ssize_t c, i, src
    # output columns j0 <= j < j1 read input columns j − dx
    cdef Py_ssize_t j0 = min(max(dx, 0), W)
    cdef Py_ssize_t j1 = max(min(W + dx, W), j0)
    cdef floating* row
    for c in range(C):
        for i in range(H):
            row = out + (c * H + i) * W
            src = i - dy
            if src < 0 or src >= H or j1 == j0:
                memset(row, 0, W * sizeof(floating))
                continue
            if j0 > 0:
                memset(row, 0, j0 * sizeof(floating))
            memcpy(row + j0, x + (c * H + src) * W + (j0 - dx), (j1 - j0) * sizeof(floating))
            if j1 < W:
                memset(row + j1, 0, (W - j1) * sizeof(floating))


def shift(const floating[:, :, :, ::1] x, const long long[::1] dy, const long long[::1] dx,
          floating[:, :, :, ::1] out, int nthreads):
    """out[n, c, i, j] = x[n, c, i − dy[n], j − dx[n]] (0 outside)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], n
    cdef Py_ssize_t img = C * H * W
    if img == 0:
        return
    for n in prange(N, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        shift_image(&x[0, 0, 0, 0] + n * img, C, H, W, dy[n], dx[n], &out[0, 0, 0, 0] + n * img)
