# cython: language_level=3
"""2-D convolution kernels: im2col + GEMM, parallel over images with OpenMP.

Equation numbers refer to docs/math.md.  With K = C·kh·kw and P = Ho·Wo, one image is

    forward (1):   Y (F×P)  = W (F×K) · col (K×P) + b
    weights (2):   dW (F×K) += G (F×P) · colᵀ
    bias (3):      db (F)   += Σ_p G
    input (4):     dcol (K×P) = Wᵀ · G, then col2im scatter-adds dcol into dXp

where ``col[(c·kh + m)·kw + l, i·Wo + j] = Xp[c, i·s + m·d, j·s + l·d]`` (im2col).  The col2im form of
(4) adds exactly the products of the full convolution of G with the rotated kernel, minus the ones
with the zeros that (4) inserts for stride > 1.

Several images share one GEMM (a K × nb·P col buffer) so that tiny images still give BLAS wide
matrices.  Blocks of images are spread over threads with ``prange``; each thread owns its scratch
buffers and its dW/db accumulators, which are summed in a fixed order afterwards (so results depend
on the thread count only through rounding).  When there are fewer images than threads, each image is
split across threads instead (by output columns forward, by input channels backward).

Callers (``cnnframe.ops.conv``) validate every argument and pin BLAS to one thread: nothing here
checks bounds.
"""
import numpy as np

cimport cython
from cython.parallel cimport prange, threadid
from scipy.linalg.cython_blas cimport dgemm, sgemm

ctypedef fused floating:
    float
    double

# A GEMM narrower than this many columns runs well below BLAS peak; group images to reach it.
cdef int TARGET_COLS = 512


cdef inline void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                         floating* a, int lda, floating* b, int ldb, floating beta,
                         floating* c, int ldc) noexcept nogil:
    """Row-major C (m×n) = alpha·op(A)·op(B) + beta·C.

    A row-major array is the column-major transpose, so ask column-major BLAS for
    Cᵀ = op(B)ᵀ·op(A)ᵀ: B first, swapped m and n, same transpose flags.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc)


cdef inline void valid_range(int n_out, int size, int s, int off, int* lo, int* hi) noexcept nogil:
    """Outputs j in [lo, hi) read an in-bounds input j·s + off (0 <= j·s + off < size)."""
    cdef int a = 0, b
    if off < 0:
        a = (-off + s - 1) // s
    if size - 1 - off < 0:
        b = 0
    else:
        b = (size - 1 - off) // s + 1
    if b > n_out:
        b = n_out
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


cdef void im2col(floating* x, int c0, int c1, int H, int W, int kh, int kw,
                 int sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo,
                 floating* col, Py_ssize_t ldcol) noexcept nogil:
    """col[(c·kh + m)·kw + l, i·Wo + j] = Xp[c, i·sh + m·dh, j·sw + l·dw] for channels c0 <= c < c1.

    ``x`` is one image (C, H, W); ``col`` has rows of length ``ldcol``.  Padding reads as 0.
    """
    cdef int c, m, l, i, j, r, off, jlo, jhi
    cdef floating* dst
    cdef floating* row
    cdef floating* src
    for c in range(c0, c1):
        for m in range(kh):
            for l in range(kw):
                dst = col + ((<Py_ssize_t>c * kh + m) * kw + l) * ldcol
                off = l * dw - pw
                valid_range(Wo, W, sw, off, &jlo, &jhi)
                for i in range(Ho):
                    row = dst + i * Wo
                    r = i * sh - ph + m * dh
                    if r < 0 or r >= H:
                        for j in range(Wo):
                            row[j] = 0
                        continue
                    src = x + (<Py_ssize_t>c * H + r) * W + off
                    for j in range(jlo):
                        row[j] = 0
                    if sw == 1:
                        for j in range(jlo, jhi):
                            row[j] = src[j]
                    else:
                        for j in range(jlo, jhi):
                            row[j] = src[j * sw]
                    for j in range(jhi, Wo):
                        row[j] = 0


cdef void col2im(floating* col, Py_ssize_t ldcol, int c0, int c1, int H, int W, int kh, int kw,
                 int sh, int sw, int ph, int pw, int dh, int dw, int Ho, int Wo,
                 floating* x) noexcept nogil:
    """The adjoint of im2col: X[c, i·sh + m·dh - ph, j·sw + l·dw - pw] += col[...] (padding dropped)."""
    cdef int c, m, l, i, j, r, off, jlo, jhi
    cdef floating* srow
    cdef floating* dst
    for c in range(c0, c1):
        for m in range(kh):
            for l in range(kw):
                srow = col + ((<Py_ssize_t>c * kh + m) * kw + l) * ldcol
                off = l * dw - pw
                valid_range(Wo, W, sw, off, &jlo, &jhi)
                for i in range(Ho):
                    r = i * sh - ph + m * dh
                    if r < 0 or r >= H:
                        continue
                    dst = x + (<Py_ssize_t>c * H + r) * W + off
                    if sw == 1:
                        for j in range(jlo, jhi):
                            dst[j] += srow[i * Wo + j]
                    else:
                        for j in range(jlo, jhi):
                            dst[j * sw] += srow[i * Wo + j]


cdef int images_per_block(int n, int p, int nthreads) noexcept nogil:
    """Images per GEMM: enough for ~TARGET_COLS columns, but leave every thread some blocks."""
    cdef int nb = (TARGET_COLS + p - 1) // p
    cdef int per_thread = (n + nthreads - 1) // nthreads
    if nb > per_thread:
        nb = per_thread
    if nb < 1:
        nb = 1
    # Even out the blocks so that the last one is not a sliver.
    cdef int nblocks = (n + nb - 1) // nb
    nblocks = ((nblocks + nthreads - 1) // nthreads) * nthreads
    nb = (n + nblocks - 1) // nblocks
    return nb if nb >= 1 else 1


@cython.boundscheck(False)
@cython.wraparound(False)
def forward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] w, floating[::1] b,
            floating[:, :, :, ::1] y, int sh, int sw, int ph, int pw, int dh, int dw, int nthreads):
    """Y = X ⋆ W + b (eq. 1), written into ``y`` (N, F, Ho, Wo)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3]
    cdef int P = Ho * Wo, K = C * kh * kw
    cdef Py_ssize_t CHW = <Py_ssize_t>C * H * W, FP = <Py_ssize_t>F * P
    if N == 0:
        return
    if nthreads < 1:
        nthreads = 1
    dtype = np.float32 if floating is float else np.float64
    cdef int nb, nblocks, blk, n0, nimg, t, j, f, p, p0, p1
    cdef floating[:, ::1] col_buf
    cdef floating[:, ::1] out_buf
    cdef floating* col
    cdef floating* out
    cdef floating* yp
    cdef floating* src

    if N >= nthreads or nthreads == 1:
        nb = images_per_block(N, P, nthreads)
        nblocks = (N + nb - 1) // nb
        col_buf = np.empty((nthreads, <Py_ssize_t>K * nb * P), dtype=dtype)
        out_buf = np.empty((nthreads, FP * nb if nb > 1 else 1), dtype=dtype)
        for blk in prange(nblocks, nogil=True, schedule='static', num_threads=nthreads):
            t = threadid()
            col = &col_buf[t, 0]
            out = &out_buf[t, 0]
            n0 = blk * nb
            nimg = N - n0 if N - n0 < nb else nb
            for j in range(nimg):
                im2col(&x[n0 + j, 0, 0, 0], 0, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo,
                       col + j * P, <Py_ssize_t>nimg * P)
            if nimg == 1:
                yp = &y[n0, 0, 0, 0]
                for f in range(F):
                    for p in range(P):
                        yp[f * P + p] = b[f]
                gemm_rm(False, False, F, P, K, 1, &w[0, 0, 0, 0], K, col, P, 1, yp, P)
            else:
                gemm_rm(False, False, F, nimg * P, K, 1, &w[0, 0, 0, 0], K, col, nimg * P, 0,
                        out, nimg * P)
                for j in range(nimg):
                    yp = &y[n0 + j, 0, 0, 0]
                    for f in range(F):
                        src = out + <Py_ssize_t>f * nimg * P + j * P
                        for p in range(P):
                            yp[f * P + p] = src[p] + b[f]
        return

    # Fewer images than threads: build each image's col once, then split its GEMM by output columns.
    col_buf = np.empty((1, <Py_ssize_t>K * P), dtype=dtype)
    col = &col_buf[0, 0]
    cdef int n
    for n in range(N):
        for t in prange(nthreads, nogil=True, schedule='static', num_threads=nthreads):
            im2col(&x[n, 0, 0, 0], t * C // nthreads, (t + 1) * C // nthreads, H, W, kh, kw,
                   sh, sw, ph, pw, dh, dw, Ho, Wo, col, P)
        for t in prange(nthreads, nogil=True, schedule='static', num_threads=nthreads):
            p0 = t * P // nthreads
            p1 = (t + 1) * P // nthreads
            if p1 > p0:
                yp = &y[n, 0, 0, 0]
                for f in range(F):
                    for p in range(p0, p1):
                        yp[f * P + p] = b[f]
                gemm_rm(False, False, F, p1 - p0, K, 1, &w[0, 0, 0, 0], K, col + p0, P, 1, yp + p0, P)


@cython.boundscheck(False)
@cython.wraparound(False)
def backward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] w, floating[:, :, :, ::1] gy,
             floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw, floating[::1] db,
             int sh, int sw, int ph, int pw, int dh, int dw_, int need_dx, int nthreads):
    """Add dW (eq. 2) into ``dw`` and db (eq. 3) into ``db``; if ``need_dx``, add dX (eq. 4, col2im
    form) into ``dx`` (which must start zeroed)."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = gy.shape[2], Wo = gy.shape[3]
    cdef int P = Ho * Wo, K = C * kh * kw, KK = kh * kw
    cdef Py_ssize_t FP = <Py_ssize_t>F * P
    if N == 0:
        return
    if nthreads < 1:
        nthreads = 1
    dtype = np.float32 if floating is float else np.float64
    cdef int nb, nblocks, blk, n0, nimg, t, j, f, p, r0, r1, c0, c1, n
    cdef floating[:, ::1] col_buf
    cdef floating[:, ::1] g_buf
    cdef floating[:, :, ::1] dw_acc
    cdef floating[:, ::1] db_acc
    cdef floating* col
    cdef floating* g
    cdef floating* gsrc
    cdef floating s

    if N >= nthreads or nthreads == 1:
        nb = images_per_block(N, P, nthreads)
        nblocks = (N + nb - 1) // nb
        col_buf = np.empty((nthreads, <Py_ssize_t>K * nb * P), dtype=dtype)
        g_buf = np.empty((nthreads, FP * nb if nb > 1 else 1), dtype=dtype)
        dw_acc = np.zeros((nthreads, F, K), dtype=dtype)
        db_acc = np.zeros((nthreads, F), dtype=dtype)
        for blk in prange(nblocks, nogil=True, schedule='static', num_threads=nthreads):
            t = threadid()
            col = &col_buf[t, 0]
            n0 = blk * nb
            nimg = N - n0 if N - n0 < nb else nb
            if nimg == 1:
                g = &gy[n0, 0, 0, 0]
            else:
                # Gather the block's G into one F × nimg·P matrix, image after image per row.
                g = &g_buf[t, 0]
                for j in range(nimg):
                    for f in range(F):
                        gsrc = &gy[n0 + j, f, 0, 0]
                        for p in range(P):
                            g[<Py_ssize_t>f * nimg * P + j * P + p] = gsrc[p]
            for f in range(F):
                s = 0
                for p in range(nimg * P):
                    s = s + g[<Py_ssize_t>f * nimg * P + p]
                db_acc[t, f] += s
            for j in range(nimg):
                im2col(&x[n0 + j, 0, 0, 0], 0, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw_, Ho, Wo,
                       col + j * P, <Py_ssize_t>nimg * P)
            gemm_rm(False, True, F, K, nimg * P, 1, g, nimg * P, col, nimg * P, 1,
                    &dw_acc[t, 0, 0], K)
            if need_dx:
                # col is no longer needed: reuse it for dcol = Wᵀ·G.
                gemm_rm(True, False, K, nimg * P, F, 1, &w[0, 0, 0, 0], K, g, nimg * P, 0,
                        col, nimg * P)
                for j in range(nimg):
                    col2im(col + j * P, <Py_ssize_t>nimg * P, 0, C, H, W, kh, kw, sh, sw, ph, pw,
                           dh, dw_, Ho, Wo, &dx[n0 + j, 0, 0, 0])
        # Fixed summation order over threads: deterministic for a given thread count.
        acc = np.asarray(dw_acc)
        np.add(np.asarray(dw), acc.sum(axis=0).reshape(np.asarray(dw).shape), out=np.asarray(dw))
        np.add(np.asarray(db), np.asarray(db_acc).sum(axis=0), out=np.asarray(db))
        return

    # Fewer images than threads: split each image by input channels.  Channel block [c0, c1) owns
    # rows [c0·kh·kw, c1·kh·kw) of col, the matching columns of dW and channels c0..c1 of dX, so
    # no two threads write the same memory.
    col_buf = np.empty((1, <Py_ssize_t>K * P), dtype=dtype)
    col = &col_buf[0, 0]
    for n in range(N):
        for t in prange(nthreads, nogil=True, schedule='static', num_threads=nthreads):
            c0 = t * C // nthreads
            c1 = (t + 1) * C // nthreads
            if c1 > c0:
                r0 = c0 * KK
                r1 = c1 * KK
                im2col(&x[n, 0, 0, 0], c0, c1, H, W, kh, kw, sh, sw, ph, pw, dh, dw_, Ho, Wo, col, P)
                gemm_rm(False, True, F, r1 - r0, P, 1, &gy[n, 0, 0, 0], P, col + <Py_ssize_t>r0 * P, P, 1,
                        &dw[0, 0, 0, 0] + r0, K)
                if need_dx:
                    gemm_rm(True, False, r1 - r0, P, F, 1, &w[0, 0, 0, 0] + r0, K, &gy[n, 0, 0, 0], P, 0,
                            col + <Py_ssize_t>r0 * P, P)
                    col2im(col, P, c0, c1, H, W, kh, kw, sh, sw, ph, pw, dh, dw_, Ho, Wo, &dx[n, 0, 0, 0])
        for f in range(F):
            gsrc = &gy[n, f, 0, 0]
            s = 0
            for p in range(P):
                s = s + gsrc[p]
            db[f] += s
