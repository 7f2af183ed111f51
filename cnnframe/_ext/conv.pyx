# cython: language_level=3
"""2-D convolution kernels: im2col + GEMM over pixel rows, parallel with OpenMP.

Equation numbers refer to docs/math.md.  Each call first copies the input to a zero-padded
channels-last image ``Xh[n, r, q, c] = Xp[n, c, r, q]`` so that one im2col row (one output pixel's
receptive field) is made of a few contiguous copies.  With K = kh·kw·C, the im2col matrix has one
row per output pixel (n, i, j):

    col[(n, i, j), (m·kw + l)·C + c] = Xp[n, c, i·sh + m·dh, j·sw + l·dw]

and the weights are reordered the same way, ``Wr[f, (m·kw + l)·C + c] = W[f, c, m, l]``.  Then

    forward (1):  Y[n, f, i, j] = b[f] + Σ_k col[(n, i, j), k] · Wr[f, k]      out = col · Wrᵀ
    weights (2):  dWr[f, k]     = Σ_(n,i,j) G[n, f, i, j] · col[(n, i, j), k]   dWr = G · col
    bias (3):     db[f]         = Σ_(n,i,j) G[n, f, i, j]
    input (4):    dcol = Gᵀ · Wr, and col2im scatter-adds each dcol entry back onto the input
                  position its col entry was read from.

The col2im form of (4) adds exactly the products of the full convolution of G with the 180°-rotated
kernel, minus the products with the zeros that (4) inserts between strided outputs;
``cnnframe.ops.conv2d_input_grad_full`` computes (4) literally and the tests check both agree.

Parallel plan: the N·Ho·Wo pixel rows are cut into one contiguous span per thread; each thread
walks its span in chunks sized to stay in L2 (im2col of a chunk, then one GEMM).  Backward keeps
each image within one thread when there are at least as many images as threads, so the col2im
scatter never races; with fewer images than threads, each thread scatters into its own copy of dX.
Every thread owns its dW/db accumulators; they are summed in a fixed order, so results depend on
the thread count only through float rounding.

Callers (``cnnframe.ops.conv``) validate every argument and pin BLAS to one thread: nothing here
checks bounds.
"""
import numpy as np

cimport cython
from cython.parallel cimport prange
from scipy.linalg.cython_blas cimport dgemm, sgemm

ctypedef fused floating:
    float
    double

# Rows of col per GEMM: about this many elements keeps a chunk in L2 next to the weights.
cdef Py_ssize_t CHUNK_ELEMS = 131072
cdef Py_ssize_t MIN_ROWS = 32
cdef Py_ssize_t MAX_ROWS = 2048


def _set_chunk_elems(Py_ssize_t n):
    """Tuning hook for benchmarks: the col chunk size in elements."""
    global CHUNK_ELEMS
    CHUNK_ELEMS = n


cdef inline void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                         floating* a, int lda, floating* b, int ldb, floating beta,
                         floating* c, int ldc) noexcept nogil:
    """Row-major C (m×n) = alpha·op(A)·op(B) + beta·C.

    A row-major array is the column-major transpose, so ask column-major BLAS for
    Cᵀ = op(B)ᵀ·op(A)ᵀ: B first, m and n swapped, transpose flags kept.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc)


cdef Py_ssize_t chunk_rows(Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t r = CHUNK_ELEMS // K
    if r < MIN_ROWS:
        r = MIN_ROWS
    if r > MAX_ROWS:
        r = MAX_ROWS
    return r


cdef void to_channels_last(floating* x, int C, int H, int W, int ph, int pw,
                           floating* xh) noexcept nogil:
    """xh[r, q, c] = Xp[c, r, q] for one image; xh (Hp, Wp, C) must start zeroed (the padding)."""
    cdef int c, r, q
    cdef Py_ssize_t Wp = W + 2 * pw
    cdef floating* src
    cdef floating* dst
    for r in range(H):
        dst = xh + ((r + ph) * Wp + pw) * C
        for c in range(C):
            src = x + (<Py_ssize_t>c * H + r) * W
            for q in range(W):
                dst[q * C + c] = src[q]


cdef void from_channels_last(floating* xh, int C, int H, int W, int ph, int pw,
                             floating* x) noexcept nogil:
    """x[c, r, q] += Xh[r + ph, q + pw, c]: crop the padding and go back to channels-first."""
    cdef int c, r, q
    cdef Py_ssize_t Wp = W + 2 * pw
    cdef floating* src
    cdef floating* dst
    for r in range(H):
        src = xh + ((r + ph) * Wp + pw) * C
        for c in range(C):
            dst = x + (<Py_ssize_t>c * H + r) * W
            for q in range(W):
                dst[q] += src[q * C + c]


cdef void im2col_rows(floating* xh, Py_ssize_t row0, Py_ssize_t row1, int C, int Hp, int Wp,
                      int kh, int kw, int sh, int sw, int dh, int dw, int Ho, int Wo,
                      floating* col) noexcept nogil:
    """col[row - row0, (m·kw + l)·C + c] = Xh[n, i·sh + m·dh, j·sw + l·dw, c] for pixel rows
    row0 <= row < row1, row = (n·Ho + i)·Wo + j."""
    cdef Py_ssize_t row, P = <Py_ssize_t>Ho * Wo, K = <Py_ssize_t>kh * kw * C, img = <Py_ssize_t>Hp * Wp * C
    cdef Py_ssize_t n, pix, t, span = <Py_ssize_t>kw * C
    cdef int i, j, m, l
    cdef floating* dst
    cdef floating* src
    for row in range(row0, row1):
        n = row // P
        pix = row - n * P
        i = <int>(pix // Wo)
        j = <int>(pix - <Py_ssize_t>i * Wo)
        dst = col + (row - row0) * K
        for m in range(kh):
            src = xh + n * img + ((<Py_ssize_t>(i * sh + m * dh)) * Wp + j * sw) * C
            if dw == 1:
                # kw neighbouring pixels: one contiguous run of kw·C values.
                for t in range(span):
                    dst[t] = src[t]
                dst += span
            else:
                for l in range(kw):
                    for t in range(C):
                        dst[t] = src[<Py_ssize_t>l * dw * C + t]
                    dst += C


cdef void col2im_rows(floating* col, Py_ssize_t row0, Py_ssize_t row1, int C, int Hp, int Wp,
                      int kh, int kw, int sh, int sw, int dh, int dw, int Ho, int Wo,
                      floating* xh) noexcept nogil:
    """The adjoint of im2col_rows: Xh[n, i·sh + m·dh, j·sw + l·dw, c] += col[row - row0, ...]."""
    cdef Py_ssize_t row, P = <Py_ssize_t>Ho * Wo, K = <Py_ssize_t>kh * kw * C, img = <Py_ssize_t>Hp * Wp * C
    cdef Py_ssize_t n, pix, t, span = <Py_ssize_t>kw * C
    cdef int i, j, m, l
    cdef floating* src
    cdef floating* dst
    for row in range(row0, row1):
        n = row // P
        pix = row - n * P
        i = <int>(pix // Wo)
        j = <int>(pix - <Py_ssize_t>i * Wo)
        src = col + (row - row0) * K
        for m in range(kh):
            dst = xh + n * img + ((<Py_ssize_t>(i * sh + m * dh)) * Wp + j * sw) * C
            if dw == 1:
                for t in range(span):
                    dst[t] += src[t]
                src += span
            else:
                for l in range(kw):
                    for t in range(C):
                        dst[<Py_ssize_t>l * dw * C + t] += src[t]
                    src += C


cdef void reorder_weights(floating* w, int F, int C, int kh, int kw, floating* wr) noexcept nogil:
    """wr[f, (m·kw + l)·C + c] = w[f, c, m, l]."""
    cdef int f, c, m, l
    for f in range(F):
        for c in range(C):
            for m in range(kh):
                for l in range(kw):
                    wr[((<Py_ssize_t>f * kh + m) * kw + l) * C + c] = w[((<Py_ssize_t>f * C + c) * kh + m) * kw + l]


def _channels_last(floating[:, :, :, ::1] x, int ph, int pw, int nthreads):
    """Zero-padded channels-last copy (N, H + 2ph, W + 2pw, C) of x, built in parallel."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    dtype = np.float32 if floating is float else np.float64
    xh_arr = np.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=dtype)
    cdef floating[:, :, :, ::1] xh = xh_arr
    cdef int n
    for n in prange(N, nogil=True, schedule='static', num_threads=nthreads):
        to_channels_last(&x[n, 0, 0, 0], C, H, W, ph, pw, &xh[n, 0, 0, 0])
    return xh_arr


@cython.boundscheck(False)
@cython.wraparound(False)
def forward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] w, floating[::1] b,
            floating[:, :, :, ::1] y, int sh, int sw, int ph, int pw, int dh, int dw, int nthreads):
    """Y = X ⋆ W + b (eq. 1), written into ``y`` (N, F, Ho, Wo)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t P = <Py_ssize_t>Ho * Wo, K = <Py_ssize_t>C * kh * kw, rows = P * N
    if rows == 0:
        return
    if nthreads < 1:
        nthreads = 1
    if nthreads > rows:
        nthreads = <int>rows
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :, ::1] xh = _channels_last(x, ph, pw, nthreads)
    cdef floating[:, ::1] wr = np.empty((F, K), dtype=dtype)
    reorder_weights(&w[0, 0, 0, 0], F, C, kh, kw, &wr[0, 0])
    cdef Py_ssize_t R = chunk_rows(K)
    cdef floating[:, ::1] col_buf = np.empty((nthreads, R * K), dtype=dtype)
    cdef floating[:, ::1] out_buf = np.empty((nthreads, R * F), dtype=dtype)
    cdef int t, f
    cdef Py_ssize_t r0, r1, c0, c1, nr, row, n, pix, seg, blk, blk_end
    cdef floating* col
    cdef floating* out
    cdef floating* yp
    for t in prange(nthreads, nogil=True, schedule='static', num_threads=nthreads):
        col = &col_buf[t, 0]
        out = &out_buf[t, 0]
        r0 = rows * t // nthreads
        r1 = rows * (t + 1) // nthreads
        c0 = r0
        while c0 < r1:
            c1 = c0 + R if c0 + R < r1 else r1
            nr = c1 - c0
            im2col_rows(&xh[0, 0, 0, 0], c0, c1, C, Hp, Wp, kh, kw, sh, sw, dh, dw, Ho, Wo, col)
            # out (nr × F) = col (nr × K) · Wrᵀ
            gemm_rm(False, True, <int>nr, F, <int>K, 1, col, <int>K, &wr[0, 0], <int>K, 0, out, F)
            # Transpose out into Y image by image, writing along Y's contiguous rows.
            row = c0
            while row < c1:
                n = row // P
                seg = (n + 1) * P if (n + 1) * P < c1 else c1
                yp = &y[n, 0, 0, 0] - n * P
                # 16 pixels at a time: their rows of out stay in L1 while every channel is written.
                blk = row
                while blk < seg:
                    blk_end = blk + 16 if blk + 16 < seg else seg
                    for f in range(F):
                        for pix in range(blk, blk_end):
                            yp[f * P + pix] = out[(pix - c0) * F + f] + b[f]
                    blk = blk_end
                row = seg
            c0 = c1


@cython.boundscheck(False)
@cython.wraparound(False)
def backward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] w, floating[:, :, :, ::1] gy,
             floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw, floating[::1] db,
             int sh, int sw, int ph, int pw, int dh, int dw_, int need_dx, int nthreads):
    """Add dW (eq. 2) into ``dw`` and db (eq. 3) into ``db``; if ``need_dx``, add dX (eq. 4, col2im
    form) into ``dx``."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = gy.shape[2], Wo = gy.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t P = <Py_ssize_t>Ho * Wo, K = <Py_ssize_t>C * kh * kw, rows = P * N
    if rows == 0:
        return
    if nthreads < 1:
        nthreads = 1
    if nthreads > rows:
        nthreads = <int>rows
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :, ::1] xh = _channels_last(x, ph, pw, nthreads)
    cdef floating[:, ::1] wr = np.empty((F, K), dtype=dtype)
    reorder_weights(&w[0, 0, 0, 0], F, C, kh, kw, &wr[0, 0])
    # Images never straddle two threads when there are enough of them: then all threads share
    # one dX; otherwise each thread scatters into a private copy, summed afterwards.
    cdef bint by_image = N >= nthreads
    cdef int ncopies = 1 if by_image else nthreads
    cdef floating[:, :, :, :, ::1] dxh
    if need_dx:
        dxh = np.zeros((ncopies, N, Hp, Wp, C), dtype=dtype)
    else:
        dxh = np.zeros((1, 1, 1, 1, 1), dtype=dtype)
    cdef Py_ssize_t R = chunk_rows(K)
    cdef floating[:, ::1] col_buf = np.empty((nthreads, R * K), dtype=dtype)
    cdef floating[:, ::1] g_buf = np.empty((nthreads, R * F), dtype=dtype)
    cdef floating[:, :, ::1] dw_acc = np.zeros((nthreads, F, K), dtype=dtype)
    cdef floating[:, ::1] db_acc = np.zeros((nthreads, F), dtype=dtype)
    cdef int t, f, copy
    cdef Py_ssize_t r0, r1, c0, c1, nr, row, n, pix, seg
    cdef floating* col
    cdef floating* g
    cdef floating* gp
    cdef floating s
    for t in prange(nthreads, nogil=True, schedule='static', num_threads=nthreads):
        col = &col_buf[t, 0]
        g = &g_buf[t, 0]
        if by_image:
            r0 = (N * t // nthreads) * P
            r1 = (N * (t + 1) // nthreads) * P
            copy = 0
        else:
            r0 = rows * t // nthreads
            r1 = rows * (t + 1) // nthreads
            copy = t
        c0 = r0
        while c0 < r1:
            c1 = c0 + R if c0 + R < r1 else r1
            nr = c1 - c0
            # Gather this chunk's G as an F × nr matrix (pixel rows become columns).
            row = c0
            while row < c1:
                n = row // P
                seg = (n + 1) * P if (n + 1) * P < c1 else c1
                gp = &gy[n, 0, 0, 0] - n * P
                for f in range(F):
                    for pix in range(row, seg):
                        g[f * nr + (pix - c0)] = gp[f * P + pix]
                row = seg
            for f in range(F):
                s = 0
                for row in range(nr):
                    s = s + g[f * nr + row]
                db_acc[t, f] += s
            im2col_rows(&xh[0, 0, 0, 0], c0, c1, C, Hp, Wp, kh, kw, sh, sw, dh, dw_, Ho, Wo, col)
            # dWr (F × K) += G (F × nr) · col (nr × K)
            gemm_rm(False, False, F, <int>K, <int>nr, 1, g, <int>nr, col, <int>K, 1, &dw_acc[t, 0, 0], <int>K)
            if need_dx:
                # dcol (nr × K) = Gᵀ · Wr, written over col (no longer needed).
                gemm_rm(True, False, <int>nr, <int>K, F, 1, g, <int>nr, &wr[0, 0], <int>K, 0, col, <int>K)
                col2im_rows(col, c0, c1, C, Hp, Wp, kh, kw, sh, sw, dh, dw_, Ho, Wo, &dxh[copy, 0, 0, 0, 0])
            c0 = c1
    # Fixed summation order over threads: deterministic for a given thread count.
    dwr = np.asarray(dw_acc).sum(axis=0).reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
    np.add(np.asarray(dw), dwr, out=np.asarray(dw))
    np.add(np.asarray(db), np.asarray(db_acc).sum(axis=0), out=np.asarray(db))
    if not need_dx:
        return
    cdef floating[:, :, :, ::1] dsum
    if ncopies > 1:
        dsum = np.asarray(dxh).sum(axis=0)
    else:
        dsum = dxh[0]
    cdef int nn
    for nn in prange(N, nogil=True, schedule='static', num_threads=nthreads):
        from_channels_last(&dsum[nn, 0, 0, 0], C, H, W, ph, pw, &dx[nn, 0, 0, 0])
