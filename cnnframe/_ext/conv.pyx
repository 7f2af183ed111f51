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

The products run on the AVX-512 micro-kernel of microkernel.h (float32, when the CPU has it) or
on single-threaded BLAS; float32 stride-1 layers may skip the im2col copy altogether and read the
receptive fields in place (the "implicit im2col" section at the end of this file).

Parallel plan: the N·Ho·Wo pixel rows are cut into SPANS contiguous spans (a fixed number, not
the thread count); threads take spans, and walk each span in chunks sized to stay in L2 (im2col of
a chunk, then one product).  Backward keeps each image within one span when there are at least as
many images as spans, so the col2im scatter never races; otherwise each span scatters into its own
copy of dX.  Every span owns its dW/db accumulators; they are summed in span order.  Results are
therefore bit-identical for any thread count.

Callers (``cnnframe.ops.conv``) validate every argument and pin BLAS to one thread: nothing here
checks bounds.
"""
import os

import numpy as np

from cnnframe._ext._scratch import SCRATCH

cimport cython
from cython.parallel cimport prange, threadid
from scipy.linalg.cython_blas cimport dgemm, sgemm

ctypedef fused floating:
    float
    double

cdef extern from "microkernel.h":
    int cnnframe_mk_available() noexcept nogil
    void cnnframe_mk_sgemm_seg(Py_ssize_t M, Py_ssize_t N, Py_ssize_t nseg, Py_ssize_t T,
                               const float* A, Py_ssize_t sa, Py_ssize_t sb, const Py_ssize_t* aoff,
                               const float* B, Py_ssize_t ldb, const Py_ssize_t* boff, float* C,
                               Py_ssize_t ldc, int accumulate) noexcept nogil
    void cnnframe_mk_sgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t T, const float* A, Py_ssize_t sa,
                           Py_ssize_t sb, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc,
                           int accumulate) noexcept nogil

# float32 products use the AVX-512 micro-kernel where the CPU has it, BLAS otherwise.
cdef bint USE_MK = cnnframe_mk_available()


def microkernel_available():
    """True when the CPU runs the AVX-512 micro-kernel (float32 products then bypass BLAS)."""
    return bool(cnnframe_mk_available())


def _use_microkernel(bint on):
    """Switch the micro-kernel on or off (tests run both paths); returns the previous setting."""
    global USE_MK, cnnframe_simd_avx512
    old = USE_MK
    USE_MK = on and cnnframe_mk_available()
    cnnframe_simd_avx512 = on and cnnframe_cpu_avx512()
    return bool(old)


# When the implicit-im2col path runs (float32, stride 1, micro-kernel); see the section at the end.
cdef bint USE_IMPLICIT = 1
cdef int IMPLICIT_MAX_WASTE_PCT = 25   # extra columns computed over the padded width
cdef int IMPLICIT_DX_MIN_CHANNELS = 16  # dX's outputs are the C input channels
cdef int IMPLICIT_DW_MIN_TAPS = 10      # implicit dW only for large kernels
cdef int IMPLICIT_DX_MIN_TAPS = 1


def _implicit_policy(on=None, max_waste_pct=None, dx_min_channels=None, dw_min_taps=None, dx_min_taps=None):
    """Read or change when the implicit path runs (tests force every path); returns the old policy."""
    global USE_IMPLICIT, IMPLICIT_MAX_WASTE_PCT, IMPLICIT_DX_MIN_CHANNELS, IMPLICIT_DW_MIN_TAPS, IMPLICIT_DX_MIN_TAPS
    old = dict(on=bool(USE_IMPLICIT), max_waste_pct=IMPLICIT_MAX_WASTE_PCT,
               dx_min_channels=IMPLICIT_DX_MIN_CHANNELS, dw_min_taps=IMPLICIT_DW_MIN_TAPS,
               dx_min_taps=IMPLICIT_DX_MIN_TAPS)
    if dx_min_taps is not None:
        IMPLICIT_DX_MIN_TAPS = dx_min_taps
    if on is not None:
        USE_IMPLICIT = on
    if max_waste_pct is not None:
        IMPLICIT_MAX_WASTE_PCT = max_waste_pct
    if dx_min_channels is not None:
        IMPLICIT_DX_MIN_CHANNELS = dx_min_channels
    if dw_min_taps is not None:
        IMPLICIT_DW_MIN_TAPS = dw_min_taps
    return old


cdef inline bint little_waste(int padded, int out) noexcept nogil:
    return 100 * padded <= (100 + IMPLICIT_MAX_WASTE_PCT) * out


# Work is cut into a fixed number of spans, independent of the thread count; each span owns its
# gradient accumulators, summed in span order.  So results are bit-identical for any number of
# threads (threads only decide which span runs where), and the thread count may change between
# calls (cnnframe.parallel lowers it when other processes keep cores busy).
cdef int SPANS = max(8, os.cpu_count() or 1)


# Each span of a backward pass owns an F × K weight-gradient accumulator: cap their total memory
# (the cap depends only on the layer's shape, so results still do not depend on the thread count).
cdef Py_ssize_t SPAN_ACC_BYTES = 64 << 20


cdef int grad_spans(Py_ssize_t items, Py_ssize_t F, Py_ssize_t K) noexcept nogil:
    """Spans for a backward pass: SPANS, at most one per item, at most SPAN_ACC_BYTES of dW."""
    cdef Py_ssize_t n = SPANS, cap = SPAN_ACC_BYTES // (F * K * 8)
    if n > items:
        n = items
    if n > cap:
        n = cap
    return <int>(n if n > 1 else 1)


# Rows of col per GEMM: about this many elements keeps a chunk in L2 next to the weights.
cdef Py_ssize_t CHUNK_ELEMS = 262144
cdef Py_ssize_t MIN_ROWS = 32
cdef Py_ssize_t MAX_ROWS = 2048


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
    """xh[r, q, c] = Xp[c, r, q] for one image (Hp, Wp, C), zero padding included."""
    cdef int r
    cdef Py_ssize_t Wp = W + 2 * pw, row = Wp * C
    cdef floating* dst
    # Only the padding needs zeros; the rest is overwritten below.
    memset(xh, 0, ph * row * sizeof(floating))
    memset(xh + (ph + H) * row, 0, ph * row * sizeof(floating))
    for r in range(H):
        dst = xh + ((r + ph) * Wp + pw) * C
        memset(dst - pw * C, 0, pw * C * sizeof(floating))
        memset(dst + W * C, 0, pw * C * sizeof(floating))
        # row r: (C × W, rows H·W apart) → (W × C)
        transpose(x + <Py_ssize_t>r * W, <Py_ssize_t>H * W, C, W, dst, C, NULL)


cdef void from_channels_last(floating* xh, int C, int H, int W, int ph, int pw,
                             floating* x) noexcept nogil:
    """x[c, r, q] = Xh[r + ph, q + pw, c]: crop the padding and go back to channels-first."""
    cdef int r
    cdef Py_ssize_t Wp = W + 2 * pw
    for r in range(H):
        # row r: (W × C) → (C × W, rows H·W apart)
        transpose(xh + ((r + ph) * Wp + pw) * C, C, W, C, x + <Py_ssize_t>r * W, <Py_ssize_t>H * W, NULL)


cdef extern from "simd.h":
    int cnnframe_simd_avx512
    int cnnframe_cpu_avx512() noexcept nogil
    void cnnframe_add_f(float* dst, const float* src, Py_ssize_t n) noexcept nogil
    void cnnframe_add_d(double* dst, const double* src, Py_ssize_t n) noexcept nogil
    float cnnframe_sum_f(const float* x, Py_ssize_t n) noexcept nogil
    double cnnframe_sum_d(const double* x, Py_ssize_t n) noexcept nogil
    void cnnframe_transpose_f(const float* src, Py_ssize_t lds, Py_ssize_t npix, Py_ssize_t F,
                              float* dst, Py_ssize_t ldd, const float* b) noexcept nogil
    void cnnframe_transpose_d(const double* src, Py_ssize_t lds, Py_ssize_t npix, Py_ssize_t F,
                              double* dst, Py_ssize_t ldd, const double* b) noexcept nogil
    void* memcpy(void* dst, const void* src, size_t n) noexcept nogil
    void* memset(void* dst, int c, size_t n) noexcept nogil

cnnframe_simd_avx512 = cnnframe_cpu_avx512()


cdef inline void transpose(floating* src, Py_ssize_t lds, Py_ssize_t npix, Py_ssize_t F,
                           floating* dst, Py_ssize_t ldd, floating* b) noexcept nogil:
    """dst[f·ldd + p] = src[p·lds + f] (+ b[f] unless b is NULL)."""
    if floating is float:
        cnnframe_transpose_f(src, lds, npix, F, dst, ldd, b)
    else:
        cnnframe_transpose_d(src, lds, npix, F, dst, ldd, b)


cdef inline void transpose_bias(floating* out, Py_ssize_t F, floating* y, Py_ssize_t ldy,
                               Py_ssize_t npix, floating* b) noexcept nogil:
    """y[f·ldy + p] = out[p·F + f] + b[f]: pixel-major GEMM output to channel-major Y."""
    transpose(out, F, npix, F, y, ldy, b)


cdef inline floating sum_run(floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return cnnframe_sum_f(x, n)
    else:
        return cnnframe_sum_d(x, n)


cdef inline void add_run(floating* dst, floating* src, Py_ssize_t n) noexcept nogil:
    if floating is float:
        cnnframe_add_f(dst, src, n)
    else:
        cnnframe_add_d(dst, src, n)


cdef void im2col_rows(floating* xh, Py_ssize_t row0, Py_ssize_t row1, int C, int Hp, int Wp,
                      int kh, int kw, int sh, int sw, int dh, int dw, int Ho, int Wo,
                      floating* col) noexcept nogil:
    """col[row - row0, (m·kw + l)·C + c] = Xh[n, i·sh + m·dh, j·sw + l·dw, c] for pixel rows
    row0 <= row < row1, row = (n·Ho + i)·Wo + j."""
    cdef Py_ssize_t P = <Py_ssize_t>Ho * Wo, img = <Py_ssize_t>Hp * Wp * C
    cdef Py_ssize_t row, n = row0 // P, span = <Py_ssize_t>kw * C
    cdef int i = <int>((row0 - n * P) // Wo), j = <int>((row0 - n * P) % Wo), m, l
    cdef floating* dst = col
    cdef floating* src
    for row in range(row0, row1):
        for m in range(kh):
            src = xh + n * img + ((<Py_ssize_t>(i * sh + m * dh)) * Wp + j * sw) * C
            if dw == 1:
                # kw neighbouring pixels: one contiguous run of kw·C values.
                memcpy(dst, src, span * sizeof(floating))
                dst += span
            else:
                for l in range(kw):
                    memcpy(dst, src + <Py_ssize_t>l * dw * C, C * sizeof(floating))
                    dst += C
        # Next pixel: step j, carrying into i and n (no divisions per row).
        j += 1
        if j == Wo:
            j = 0
            i += 1
            if i == Ho:
                i = 0
                n += 1


cdef void col2im_rows(floating* col, Py_ssize_t row0, Py_ssize_t row1, int C, int Hp, int Wp,
                      int kh, int kw, int sh, int sw, int dh, int dw, int Ho, int Wo,
                      floating* xh) noexcept nogil:
    """The adjoint of im2col_rows: Xh[n, i·sh + m·dh, j·sw + l·dw, c] += col[row - row0, ...]."""
    cdef Py_ssize_t P = <Py_ssize_t>Ho * Wo, img = <Py_ssize_t>Hp * Wp * C
    cdef Py_ssize_t row, n = row0 // P, span = <Py_ssize_t>kw * C
    cdef int i = <int>((row0 - n * P) // Wo), j = <int>((row0 - n * P) % Wo), m, l
    cdef floating* src = col
    cdef floating* dst
    for row in range(row0, row1):
        for m in range(kh):
            dst = xh + n * img + ((<Py_ssize_t>(i * sh + m * dh)) * Wp + j * sw) * C
            if dw == 1:
                add_run(dst, src, span)
                src += span
            else:
                for l in range(kw):
                    add_run(dst + <Py_ssize_t>l * dw * C, src, C)
                    src += C
        j += 1
        if j == Wo:
            j = 0
            i += 1
            if i == Ho:
                i = 0
                n += 1


cdef void reorder_weights_t(floating* w, int F, int C, int kh, int kw, floating* wt) noexcept nogil:
    """wt[(m·kw + l)·C + c, f] = w[f, c, m, l] (the transpose of reorder_weights)."""
    cdef int f, c, m, l
    for f in range(F):
        for c in range(C):
            for m in range(kh):
                for l in range(kw):
                    wt[(((<Py_ssize_t>m * kw + l) * C + c) * F) + f] = w[((<Py_ssize_t>f * C + c) * kh + m) * kw + l]


cdef void reorder_weights(floating* w, int F, int C, int kh, int kw, floating* wr) noexcept nogil:
    """wr[f, (m·kw + l)·C + c] = w[f, c, m, l]."""
    cdef int f, c, m, l
    for f in range(F):
        for c in range(C):
            for m in range(kh):
                for l in range(kw):
                    wr[((<Py_ssize_t>f * kh + m) * kw + l) * C + c] = w[((<Py_ssize_t>f * C + c) * kh + m) * kw + l]


cdef void fill_channels_last(floating[:, :, :, ::1] x, int ph, int pw, floating* xh, Py_ssize_t img,
                             int nthreads):
    """Image n of x (N, C, H, W) → zero-padded channels-last xh[n·img : ...] (H + 2ph, W + 2pw, C),
    images in parallel."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], n
    for n in prange(N, nogil=True, schedule='static', num_threads=nthreads):
        to_channels_last(&x[n, 0, 0, 0], C, H, W, ph, pw, xh + n * img)


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
    if nthreads > SPANS:
        nthreads = SPANS
    if floating is float:
        # The implicit path computes Wp - Wo dropped columns per row: worth it up to ~25 % extra.
        if USE_MK and USE_IMPLICIT and sh == 1 and sw == 1 and little_waste(Wp, Wo):
            _forward_implicit(x, w, b, y, ph, pw, dh, dw, nthreads)
            return
    cdef Py_ssize_t R = chunk_rows(K)
    bufs, release = SCRATCH.get(
        np.float32 if floating is float else np.float64,
        [(N, Hp, Wp, C), (F, K), (nthreads, R * K), (nthreads, R * F)],
    )
    cdef floating[:, :, :, ::1] xh
    cdef floating[:, ::1] wr, col_buf, out_buf
    try:
        xh, wr, col_buf, out_buf = bufs
        _forward(x, w, b, y, sh, sw, ph, pw, dh, dw, nthreads, R, xh, wr, col_buf, out_buf)
    finally:
        release()


cdef void _forward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] w, floating[::1] b,
                   floating[:, :, :, ::1] y, int sh, int sw, int ph, int pw, int dh, int dw,
                   int nthreads, Py_ssize_t R, floating[:, :, :, ::1] xh, floating[:, ::1] wr,
                   floating[:, ::1] col_buf, floating[:, ::1] out_buf):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t P = <Py_ssize_t>Ho * Wo, K = <Py_ssize_t>C * kh * kw, rows = P * N
    fill_channels_last(x, ph, pw, &xh[0, 0, 0, 0], <Py_ssize_t>Hp * Wp * C, nthreads)
    cdef bint mk = floating is float and USE_MK
    if mk:
        reorder_weights_t(&w[0, 0, 0, 0], F, C, kh, kw, &wr[0, 0])  # (K, F) for the micro-kernel
    else:
        reorder_weights(&w[0, 0, 0, 0], F, C, kh, kw, &wr[0, 0])
    cdef int v, nspans = SPANS if SPANS < rows else <int>rows
    cdef Py_ssize_t r0, r1, c0, c1, nr, row, n, seg
    cdef floating* col
    cdef floating* out
    for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
        col = &col_buf[threadid(), 0]
        out = &out_buf[threadid(), 0]
        r0 = rows * v // nspans
        r1 = rows * (v + 1) // nspans
        c0 = r0
        while c0 < r1:
            c1 = c0 + R if c0 + R < r1 else r1
            nr = c1 - c0
            im2col_rows(&xh[0, 0, 0, 0], c0, c1, C, Hp, Wp, kh, kw, sh, sw, dh, dw, Ho, Wo, col)
            # out (nr × F) = col (nr × K) · Wrᵀ
            if floating is float:
                if mk:
                    cnnframe_mk_sgemm(nr, F, K, col, K, 1, &wr[0, 0], F, out, F, 0)
                else:
                    gemm_rm(False, True, <int>nr, F, <int>K, 1, col, <int>K, &wr[0, 0], <int>K, 0, out, F)
            else:
                gemm_rm(False, True, <int>nr, F, <int>K, 1, col, <int>K, &wr[0, 0], <int>K, 0, out, F)
            # Transpose out into Y image by image, adding the bias on the way.
            row = c0
            while row < c1:
                n = row // P
                seg = (n + 1) * P if (n + 1) * P < c1 else c1
                transpose_bias(out + (row - c0) * F, F, &y[n, 0, 0, 0] + (row - n * P), P, seg - row, &b[0])
                row = seg
            c0 = c1


@cython.boundscheck(False)
@cython.wraparound(False)
def backward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] w, floating[:, :, :, ::1] gy,
             floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw, floating[::1] db,
             int sh, int sw, int ph, int pw, int dh, int dw_, int need_dx, int nthreads):
    """Add dW (eq. 2) into ``dw`` and db (eq. 3) into ``db``; if ``need_dx``, write dX (eq. 4) into
    ``dx``."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = gy.shape[2], Wo = gy.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t P = <Py_ssize_t>Ho * Wo, K = <Py_ssize_t>C * kh * kw, rows = P * N
    if rows == 0:
        return
    if nthreads < 1:
        nthreads = 1
    if nthreads > SPANS:
        nthreads = SPANS
    cdef bint dx_implicit = False, dw_implicit = False
    if floating is float:
        if USE_MK and USE_IMPLICIT and sh == 1 and sw == 1:
            # Backward reads the input (dW) and G (dX) in place only for large kernels, whose
            # im2col and col2im copy the most; for 3x3 the copies are cheaper than the dropped
            # columns.  dX is then a stride-1 correlation of G padded by d(k-1) - p (so p <= d(k-1)),
            # and pays when its C outputs fill the micro-kernel's vectors.
            dx_implicit = (need_dx and kh * kw >= IMPLICIT_DX_MIN_TAPS and C >= IMPLICIT_DX_MIN_CHANNELS
                           and dh * (kh - 1) >= ph and dw_ * (kw - 1) >= pw
                           and little_waste(Wo + 2 * (dw_ * (kw - 1) - pw), W))
            dw_implicit = (kh * kw >= IMPLICIT_DW_MIN_TAPS and little_waste(Wp, Wo)
                           and (dx_implicit or not need_dx))
        if dw_implicit:
            _backward_implicit(x, w, gy, dx, dw, db, ph, pw, dh, dw_, True, need_dx, nthreads)
            return
        if dx_implicit:
            backward(x, w, gy, dx, dw, db, sh, sw, ph, pw, dh, dw_, False, nthreads)
            _backward_implicit(x, w, gy, dx, dw, db, ph, pw, dh, dw_, False, True, nthreads)
            return
    # Spans are whole images when there are enough images: then all spans share one dX;
    # otherwise each span scatters into a private copy of dX, summed afterwards in span order.
    cdef int nspans = grad_spans(rows, F, K)
    cdef bint by_image = N >= nspans
    cdef int ncopies = 1 if by_image else nspans
    cdef Py_ssize_t R = chunk_rows(K)
    if need_dx:
        dxh_shape = (ncopies, N, Hp, Wp, C)
    else:
        dxh_shape = (1, 1, 1, 1, 1)
    bufs, release = SCRATCH.get(
        np.float32 if floating is float else np.float64,
        [(N, Hp, Wp, C), (F, K), dxh_shape, (nthreads, R * K), (nthreads, R * F), (nspans, F, K),
         (nspans, F)],
    )
    cdef floating[:, :, :, ::1] xh
    cdef floating[:, ::1] wr, col_buf, g_buf, db_acc
    cdef floating[:, :, :, :, ::1] dxh
    cdef floating[:, :, ::1] dw_acc
    try:
        for buf in bufs[2], bufs[5], bufs[6]:
            buf.fill(0)
        xh, wr, dxh, col_buf, g_buf, dw_acc, db_acc = bufs
        _backward(x, w, gy, dx, dw, db, sh, sw, ph, pw, dh, dw_, need_dx, nthreads, by_image, R,
                  xh, wr, dxh, col_buf, g_buf, dw_acc, db_acc)
    finally:
        release()


cdef void _backward(floating[:, :, :, ::1] x, floating[:, :, :, ::1] w, floating[:, :, :, ::1] gy,
                    floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw, floating[::1] db,
                    int sh, int sw, int ph, int pw, int dh, int dw_, int need_dx, int nthreads,
                    bint by_image, Py_ssize_t R, floating[:, :, :, ::1] xh, floating[:, ::1] wr,
                    floating[:, :, :, :, ::1] dxh, floating[:, ::1] col_buf, floating[:, ::1] g_buf,
                    floating[:, :, ::1] dw_acc, floating[:, ::1] db_acc):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = gy.shape[2], Wo = gy.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t P = <Py_ssize_t>Ho * Wo, K = <Py_ssize_t>C * kh * kw, rows = P * N
    cdef int ncopies = dxh.shape[0]
    cdef bint mk = floating is float and USE_MK
    fill_channels_last(x, ph, pw, &xh[0, 0, 0, 0], <Py_ssize_t>Hp * Wp * C, nthreads)
    reorder_weights(&w[0, 0, 0, 0], F, C, kh, kw, &wr[0, 0])
    cdef int v, f, copy, nspans = dw_acc.shape[0]
    cdef Py_ssize_t r0, r1, c0, c1, nr, row, n, pix, seg
    cdef floating* col
    cdef floating* g
    cdef floating* gp
    for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
        col = &col_buf[threadid(), 0]
        g = &g_buf[threadid(), 0]
        if by_image:
            r0 = (N * v // nspans) * P
            r1 = (N * (v + 1) // nspans) * P
            copy = 0
        else:
            r0 = rows * v // nspans
            r1 = rows * (v + 1) // nspans
            copy = v
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
                db_acc[v, f] += sum_run(g + f * nr, nr)
            im2col_rows(&xh[0, 0, 0, 0], c0, c1, C, Hp, Wp, kh, kw, sh, sw, dh, dw_, Ho, Wo, col)
            # dWr (F × K) += G (F × nr) · col (nr × K)
            if floating is float:
                if mk:
                    cnnframe_mk_sgemm(F, K, nr, g, nr, 1, col, K, &dw_acc[v, 0, 0], K, 1)
                else:
                    gemm_rm(False, False, F, <int>K, <int>nr, 1, g, <int>nr, col, <int>K, 1, &dw_acc[v, 0, 0], <int>K)
            else:
                gemm_rm(False, False, F, <int>K, <int>nr, 1, g, <int>nr, col, <int>K, 1, &dw_acc[v, 0, 0], <int>K)
            if need_dx:
                # dcol (nr × K) = Gᵀ · Wr, written over col (no longer needed).
                if floating is float:
                    if mk:
                        cnnframe_mk_sgemm(nr, K, F, g, 1, nr, &wr[0, 0], K, col, K, 0)
                    else:
                        gemm_rm(True, False, <int>nr, <int>K, F, 1, g, <int>nr, &wr[0, 0], <int>K, 0, col, <int>K)
                else:
                    gemm_rm(True, False, <int>nr, <int>K, F, 1, g, <int>nr, &wr[0, 0], <int>K, 0, col, <int>K)
                col2im_rows(col, c0, c1, C, Hp, Wp, kh, kw, sh, sw, dh, dw_, Ho, Wo, &dxh[copy, 0, 0, 0, 0])
            c0 = c1
    # Spans summed in a fixed order: the same bits for any thread count.
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


# -- Implicit im2col (float32, stride 1, AVX-512 micro-kernel) ---------------------------------------
#
# With stride 1, compute every output row over the full padded width Wp instead of Wo: output
# pixel q = i·Wp + j then reads input pixel q + m·dh·Wp + l·dw of the padded channels-last image,
# so for each kernel row m (a "segment") the im2col row of pixel q is the contiguous run of kw·C
# values starting at Xh[(q + m·dh·Wp)·C].  The micro-kernel reads those runs in place: no col
# buffer, no copies.  The Wp - Wo extra columns per row are computed and dropped.
#
# The input gradient (eq. 4) is then literally the same computation: a stride-1 correlation of G,
# zero-padded by d·(k-1) - p, with the 180°-rotated, channel-swapped kernel.

# Output pixels per micro-kernel call: enough rows for long products, few enough to stay in L2.
cdef Py_ssize_t IMPLICIT_PIXELS = 512


cdef Py_ssize_t _segments(int kh, int kw, int dh, int dw, int Wp, int C, Py_ssize_t[::1] aoff,
                          Py_ssize_t[::1] boff) noexcept nogil:
    """Fill the A offsets (input elements) and B offsets (rows of the packed weights) of each
    kernel segment; return the segment length.  dw = 1: one segment per kernel row (kw·C values);
    otherwise one per tap (C values)."""
    cdef int m, l
    if dw == 1:
        for m in range(kh):
            aoff[m] = <Py_ssize_t>m * dh * Wp * C
            boff[m] = <Py_ssize_t>m * kw * C
        return <Py_ssize_t>kw * C
    for m in range(kh):
        for l in range(kw):
            aoff[m * kw + l] = (<Py_ssize_t>m * dh * Wp + <Py_ssize_t>l * dw) * C
            boff[m * kw + l] = (<Py_ssize_t>m * kw + l) * C
    return C


cdef void implicit_conv(float* xh, Py_ssize_t img, int N, int Wp, int C, float* wt, int F,
                        int Ho, int Wo, float* b, float* y, int nthreads, int rows_per_chunk,
                        float* out_buf, Py_ssize_t out_stride, Py_ssize_t nseg, Py_ssize_t T,
                        Py_ssize_t* aoff, Py_ssize_t* boff) noexcept nogil:
    """y[n, f, i, j] = b[f] + Σ_s Σ_t Xh[n, (i·Wp + j)·C + aoff[s] + t] · wt[boff[s] + t, f]."""
    cdef int chunks = (Ho + rows_per_chunk - 1) // rows_per_chunk
    cdef Py_ssize_t item, n, i, i0, i1, M, plane = <Py_ssize_t>Ho * Wo
    cdef float* out
    for item in prange(<Py_ssize_t>N * chunks, nogil=True, schedule='static', num_threads=nthreads):
        n = item // chunks
        i0 = (item - n * chunks) * rows_per_chunk
        i1 = i0 + rows_per_chunk if i0 + rows_per_chunk < Ho else Ho
        M = (i1 - i0 - 1) * Wp + Wo  # the last row's padding columns are not needed
        out = out_buf + threadid() * out_stride
        cnnframe_mk_sgemm_seg(M, F, nseg, T, xh + n * img + i0 * Wp * C, C, 1, aoff, wt, F, boff,
                              out, F, 0)
        for i in range(i0, i1):
            transpose_bias(out + (i - i0) * Wp * F, F, y + (n * F * Ho + i) * Wo, plane, Wo, b)


cdef int _rows_per_chunk(int Wp, int Ho, int N) noexcept nogil:
    """Output rows per work item: about IMPLICIT_PIXELS pixels, but at least SPANS items when the
    batch is small (one image would otherwise leave threads idle)."""
    cdef int r = <int>(IMPLICIT_PIXELS // Wp)
    cdef int share = <int>((<Py_ssize_t>Ho * N) // SPANS)
    if r > share:
        r = share
    if r < 1:
        r = 1
    if r > Ho:
        r = Ho
    return r


def _forward_implicit(float[:, :, :, ::1] x, float[:, :, :, ::1] w, float[::1] b,
                      float[:, :, :, ::1] y, int ph, int pw, int dh, int dw, int nthreads):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = y.shape[2], Wo = y.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t K = <Py_ssize_t>C * kh * kw, img = <Py_ssize_t>Hp * Wp * C
    cdef int rpc = _rows_per_chunk(Wp, Ho, N)
    # The last rows' dropped columns read up to (kw-1)·dw·C values past an image: pad the end.
    cdef Py_ssize_t tail = (<Py_ssize_t>(kw - 1) * dw + 1) * C + 64
    bufs, release = SCRATCH.get(
        np.float32,
        [(N * img + tail,), (K, F), (nthreads, <Py_ssize_t>rpc * Wp * F + 64), (2 * kh * kw,), (2 * kh * kw,)],
    )
    cdef float[::1] xh
    cdef float[:, ::1] wt, out_buf
    cdef Py_ssize_t[::1] aoff, boff
    cdef Py_ssize_t T
    try:
        xh, wt, out_buf = bufs[0], bufs[1], bufs[2]
        aoff, boff = bufs[3].view(np.intp), bufs[4].view(np.intp)
        np.asarray(xh)[N * img:] = 0  # read by dropped columns only, but must be finite
        fill_channels_last(x, ph, pw, &xh[0], img, nthreads)
        reorder_weights_t(&w[0, 0, 0, 0], F, C, kh, kw, &wt[0, 0])
        T = _segments(kh, kw, dh, dw, Wp, C, aoff, boff)
        with nogil:
            implicit_conv(&xh[0], img, N, Wp, C, &wt[0, 0], F, Ho, Wo, &b[0], &y[0, 0, 0, 0], nthreads,
                          rpc, &out_buf[0, 0], out_buf.shape[1], kh if dw == 1 else kh * kw, T,
                          &aoff[0], &boff[0])
    finally:
        release()


def _backward_implicit(float[:, :, :, ::1] x, float[:, :, :, ::1] w, float[:, :, :, ::1] gy,
                       float[:, :, :, ::1] dx, float[:, :, :, ::1] dw, float[::1] db,
                       int ph, int pw, int dh, int dw_, bint do_dw, bint need_dx, int nthreads):
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = w.shape[0], kh = w.shape[2], kw = w.shape[3]
    cdef int Ho = gy.shape[2], Wo = gy.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t K = <Py_ssize_t>C * kh * kw, img = <Py_ssize_t>Hp * Wp * C
    cdef int rpc = _rows_per_chunk(Wp, Ho, N)
    cdef Py_ssize_t tail = (<Py_ssize_t>(kw - 1) * dw_ + 1) * C + 64
    cdef Py_ssize_t gstride = <Py_ssize_t>F * rpc * Wp + 64
    # G padded for eq. (4): the full correlation needs d·(k-1) zeros, the forward padding p is
    # already inside (it shifts where dX starts), so pad by d·(k-1) - p.
    cdef int pgh = dh * (kh - 1) - ph, pgw = dw_ * (kw - 1) - pw
    cdef int Hg = Ho + 2 * pgh, Wg = Wo + 2 * pgw
    cdef Py_ssize_t gimg = <Py_ssize_t>Hg * Wg * F
    cdef int rpc_dx = _rows_per_chunk(Wg, H, N)
    cdef Py_ssize_t gtail = (<Py_ssize_t>(kw - 1) * dw_ + 1) * F + 64
    # (the offset tables are Py_ssize_t: two float32 slots each)
    cdef int chunks = (Ho + rpc - 1) // rpc
    cdef int nspans = grad_spans(<Py_ssize_t>N * chunks, F, K)
    if do_dw:
        shapes = [(N * img + tail,), (nthreads, gstride), (nspans, F, K), (nspans, F)]
    else:
        shapes = [(1,), (1, 1), (1, 1, 1), (1, 1)]
    shapes += [(2 * kh * kw,), (2 * kh * kw,)]
    if need_dx:
        shapes += [(N * gimg + gtail,), (<Py_ssize_t>kh * kw * F, C), (nthreads, <Py_ssize_t>rpc_dx * Wg * C + 64), (C,)]
    bufs, release = SCRATCH.get(np.float32, shapes)
    cdef float[::1] gh, zero
    cdef float[:, ::1] wrt, out_buf
    cdef Py_ssize_t[::1] aoff, boff
    cdef Py_ssize_t T, nseg = kh if dw_ == 1 else kh * kw
    cdef int f, c, m, l
    try:
        aoff, boff = bufs[4].view(np.intp), bufs[5].view(np.intp)
        if do_dw:
            _implicit_weight_grad(x, gy, dw, db, ph, pw, dh, dw_, kh, kw, nthreads, rpc, bufs[0],
                                  bufs[1], bufs[2], bufs[3], aoff, boff)
        if not need_dx:
            return
        # dX (eq. 4): a stride-1 correlation of padded G with the rotated, channel-swapped kernel.
        gh, wrt, out_buf, zero = bufs[6], bufs[7], bufs[8], bufs[9]
        np.asarray(gh)[N * gimg:] = 0
        np.asarray(zero).fill(0)
        fill_channels_last(gy, pgh, pgw, &gh[0], gimg, nthreads)
        for f in range(F):
            for c in range(C):
                for m in range(kh):
                    for l in range(kw):
                        wrt[(m * kw + l) * F + f, c] = w[f, c, kh - 1 - m, kw - 1 - l]
        T = _segments(kh, kw, dh, dw_, Wg, F, aoff, boff)
        with nogil:
            implicit_conv(&gh[0], gimg, N, Wg, F, &wrt[0, 0], C, H, W, &zero[0], &dx[0, 0, 0, 0],
                          nthreads, rpc_dx, &out_buf[0, 0], out_buf.shape[1], nseg, T, &aoff[0], &boff[0])
    finally:
        release()


cdef _implicit_weight_grad(float[:, :, :, ::1] x, float[:, :, :, ::1] gy, float[:, :, :, ::1] dw,
                           float[::1] db, int ph, int pw, int dh, int dw_, int kh, int kw,
                           int nthreads, int rpc, float[::1] xh, float[:, ::1] gbuf,
                           float[:, :, ::1] dw_acc, float[:, ::1] db_acc, Py_ssize_t[::1] aoff,
                           Py_ssize_t[::1] boff):
    """dW (eq. 2): for each kernel segment s, dWr[:, boff[s]:boff[s]+T] += G · (the input run at
    aoff[s]); G is laid out over the padded width with zeros in the dropped columns."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef int F = gy.shape[1], Ho = gy.shape[2], Wo = gy.shape[3], Hp = H + 2 * ph, Wp = W + 2 * pw
    cdef Py_ssize_t K = <Py_ssize_t>C * kh * kw, img = <Py_ssize_t>Hp * Wp * C
    cdef int chunks = (Ho + rpc - 1) // rpc, nspans = dw_acc.shape[0], v
    cdef Py_ssize_t nitems = <Py_ssize_t>N * chunks
    cdef Py_ssize_t T, nseg = kh if dw_ == 1 else kh * kw, item, n, i, i0, i1, M, s, q
    cdef int f
    cdef float* g
    cdef float acc
    np.asarray(xh)[N * img:] = 0  # multiplied by the zeros of G's dropped columns: must be finite
    np.asarray(dw_acc).fill(0)
    np.asarray(db_acc).fill(0)
    fill_channels_last(x, ph, pw, &xh[0], img, nthreads)
    T = _segments(kh, kw, dh, dw_, Wp, C, aoff, boff)
    for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
        g = &gbuf[threadid(), 0]
        for item in range(nitems * v // nspans, nitems * (v + 1) // nspans):
            n = item // chunks
            i0 = (item - n * chunks) * rpc
            i1 = i0 + rpc if i0 + rpc < Ho else Ho
            M = (i1 - i0) * Wp
            for f in range(F):
                acc = 0
                for i in range(i0, i1):
                    for q in range(Wo):
                        g[f * M + (i - i0) * Wp + q] = gy[n, f, i, q]
                        acc = acc + gy[n, f, i, q]
                    for q in range(Wo, Wp):
                        g[f * M + (i - i0) * Wp + q] = 0
                db_acc[v, f] += acc
            for s in range(nseg):
                cnnframe_mk_sgemm(F, T, M, g, M, 1, &xh[0] + n * img + i0 * Wp * C + aoff[s], C,
                                  &dw_acc[v, 0, 0] + boff[s], K, 1)
    # Spans summed in a fixed order: the same bits for any thread count.
    dwr = np.asarray(dw_acc).sum(axis=0).reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
    np.add(np.asarray(dw), dwr, out=np.asarray(dw))
    np.add(np.asarray(db), np.asarray(db_acc).sum(axis=0), out=np.asarray(db))
