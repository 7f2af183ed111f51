# cython: language_level=3
"""2-D convolution kernels: im2col + GEMM over pixel rows, parallel with OpenMP.

Names follow docs/math.md: input X (N, C, H, W), weights W (K, C/g, kh, kw), output Y and its
gradient G (N, K, Ho, Wo), stride (sh, sw), padding (ph, pw), dilation (dh, dw), g groups of
Cg = C/g input and Kg = K/g output channels (eq. 5; g = 1 is eqs. 1-4).  Gradients are gx, gw, gb.

Each call first copies the input to a zero-padded channels-last image
``Xh[n, r, q, c] = Xp[n, c, r, q]`` so that one im2col row (one output pixel's receptive field) is
made of a few contiguous copies.  With ncol = kh·kw·C values per row, ordered (group, m, l, c):

    col[(n, i, j), ((grp·kh + m)·kw + l)·Cg + c] = Xp[n, grp·Cg + c, i·sh + m·dh, j·sw + l·dw]

and the weights are reordered the same way, ``Wr[k, (m·kw + l)·Cg + c] = W[k, c, m, l]``.  Then,
group by group (the columns of group grp are one contiguous block of ncolg = kh·kw·Cg):

    forward (1):  Y[n, k, i, j] = b[k] + Σ col[(n, i, j), ·] · Wr[k, ·]         out = col · Wrᵀ
    weights (2):  gwᵀ[·, k]     = Σ_(n,i,j) col[(n, i, j), ·] · G[n, k, i, j]    gwᵀ = colᵀ · G
    bias (3):     gb[k]         = Σ_(n,i,j) G[n, k, i, j]
    input (4):    dcol = G · Wr, and col2im scatter-adds each dcol entry back onto the input
                  position its col entry was read from.

The col2im form of (4) adds exactly the products of the full convolution of G with the 180°-rotated
kernel, minus the products with the zeros that (4) inserts between strided outputs;
``cnnframe.ops.conv2d_input_grad_full`` computes (4) literally and the tests check both agree.

The products run on the AVX-512 micro-kernel of microkernel.h (float32, when the CPU has it) or
on single-threaded BLAS.  On the micro-kernel, float32 layers skip the im2col copy and read the
receptive fields in place for Y and gW, and compute gX as eq. (4) itself when the stride is 1 (the
"implicit im2col" section); depthwise layers (g = C = K) have their own loops along the channels
(depthwise.h).  So the explicit im2col below serves float64, CPUs without AVX-512, and gX of
strided float32 layers.

Parallel plan: the N·Ho·Wo pixel rows are cut into SPANS contiguous spans (a fixed number, not
the thread count); threads take spans, and walk each span in chunks sized to stay in L2 (im2col of
a chunk, then one product).  Backward keeps each image within one span when there are at least as
many images as spans, so the col2im scatter never races; otherwise each span scatters into its own
copy of gx.  Every span owns its gw/gb accumulators; they are summed in span order.  Results are
therefore bit-identical for any thread count.

Callers (``cnnframe.ops.conv``) validate every argument and pin BLAS to one thread: nothing here
checks bounds.  Inputs are ``const`` memoryviews, so read-only arrays (e.g. ``np.load(...,
mmap_mode="r")``) work.
"""
import os

import numpy as np

from cnnframe._ext._scratch import SCRATCH

from cython.parallel cimport prange, threadid
from scipy.linalg.cython_blas cimport dgemm, sgemm

ctypedef fused floating:
    float
    double

cdef extern from "microkernel.h":
    void cnnframe_mk_sgemm_seg(Py_ssize_t M, Py_ssize_t N, Py_ssize_t nseg, Py_ssize_t T,
                               const float* A, Py_ssize_t sa, Py_ssize_t sb, const Py_ssize_t* aoff,
                               const float* B, Py_ssize_t ldb, const Py_ssize_t* boff, float* C,
                               Py_ssize_t ldc, int accumulate) noexcept nogil
    void cnnframe_mk_sgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t T, const float* A, Py_ssize_t sa,
                           Py_ssize_t sb, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc,
                           int accumulate) noexcept nogil

cdef extern from "cpu.h":
    int cnnframe_cpu_avx512() noexcept nogil

cdef extern from "simd.h":
    int cnnframe_simd_avx512
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

cdef extern from "depthwise.h":
    void cnnframe_dw_forward(const float* xh, int Wp, int C, const float* wd, int kh, int kw, int sh, int sw,
                             int dh, int dw, int Ho, int Wo, const float* b, float* y) noexcept nogil
    void cnnframe_dw_weight_grad(const float* xh, int Wp, int C, int kh, int kw, int sh, int sw, int dh, int dw,
                                 int Ho, int Wo, const float* g, int g_row, float* gw) noexcept nogil
    void cnnframe_dw_forward_f(const float* xh, int Wp, int C, const float* wd, int kh, int kw,
                               int sh, int sw, int dh, int dw, int Ho, int Wo, const float* b,
                               float* y) noexcept nogil
    void cnnframe_dw_forward_d(const double* xh, int Wp, int C, const double* wd, int kh, int kw,
                               int sh, int sw, int dh, int dw, int Ho, int Wo, const double* b,
                               double* y) noexcept nogil
    void cnnframe_dw_backward_f(const float* xh, int Wp, int C, const float* wd, int kh, int kw,
                                int sh, int sw, int dh, int dw, int Ho, int Wo, const float* g,
                                float* gw, float* dxh) noexcept nogil
    void cnnframe_dw_backward_d(const double* xh, int Wp, int C, const double* wd, int kh, int kw,
                                int sh, int sw, int dh, int dw, int Ho, int Wo, const double* g,
                                double* gw, double* dxh) noexcept nogil

cnnframe_simd_avx512 = cnnframe_cpu_avx512()

# float32 products use the AVX-512 micro-kernel where the CPU has it, BLAS otherwise.
cdef bint USE_MK = cnnframe_cpu_avx512()


def microkernel_available():
    """True when the CPU runs the AVX-512 micro-kernel (float32 products then bypass BLAS)."""
    return bool(cnnframe_cpu_avx512())


def _use_microkernel(bint on):
    """Switch the micro-kernel and the AVX-512 helpers on or off (tests run both paths); returns
    the previous setting."""
    global USE_MK, cnnframe_simd_avx512
    old = USE_MK
    USE_MK = on and cnnframe_cpu_avx512()
    cnnframe_simd_avx512 = on and cnnframe_cpu_avx512()
    return bool(old)


# When the implicit-im2col path runs (float32 on the micro-kernel); see the section at the end.
cdef bint USE_IMPLICIT = 1
cdef int IMPLICIT_MAX_WASTE_PCT = 8    # uniform rows up to this many extra columns, listed beyond
cdef int IMPLICIT_DX_MIN_CHANNELS = 16  # gx's outputs are the C input channels
# Output pixels per micro-kernel call: enough rows for long products, few enough to stay in L2.
cdef Py_ssize_t IMPLICIT_PIXELS = 512


def _implicit_policy(on=None, max_waste_pct=None, dx_min_channels=None):
    """Read or change when the implicit path runs (tests force every path); returns the old policy."""
    global USE_IMPLICIT, IMPLICIT_MAX_WASTE_PCT, IMPLICIT_DX_MIN_CHANNELS
    old = dict(on=bool(USE_IMPLICIT), max_waste_pct=IMPLICIT_MAX_WASTE_PCT,
               dx_min_channels=IMPLICIT_DX_MIN_CHANNELS)
    if on is not None:
        USE_IMPLICIT = on
    if max_waste_pct is not None:
        IMPLICIT_MAX_WASTE_PCT = max_waste_pct
    if dx_min_channels is not None:
        IMPLICIT_DX_MIN_CHANNELS = dx_min_channels
    return old


cdef inline bint little_waste(int padded, int out, int pct) noexcept nogil:
    return 100 * padded <= (100 + pct) * out


# Work is cut into a fixed number of spans, independent of the thread count; each span owns its
# gradient accumulators, summed in span order.  So results are bit-identical for any number of
# threads (threads only decide which span runs where), and the thread count may change between
# calls (cnnframe.parallel lowers it when other processes keep cores busy).
cdef int SPANS = max(8, os.cpu_count() or 1)

# Each span of a backward pass owns a weight-gradient accumulator: cap their total memory (the cap
# depends only on the layer's shape, so results still do not depend on the thread count).
cdef Py_ssize_t SPAN_ACC_BYTES = 64 << 20

# Rows of col per GEMM: about this many elements keeps a chunk in L2 next to the weights.
cdef Py_ssize_t CHUNK_ELEMS = 262144
cdef Py_ssize_t MIN_ROWS = 32
cdef Py_ssize_t MAX_ROWS = 2048


# -- Sizes -------------------------------------------------------------------------------------------

cdef struct Sizes:
    int N, C, H, W          # input
    int K, kh, kw, Ho, Wo   # output channels, kernel, output
    int sh, sw, ph, pw, dh, dw
    int groups, Cg, Kg      # groups; input and output channels per group
    int Hp, Wp              # padded input
    Py_ssize_t P            # Ho·Wo: output pixels per image
    Py_ssize_t rows         # N·P: rows of the im2col matrix
    Py_ssize_t ncol         # kh·kw·C: length of an im2col row (all groups)
    Py_ssize_t ncolg        # kh·kw·Cg: one group's part of it
    Py_ssize_t img          # Hp·Wp·C: one padded channels-last image


cdef Sizes conv_sizes(Py_ssize_t* x_shape, Py_ssize_t* w_shape, int Ho, int Wo, int sh, int sw,
                      int ph, int pw, int dh, int dw, int groups) noexcept:
    """Every size a kernel needs, computed once per call."""
    cdef Sizes z
    z.N, z.C, z.H, z.W = x_shape[0], x_shape[1], x_shape[2], x_shape[3]
    z.K, z.kh, z.kw = w_shape[0], w_shape[2], w_shape[3]
    z.Ho, z.Wo = Ho, Wo
    z.sh, z.sw, z.ph, z.pw, z.dh, z.dw = sh, sw, ph, pw, dh, dw
    z.groups, z.Cg, z.Kg = groups, z.C // groups, z.K // groups
    z.Hp, z.Wp = z.H + 2 * ph, z.W + 2 * pw
    z.P = <Py_ssize_t>Ho * Wo
    z.rows = z.P * z.N
    z.ncol = <Py_ssize_t>z.kh * z.kw * z.C
    z.ncolg = <Py_ssize_t>z.kh * z.kw * z.Cg
    z.img = <Py_ssize_t>z.Hp * z.Wp * z.C
    return z


cdef inline bint is_depthwise(Sizes* z) noexcept nogil:
    return z.groups > 1 and z.Cg == 1 and z.Kg == 1


cdef int clamp_threads(int nthreads) noexcept nogil:
    if nthreads < 1:
        return 1
    return SPANS if nthreads > SPANS else nthreads


cdef int grad_spans(Py_ssize_t items, Py_ssize_t acc_elems) noexcept nogil:
    """Spans for a backward pass: SPANS, at most one per item, at most SPAN_ACC_BYTES of gw."""
    cdef Py_ssize_t n = SPANS, cap = SPAN_ACC_BYTES // (acc_elems * 8)
    if n > items:
        n = items
    if n > cap:
        n = cap
    return <int>(n if n > 1 else 1)


cdef Py_ssize_t chunk_rows(Py_ssize_t ncol) noexcept nogil:
    cdef Py_ssize_t r = CHUNK_ELEMS // ncol
    if r < MIN_ROWS:
        r = MIN_ROWS
    if r > MAX_ROWS:
        r = MAX_ROWS
    return r


# -- Small helpers -----------------------------------------------------------------------------------

cdef inline void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                         const floating* a, int lda, const floating* b, int ldb, floating beta,
                         floating* c, int ldc) noexcept nogil:
    """Row-major C (m×n) = alpha·op(A)·op(B) + beta·C.

    A row-major array is the column-major transpose, so ask column-major BLAS for
    Cᵀ = op(B)ᵀ·op(A)ᵀ: B first, m and n swapped, transpose flags kept.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline void transpose(const floating* src, Py_ssize_t lds, Py_ssize_t npix, Py_ssize_t F,
                           floating* dst, Py_ssize_t ldd, const floating* b) noexcept nogil:
    """dst[f·ldd + p] = src[p·lds + f] (+ b[f] unless b is NULL)."""
    if floating is float:
        cnnframe_transpose_f(src, lds, npix, F, dst, ldd, b)
    else:
        cnnframe_transpose_d(src, lds, npix, F, dst, ldd, b)


cdef inline floating sum_run(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return cnnframe_sum_f(x, n)
    else:
        return cnnframe_sum_d(x, n)


cdef inline void add_run(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    if floating is float:
        cnnframe_add_f(dst, src, n)
    else:
        cnnframe_add_d(dst, src, n)


cdef void to_channels_last(const floating* x, int C, int H, int W, int ph, int pw,
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


cdef void from_channels_last(const floating* xh, int C, int H, int W, int ph, int pw,
                             floating* x) noexcept nogil:
    """x[c, r, q] = Xh[r + ph, q + pw, c]: crop the padding and go back to channels-first."""
    cdef int r
    cdef Py_ssize_t Wp = W + 2 * pw
    for r in range(H):
        # row r: (W × C) → (C × W, rows H·W apart)
        transpose(xh + ((r + ph) * Wp + pw) * C, C, W, C, x + <Py_ssize_t>r * W, <Py_ssize_t>H * W, NULL)


cdef void fill_channels_last(const floating[:, :, :, ::1] x, int ph, int pw, floating* xh,
                             Py_ssize_t img, int nthreads):
    """Image n of x (N, C, H, W) → zero-padded channels-last xh[n·img : ...] (H + 2ph, W + 2pw, C),
    images in parallel."""
    cdef int N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], n
    for n in prange(N, nogil=True, schedule='static', num_threads=nthreads):
        to_channels_last(&x[n, 0, 0, 0], C, H, W, ph, pw, xh + n * img)


cdef void im2col_rows(const floating* xh, Py_ssize_t row0, Py_ssize_t row1, Sizes* z,
                      floating* col) noexcept nogil:
    """col[row - row0, ((grp·kh + m)·kw + l)·Cg + c] = Xh[n, i·sh + m·dh, j·sw + l·dw, grp·Cg + c]
    for pixel rows row0 <= row < row1, row = (n·Ho + i)·Wo + j."""
    cdef Py_ssize_t row, n = row0 // z.P, run = <Py_ssize_t>z.kw * z.C
    cdef int i = <int>((row0 - n * z.P) // z.Wo), j = <int>((row0 - n * z.P) % z.Wo), m, l, grp
    cdef bint whole_rows = z.groups == 1 and z.dw == 1
    cdef floating* dst = col
    cdef const floating* src
    for row in range(row0, row1):
        for grp in range(z.groups):
            for m in range(z.kh):
                src = xh + n * z.img + ((<Py_ssize_t>(i * z.sh + m * z.dh)) * z.Wp + j * z.sw) * z.C
                if whole_rows:
                    # kw neighbouring pixels: one contiguous run of kw·C values.
                    memcpy(dst, src, run * sizeof(floating))
                    dst += run
                else:
                    for l in range(z.kw):
                        memcpy(dst, src + <Py_ssize_t>l * z.dw * z.C + grp * z.Cg, z.Cg * sizeof(floating))
                        dst += z.Cg
        # Next pixel: step j, carrying into i and n (no divisions per row).
        j += 1
        if j == z.Wo:
            j = 0
            i += 1
            if i == z.Ho:
                i = 0
                n += 1


cdef void col2im_rows(const floating* col, Py_ssize_t row0, Py_ssize_t row1, Sizes* z,
                      floating* xh) noexcept nogil:
    """The adjoint of im2col_rows: Xh[n, i·sh + m·dh, j·sw + l·dw, grp·Cg + c] += col[row - row0, ...]."""
    cdef Py_ssize_t row, n = row0 // z.P, run = <Py_ssize_t>z.kw * z.C
    cdef int i = <int>((row0 - n * z.P) // z.Wo), j = <int>((row0 - n * z.P) % z.Wo), m, l, grp
    cdef bint whole_rows = z.groups == 1 and z.dw == 1
    cdef const floating* src = col
    cdef floating* dst
    for row in range(row0, row1):
        for grp in range(z.groups):
            for m in range(z.kh):
                dst = xh + n * z.img + ((<Py_ssize_t>(i * z.sh + m * z.dh)) * z.Wp + j * z.sw) * z.C
                if whole_rows:
                    add_run(dst, src, run)
                    src += run
                else:
                    for l in range(z.kw):
                        add_run(dst + <Py_ssize_t>l * z.dw * z.C + grp * z.Cg, src, z.Cg)
                        src += z.Cg
        j += 1
        if j == z.Wo:
            j = 0
            i += 1
            if i == z.Ho:
                i = 0
                n += 1


cdef void reorder_weights(const floating* w, Sizes* z, floating* wr) noexcept nogil:
    """wr[k, (m·kw + l)·Cg + c] = w[k, c, m, l]: (K × ncolg), group grp in rows grp·Kg..., written
    in order."""
    cdef int k, c, t
    cdef Py_ssize_t taps = <Py_ssize_t>z.kh * z.kw
    for k in range(z.K):
        for t in range(taps):
            for c in range(z.Cg):
                wr[(k * taps + t) * z.Cg + c] = w[(k * z.Cg + c) * taps + t]


cdef void reorder_weights_t(const floating* w, Sizes* z, bint rotate, floating* wt,
                            int nthreads) noexcept nogil:
    """wt[grp][(m·kw + l)·Cg + c, k] = w[grp·Kg + k, c, m, l]: one (ncolg × Kg) block per group,
    written in order (k fastest).  With ``rotate``, the 180°-rotated kernel of eq. (4) with input
    and output channels swapped: wt[grp][(m·kw + l)·Kg + k, c] = w[grp·Kg + k, c, kh-1-m, kw-1-l],
    one (kh·kw·Kg × Cg) block per group.  Taps in parallel."""
    cdef Py_ssize_t taps = <Py_ssize_t>z.kh * z.kw, item, src
    cdef int grp, t, k, c
    cdef floating* dst
    for item in prange(z.groups * taps, nogil=True, schedule='static', num_threads=nthreads):
        grp = <int>(item // taps)
        t = <int>(item - grp * taps)
        dst = wt + item * z.Cg * z.Kg  # block (grp, t): Cg·Kg values either way
        if rotate:
            for k in range(z.Kg):
                src = (grp * z.Kg + k) * z.Cg * taps + (taps - 1 - t)
                for c in range(z.Cg):
                    dst[k * z.Cg + c] = w[src + c * taps]
        else:
            for c in range(z.Cg):
                src = (<Py_ssize_t>grp * z.Kg * z.Cg + c) * taps + t
                for k in range(z.Kg):
                    dst[c * z.Kg + k] = w[src + k * z.Cg * taps]


cdef void weights_t_to_grad(floating[:, :, ::1] acc, Sizes* z, floating[:, :, :, ::1] gw,
                            int nthreads) noexcept nogil:
    """gw[grp·Kg + k, c, m, l] += Σ_span acc[span, grp·ncolg + (m·kw + l)·Cg + c, k]: the per-span
    accumulators (one (ncolg × Kg) block per group) summed in span order, rows in parallel."""
    cdef Py_ssize_t r, taps = <Py_ssize_t>z.kh * z.kw, rows = z.groups * z.ncolg
    cdef int v, k, grp, c, t, nspans = acc.shape[0]
    cdef floating tot
    for r in prange(rows, nogil=True, schedule='static', num_threads=nthreads):
        grp = <int>(r // z.ncolg)
        t = <int>((r - grp * z.ncolg) // z.Cg)
        c = <int>(r - grp * z.ncolg - t * z.Cg)
        for k in range(z.Kg):
            tot = acc[0, r, k]
            for v in range(1, nspans):
                tot = tot + acc[v, r, k]
            gw[grp * z.Kg + k, c, t // z.kw, t % z.kw] += tot


cdef void span_sums(floating[:, ::1] acc, floating[::1] out) noexcept nogil:
    """out[k] += Σ_span acc[span, k], spans in order."""
    cdef Py_ssize_t k
    cdef int v
    cdef floating tot
    for k in range(acc.shape[1]):
        tot = acc[0, k]
        for v in range(1, acc.shape[0]):
            tot = tot + acc[v, k]
        out[k] += tot


# -- Forward ------------------------------------------------------------------------------------------

def forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, const floating[::1] b,
            floating[:, :, :, ::1] y, int sh, int sw, int ph, int pw, int dh, int dw, int groups,
            int nthreads):
    """Y = X ⋆ W + b (eqs. 1 and 5), written into ``y`` (N, K, Ho, Wo)."""
    cdef Sizes z = conv_sizes(x.shape, w.shape, y.shape[2], y.shape[3], sh, sw, ph, pw, dh, dw, groups)
    if z.rows == 0:
        return
    nthreads = clamp_threads(nthreads)
    if is_depthwise(&z):
        _depthwise_forward(x, w, b, y, &z, nthreads)
        return
    if floating is float:
        if USE_MK and USE_IMPLICIT:
            _forward_implicit(x, w, b, y, &z, nthreads)
            return
    cdef Py_ssize_t R = chunk_rows(z.ncol)
    bufs, release = SCRATCH.get(
        np.float32 if floating is float else np.float64,
        [(z.N * z.img,), (z.K * z.ncolg,), (nthreads, R * z.ncol), (nthreads, R * z.K)],
    )
    cdef floating[::1] xh, wr
    cdef floating[:, ::1] col_buf, out_buf
    try:
        xh, wr, col_buf, out_buf = bufs
        _forward(x, w, b, y, &z, nthreads, R, xh, wr, col_buf, out_buf)
    finally:
        release()


cdef void _forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                   const floating[::1] b, floating[:, :, :, ::1] y, Sizes* z, int nthreads,
                   Py_ssize_t R, floating[::1] xh, floating[::1] wr, floating[:, ::1] col_buf,
                   floating[:, ::1] out_buf):
    fill_channels_last(x, z.ph, z.pw, &xh[0], z.img, nthreads)
    cdef bint mk = floating is float and USE_MK
    if mk:
        reorder_weights_t(&w[0, 0, 0, 0], z, False, &wr[0], nthreads)  # (ncolg × Kg) blocks for the micro-kernel
    else:
        reorder_weights(&w[0, 0, 0, 0], z, &wr[0])
    cdef int v, grp, nspans = SPANS if SPANS < z.rows else <int>z.rows
    cdef Py_ssize_t r0, r1, c0, c1, nr, row, n, seg
    cdef floating* col
    cdef floating* out
    for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
        col = &col_buf[threadid(), 0]
        out = &out_buf[threadid(), 0]
        r0 = z.rows * v // nspans
        r1 = z.rows * (v + 1) // nspans
        c0 = r0
        while c0 < r1:
            c1 = c0 + R if c0 + R < r1 else r1
            nr = c1 - c0
            im2col_rows(&xh[0], c0, c1, z, col)
            for grp in range(z.groups):
                # out[:, group's Kg] (nr × Kg) = col[:, group's ncolg] (nr × ncolg) · Wr_grpᵀ
                if floating is float:
                    if mk:
                        cnnframe_mk_sgemm(nr, z.Kg, z.ncolg, col + grp * z.ncolg, z.ncol, 1,
                                          &wr[0] + grp * z.ncolg * z.Kg, z.Kg, out + grp * z.Kg, z.K, 0)
                    else:
                        gemm_rm(False, True, <int>nr, z.Kg, <int>z.ncolg, 1, col + grp * z.ncolg, <int>z.ncol,
                                &wr[0] + grp * z.Kg * z.ncolg, <int>z.ncolg, 0, out + grp * z.Kg, z.K)
                else:
                    gemm_rm(False, True, <int>nr, z.Kg, <int>z.ncolg, 1, col + grp * z.ncolg, <int>z.ncol,
                            &wr[0] + grp * z.Kg * z.ncolg, <int>z.ncolg, 0, out + grp * z.Kg, z.K)
            # Transpose out into Y image by image, adding the bias on the way.
            row = c0
            while row < c1:
                n = row // z.P
                seg = (n + 1) * z.P if (n + 1) * z.P < c1 else c1
                transpose(out + (row - c0) * z.K, z.K, seg - row, z.K, &y[n, 0, 0, 0] + (row - n * z.P), z.P, &b[0])
                row = seg
            c0 = c1


# -- Backward -----------------------------------------------------------------------------------------

def backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
             const floating[:, :, :, ::1] gy, floating[:, :, :, ::1] gx, floating[:, :, :, ::1] gw,
             floating[::1] gb, int sh, int sw, int ph, int pw, int dh, int dw, int groups, int nthreads):
    """Add gW (eq. 2) into ``gw`` and gb (eq. 3) into ``gb``; unless ``gx`` is None, write gX
    (eq. 4) into it (eq. 5 for groups > 1)."""
    cdef Sizes z = conv_sizes(x.shape, w.shape, gy.shape[2], gy.shape[3], sh, sw, ph, pw, dh, dw, groups)
    cdef bint need_dx = gx is not None
    if z.rows == 0:
        return
    nthreads = clamp_threads(nthreads)
    if is_depthwise(&z):
        _depthwise_backward(x, w, gy, gx, gw, gb, &z, nthreads)
        return
    cdef bint dw_done = False
    if floating is float:
        if USE_MK and USE_IMPLICIT:
            # Float32 on the micro-kernel: gW reads the input in place (any stride); so does gX,
            # as eq. (4) itself, a stride-1 correlation of G padded by d(k-1) - p (so stride 1 and
            # p <= d(k-1)), when its C outputs fill the micro-kernel's vectors.
            _weight_grad_implicit(x, gy, gw, gb, &z, nthreads)
            if (need_dx and sh == 1 and sw == 1 and z.C >= IMPLICIT_DX_MIN_CHANNELS
                    and dh * (z.kh - 1) >= ph and dw * (z.kw - 1) >= pw):
                _input_grad_implicit(w, gy, gx, &z, nthreads)
                return
            if not need_dx:
                return
            dw_done = True  # the explicit pass below computes gX only
    # Spans are whole images when there are enough images: then all spans share one gx;
    # otherwise each span scatters into a private copy of gx, summed afterwards in span order.
    cdef int nspans = grad_spans(z.rows, z.K * z.ncolg)
    cdef bint by_image = z.N >= nspans
    cdef int ncopies = 1 if by_image else nspans
    cdef Py_ssize_t R = chunk_rows(z.ncol)
    bufs, release = SCRATCH.get(
        np.float32 if floating is float else np.float64,
        [(0 if dw_done else z.N * z.img,), (z.K * z.ncolg,), (ncopies, z.N * z.img if need_dx else 0),
         (nthreads, R * z.ncol), (nthreads, R * z.K), (nspans, z.ncolg * z.groups, z.Kg), (nspans, z.K)],
    )
    cdef floating[::1] xh, wr
    cdef floating[:, ::1] dxh, col_buf, g_buf, gb_acc
    cdef floating[:, :, ::1] gw_acc
    try:
        for buf in bufs[2], bufs[6]:
            buf.fill(0)
        xh, wr, dxh, col_buf, g_buf, gw_acc, gb_acc = bufs
        _backward(x, w, gy, gx, gb, &z, need_dx, dw_done, nthreads, by_image, R, xh, wr, dxh,
                  col_buf, g_buf, gw_acc, gb_acc)
        if not dw_done:
            weights_t_to_grad(gw_acc, &z, gw, nthreads)
            span_sums(gb_acc, gb)
    finally:
        release()


cdef void _backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    const floating[:, :, :, ::1] gy, floating[:, :, :, ::1] gx, floating[::1] gb,
                    Sizes* z, bint need_dx, bint dw_done, int nthreads, bint by_image, Py_ssize_t R,
                    floating[::1] xh, floating[::1] wr, floating[:, ::1] dxh, floating[:, ::1] col_buf,
                    floating[:, ::1] g_buf, floating[:, :, ::1] gw_acc, floating[:, ::1] gb_acc):
    cdef bint mk = floating is float and USE_MK
    if not dw_done:
        fill_channels_last(x, z.ph, z.pw, &xh[0], z.img, nthreads)
    if need_dx:
        reorder_weights(&w[0, 0, 0, 0], z, &wr[0])
    cdef int v, grp, copy, k, nspans = gw_acc.shape[0]
    cdef Py_ssize_t r0, r1, c0, c1, nr, row, n, seg
    cdef floating* col
    cdef floating* g
    cdef const floating* gp
    for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
        col = &col_buf[threadid(), 0]
        g = &g_buf[threadid(), 0]
        if not dw_done:
            memset(&gw_acc[v, 0, 0], 0, gw_acc.shape[1] * gw_acc.shape[2] * sizeof(floating))
        if by_image:
            r0 = (z.N * v // nspans) * z.P
            r1 = (z.N * (v + 1) // nspans) * z.P
            copy = 0
        else:
            r0 = z.rows * v // nspans
            r1 = z.rows * (v + 1) // nspans
            copy = v
        c0 = r0
        while c0 < r1:
            c1 = c0 + R if c0 + R < r1 else r1
            nr = c1 - c0
            # This chunk's G pixel-major, g (nr × K) (the rows of col are pixels too), and its
            # bias gradient, eq. (3).
            row = c0
            while row < c1:
                n = row // z.P
                seg = (n + 1) * z.P if (n + 1) * z.P < c1 else c1
                gp = &gy[n, 0, 0, 0] + (row - n * z.P)
                transpose(gp, z.P, z.K, seg - row, g + (row - c0) * z.K, z.K, NULL)
                if not dw_done:
                    for k in range(z.K):
                        gb_acc[v, k] += sum_run(gp + k * z.P, seg - row)
                row = seg
            if not dw_done:
                im2col_rows(&xh[0], c0, c1, z, col)
                for grp in range(z.groups):
                    # eq. (2): gwᵀ_grp (ncolg × Kg) += col_grpᵀ (ncolg × nr) · g_grp (nr × Kg)
                    if floating is float:
                        if mk:
                            cnnframe_mk_sgemm(z.ncolg, z.Kg, nr, col + grp * z.ncolg, 1, z.ncol,
                                              g + grp * z.Kg, z.K, &gw_acc[v, grp * z.ncolg, 0], z.Kg, 1)
                        else:
                            gemm_rm(True, False, <int>z.ncolg, z.Kg, <int>nr, 1, col + grp * z.ncolg, <int>z.ncol,
                                    g + grp * z.Kg, z.K, 1, &gw_acc[v, grp * z.ncolg, 0], z.Kg)
                    else:
                        gemm_rm(True, False, <int>z.ncolg, z.Kg, <int>nr, 1, col + grp * z.ncolg, <int>z.ncol,
                                g + grp * z.Kg, z.K, 1, &gw_acc[v, grp * z.ncolg, 0], z.Kg)
            if need_dx:
                for grp in range(z.groups):
                    # eq. (4), col2im form: dcol_grp (nr × ncolg) = g_grp (nr × Kg) · Wr_grp (Kg × ncolg),
                    # written over col (no longer needed)
                    if floating is float:
                        if mk:
                            cnnframe_mk_sgemm(nr, z.ncolg, z.Kg, g + grp * z.Kg, z.K, 1,
                                              &wr[0] + grp * z.Kg * z.ncolg, z.ncolg, col + grp * z.ncolg, z.ncol, 0)
                        else:
                            gemm_rm(False, False, <int>nr, <int>z.ncolg, z.Kg, 1, g + grp * z.Kg, z.K,
                                    &wr[0] + grp * z.Kg * z.ncolg, <int>z.ncolg, 0, col + grp * z.ncolg, <int>z.ncol)
                    else:
                        gemm_rm(False, False, <int>nr, <int>z.ncolg, z.Kg, 1, g + grp * z.Kg, z.K,
                                &wr[0] + grp * z.Kg * z.ncolg, <int>z.ncolg, 0, col + grp * z.ncolg, <int>z.ncol)
                col2im_rows(col, c0, c1, z, &dxh[copy, 0])
            c0 = c1
    if not need_dx:
        return
    cdef floating[::1] dsum
    if dxh.shape[0] > 1:
        dsum = np.asarray(dxh).sum(axis=0)  # copies summed in span order
    else:
        dsum = dxh[0]
    cdef int nn
    for nn in prange(z.N, nogil=True, schedule='static', num_threads=nthreads):
        from_channels_last(&dsum[0] + nn * z.img, z.C, z.H, z.W, z.ph, z.pw, &gx[nn, 0, 0, 0])


# -- Depthwise (groups = C = K) ----------------------------------------------------------------------

cdef void depthwise_weights(const floating* w, Sizes* z, bint rotate, floating* wd) noexcept nogil:
    """wd[(m·kw + l)·C + c] = w[c, 0, m, l]: taps outer, channels contiguous; with ``rotate`` the
    180°-rotated kernel of eq. (4), w[c, 0, kh-1-m, kw-1-l]."""
    cdef int c, t, taps = z.kh * z.kw
    for c in range(z.C):
        for t in range(taps):
            wd[<Py_ssize_t>t * z.C + c] = w[<Py_ssize_t>c * taps + (taps - 1 - t if rotate else t)]


cdef _depthwise_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                      const floating[::1] b, floating[:, :, :, ::1] y, Sizes* z, int nthreads):
    """Eq. (5) with Cg = Kg = 1, image by image: channels-last copy, then loops along channels."""
    bufs, release = SCRATCH.get(
        np.float32 if floating is float else np.float64,
        [(nthreads, z.img), (nthreads, z.P * z.C), (z.kh * z.kw * z.C,)],
    )
    cdef floating[:, ::1] xh = bufs[0], out = bufs[1]
    cdef floating[::1] wd = bufs[2]
    cdef int n, t
    try:
        depthwise_weights(&w[0, 0, 0, 0], z, False, &wd[0])
        for n in prange(z.N, nogil=True, schedule='static', num_threads=nthreads):
            t = threadid()
            to_channels_last(&x[n, 0, 0, 0], z.C, z.H, z.W, z.ph, z.pw, &xh[t, 0])
            if floating is float:
                cnnframe_dw_forward(&xh[t, 0], z.Wp, z.C, &wd[0], z.kh, z.kw, z.sh, z.sw, z.dh, z.dw,
                                    z.Ho, z.Wo, &b[0], &out[t, 0])
            else:
                cnnframe_dw_forward_d(&xh[t, 0], z.Wp, z.C, &wd[0], z.kh, z.kw, z.sh, z.sw, z.dh, z.dw,
                                      z.Ho, z.Wo, &b[0], &out[t, 0])
            transpose(&out[t, 0], z.C, z.P, z.C, &y[n, 0, 0, 0], z.P, NULL)
    finally:
        release()


cdef _depthwise_backward_correlate(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w,
                                   const float[:, :, :, ::1] gy, float[:, :, :, ::1] gx,
                                   float[:, :, :, ::1] gw, float[::1] gb, Sizes* z, int nthreads):
    """Eq. (5) with Cg = Kg = 1, stride 1: image by image, G turned channels-last with the zero
    padding d(k-1) - p of eq. (4); then gW correlates X with G (eq. 2) and gX is eq. (4) itself, a
    depthwise correlation of padded G with the rotated kernel (the forward loops)."""
    cdef bint need_dx = gx is not None
    cdef int nspans = SPANS if SPANS < z.N else z.N
    cdef int pgh = z.dh * (z.kh - 1) - z.ph, pgw = z.dw * (z.kw - 1) - z.pw
    cdef int Hg = z.Ho + 2 * pgh, Wg = z.Wo + 2 * pgw
    cdef Py_ssize_t taps = <Py_ssize_t>z.kh * z.kw, gimg = <Py_ssize_t>Hg * Wg * z.C
    bufs, release = SCRATCH.get(
        np.float32,
        [(nthreads, z.img), (nthreads, gimg), (nthreads, <Py_ssize_t>z.H * z.W * z.C if need_dx else 0),
         (taps * z.C,), (nspans, taps * z.C), (nspans, z.C), (z.C,)],
    )
    cdef float[:, ::1] xh = bufs[0], gh = bufs[1], out = bufs[2], acc = bufs[4], bacc = bufs[5]
    cdef float[::1] wrot = bufs[3], zero = bufs[6]
    cdef int v, n, t, c
    try:
        bufs[4].fill(0)
        bufs[5].fill(0)
        bufs[6].fill(0)
        depthwise_weights(&w[0, 0, 0, 0], z, True, &wrot[0])
        for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
            t = threadid()
            for n in range(z.N * v // nspans, z.N * (v + 1) // nspans):
                to_channels_last(&x[n, 0, 0, 0], z.C, z.H, z.W, z.ph, z.pw, &xh[t, 0])
                to_channels_last(&gy[n, 0, 0, 0], z.C, z.Ho, z.Wo, pgh, pgw, &gh[t, 0])
                for c in range(z.C):
                    bacc[v, c] += sum_run(&gy[n, c, 0, 0], z.P)  # eq. (3)
                cnnframe_dw_weight_grad(&xh[t, 0], z.Wp, z.C, z.kh, z.kw, 1, 1, z.dh, z.dw, z.Ho, z.Wo,
                                        &gh[t, 0] + (<Py_ssize_t>pgh * Wg + pgw) * z.C, Wg, &acc[v, 0])
                if need_dx:
                    cnnframe_dw_forward(&gh[t, 0], Wg, z.C, &wrot[0], z.kh, z.kw, 1, 1, z.dh, z.dw, z.H, z.W,
                                        &zero[0], &out[t, 0])
                    transpose(&out[t, 0], z.C, <Py_ssize_t>z.H * z.W, z.C, &gx[n, 0, 0, 0], <Py_ssize_t>z.H * z.W, NULL)
        # Spans summed in a fixed order; acc[v, (m·kw + l)·C + c] → gw[c, 0, m, l].
        tot = np.asarray(acc).sum(axis=0).reshape(z.kh, z.kw, z.C).transpose(2, 0, 1)
        np.add(np.asarray(gw)[:, 0], tot, out=np.asarray(gw)[:, 0])
        np.add(np.asarray(gb), np.asarray(bacc).sum(axis=0), out=np.asarray(gb))
    finally:
        release()


cdef _depthwise_backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                         const floating[:, :, :, ::1] gy, floating[:, :, :, ::1] gx,
                         floating[:, :, :, ::1] gw, floating[::1] gb, Sizes* z, int nthreads):
    """Eq. (5) with Cg = Kg = 1: spans of whole images, each with its own gw/gb accumulators."""
    cdef bint need_dx = gx is not None
    cdef int nspans = SPANS if SPANS < z.N else z.N
    cdef Py_ssize_t taps = <Py_ssize_t>z.kh * z.kw
    if floating is float:
        if z.sh == 1 and z.sw == 1 and z.dh * (z.kh - 1) >= z.ph and z.dw * (z.kw - 1) >= z.pw:
            _depthwise_backward_correlate(x, w, gy, gx, gw, gb, z, nthreads)
            return
    bufs, release = SCRATCH.get(
        np.float32 if floating is float else np.float64,
        [(nthreads, z.img), (nthreads, z.img if need_dx else 0), (nthreads, z.P * z.C),
         (taps * z.C,), (nspans, taps * z.C), (nspans, z.C)],
    )
    cdef floating[:, ::1] xh = bufs[0], dxh = bufs[1], g = bufs[2], acc = bufs[4], bacc = bufs[5]
    cdef floating[::1] wd = bufs[3]
    cdef int v, n, t, c
    cdef floating* dx_t
    try:
        bufs[4].fill(0)
        bufs[5].fill(0)
        depthwise_weights(&w[0, 0, 0, 0], z, False, &wd[0])
        for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
            t = threadid()
            for n in range(z.N * v // nspans, z.N * (v + 1) // nspans):
                to_channels_last(&x[n, 0, 0, 0], z.C, z.H, z.W, z.ph, z.pw, &xh[t, 0])
                transpose(&gy[n, 0, 0, 0], z.P, z.C, z.P, &g[t, 0], z.C, NULL)
                for c in range(z.C):
                    bacc[v, c] += sum_run(&gy[n, c, 0, 0], z.P)  # eq. (3)
                dx_t = NULL
                if need_dx:
                    dx_t = &dxh[t, 0]
                    memset(dx_t, 0, z.img * sizeof(floating))
                if floating is float:
                    cnnframe_dw_backward_f(&xh[t, 0], z.Wp, z.C, &wd[0], z.kh, z.kw, z.sh, z.sw, z.dh,
                                           z.dw, z.Ho, z.Wo, &g[t, 0], &acc[v, 0], dx_t)
                else:
                    cnnframe_dw_backward_d(&xh[t, 0], z.Wp, z.C, &wd[0], z.kh, z.kw, z.sh, z.sw, z.dh,
                                           z.dw, z.Ho, z.Wo, &g[t, 0], &acc[v, 0], dx_t)
                if need_dx:
                    from_channels_last(dx_t, z.C, z.H, z.W, z.ph, z.pw, &gx[n, 0, 0, 0])
        # Spans summed in a fixed order; acc[v, (m·kw + l)·C + c] → gw[c, 0, m, l].
        tot = np.asarray(acc).sum(axis=0).reshape(z.kh, z.kw, z.C).transpose(2, 0, 1)
        np.add(np.asarray(gw)[:, 0], tot, out=np.asarray(gw)[:, 0])
        np.add(np.asarray(gb), np.asarray(bacc).sum(axis=0), out=np.asarray(gb))
    finally:
        release()


# -- Implicit im2col (float32, AVX-512 micro-kernel) --------------------------------------------------
#
# Output pixel (i, j) reads, for each kernel row m (a "segment"), the contiguous run of kw·C values
# of the padded channels-last image starting at pixel (i·sh + m·dh, j·sw): the micro-kernel reads
# those runs in place, with no col buffer and no copies.  Its A rows (one per output pixel) are
# either
#   - uniform (stride 1): every output row computed over the full padded width Wp, so pixel
#     q = i·Wp + j starts at q·C and rows are C apart; the Wp - Wo extra columns per row are
#     computed and dropped (worth it while they are few: IMPLICIT_MAX_WASTE_PCT), or
#   - listed: a table of each valid output pixel's offset, any stride, nothing dropped.
# With groups (or dilation), a segment is one tap: Cg values of group grp.
#
# The input gradient (eq. 4) is then literally the same computation: a stride-1 correlation of G,
# zero-padded by d·(k-1) - p, with the 180°-rotated, channel-swapped kernel.

cdef extern from "microkernel.h":
    void cnnframe_mk_sgemm_rows(Py_ssize_t M, Py_ssize_t N, Py_ssize_t nseg, Py_ssize_t T,
                                const float* A, const Py_ssize_t* arow, Py_ssize_t sb,
                                const Py_ssize_t* aoff, const float* B, Py_ssize_t ldb,
                                const Py_ssize_t* boff, float* C, Py_ssize_t ldc, int accumulate) noexcept nogil
    void cnnframe_mk_sgemm_steps(Py_ssize_t M, Py_ssize_t N, Py_ssize_t T, const float* A,
                                 const Py_ssize_t* toff, const float* B, Py_ssize_t ldb, float* C,
                                 Py_ssize_t ldc, int accumulate) noexcept nogil


cdef struct Correlation:
    # out[n, grp·og + o, i, j] = b[grp·og + o]
    #     + Σ_s Σ_t src[n, ((i·sh)·Wp + j·sw)·chans + grp·cg + aoff[s] + t] · wt_grp[boff[s] + t, o]
    # over a padded channels-last source (N images of `img` elements), wt_grp being group grp's
    # (kh·kw·cg × og) block of packed weights.
    int N, Ho, Wo, Wp, sh, sw, chans, outs, groups, cg, og
    Py_ssize_t img, nseg, T
    bint listed             # A rows from rowoff (else uniform, stride 1, over the padded width)
    Py_ssize_t per_item     # output rows (uniform) or pixels (listed) per work item
    Py_ssize_t items_per_image


cdef Correlation plan_correlation(int N, int Ho, int Wo, int Wp, int sh, int sw, int chans, int outs,
                                  int groups, Py_ssize_t img, int kh, int kw, int dw,
                                  bint allow_listed) noexcept nogil:
    cdef Correlation c
    cdef Py_ssize_t share
    c.N, c.Ho, c.Wo, c.Wp, c.sh, c.sw, c.chans, c.outs, c.groups = N, Ho, Wo, Wp, sh, sw, chans, outs, groups
    c.cg, c.og, c.img = chans // groups, outs // groups, img
    if groups == 1 and dw == 1:
        c.nseg, c.T = kh, <Py_ssize_t>kw * chans
    else:
        c.nseg, c.T = <Py_ssize_t>kh * kw, c.cg
    c.listed = allow_listed and not (sh == 1 and sw == 1 and little_waste(Wp, Wo, IMPLICIT_MAX_WASTE_PCT))
    # About IMPLICIT_PIXELS per item, but at least SPANS items when the batch is small (one image
    # would otherwise leave threads idle).
    if c.listed:
        c.per_item = IMPLICIT_PIXELS
        share = (<Py_ssize_t>Ho * Wo * N) // SPANS
        if c.per_item > share:
            c.per_item = share
        if c.per_item < 1:
            c.per_item = 1
        c.items_per_image = (<Py_ssize_t>Ho * Wo + c.per_item - 1) // c.per_item
    else:
        c.per_item = IMPLICIT_PIXELS // Wp
        share = (<Py_ssize_t>Ho * N) // SPANS
        if c.per_item > share:
            c.per_item = share
        if c.per_item < 1:
            c.per_item = 1
        if c.per_item > Ho:
            c.per_item = Ho
        c.items_per_image = (Ho + c.per_item - 1) // c.per_item
    return c


cdef Py_ssize_t out_rows(Correlation* c) noexcept nogil:
    """Rows of a work item's output buffer."""
    return c.per_item if c.listed else c.per_item * c.Wp


cdef void segments(int kh, int kw, int dh, int dw, Correlation* c, Py_ssize_t* aoff,
                   Py_ssize_t* boff, Py_ssize_t* rowoff) noexcept nogil:
    """The A offsets (source elements) and B offsets (rows of a group's packed weights) of each
    segment: one per kernel row (kw·chans values) with one group and dw = 1, else one per tap
    (cg values); and, for listed rows, each output pixel's offset."""
    cdef int m, l, i, j
    if c.nseg == kh and c.T == <Py_ssize_t>kw * c.chans:
        for m in range(kh):
            aoff[m] = <Py_ssize_t>m * dh * c.Wp * c.chans
            boff[m] = <Py_ssize_t>m * kw * c.chans
    else:
        for m in range(kh):
            for l in range(kw):
                aoff[m * kw + l] = (<Py_ssize_t>m * dh * c.Wp + <Py_ssize_t>l * dw) * c.chans
                boff[m * kw + l] = (<Py_ssize_t>m * kw + l) * c.cg
    if c.listed:
        for i in range(c.Ho):
            for j in range(c.Wo):
                rowoff[<Py_ssize_t>i * c.Wo + j] = (<Py_ssize_t>i * c.sh * c.Wp + <Py_ssize_t>j * c.sw) * c.chans


cdef void correlate_chunk(Correlation* c, const float* a, Py_ssize_t n, Py_ssize_t chunk, const float* wt,
                          const float* b, float* y, float* out, const Py_ssize_t* aoff, const Py_ssize_t* boff,
                          const Py_ssize_t* rowoff) noexcept nogil:
    """Chunk ``chunk`` of image n of the correlation c describes, from a = that image's padded
    channels-last source, written into y (N, outs, Ho, Wo) with bias b."""
    cdef int grp
    cdef Py_ssize_t i, i0, i1, p0, p1, M, P = <Py_ssize_t>c.Ho * c.Wo, blk = c.nseg * c.T * c.og
    cdef float* yn = y + n * c.outs * P
    if c.listed:
        p0 = chunk * c.per_item
        p1 = p0 + c.per_item if p0 + c.per_item < P else P
        for grp in range(c.groups):
            cnnframe_mk_sgemm_rows(p1 - p0, c.og, c.nseg, c.T, a + grp * c.cg, rowoff + p0, 1, aoff,
                                   wt + grp * blk, c.og, boff, out + grp * c.og, c.outs, 0)
        transpose(out, c.outs, p1 - p0, c.outs, yn + p0, P, b)
    else:
        i0 = chunk * c.per_item
        i1 = i0 + c.per_item if i0 + c.per_item < c.Ho else c.Ho
        M = (i1 - i0 - 1) * c.Wp + c.Wo  # the last row's padding columns are not needed
        for grp in range(c.groups):
            cnnframe_mk_sgemm_seg(M, c.og, c.nseg, c.T, a + i0 * c.Wp * c.chans + grp * c.cg, c.chans, 1,
                                  aoff, wt + grp * blk, c.og, boff, out + grp * c.og, c.outs, 0)
        for i in range(i0, i1):
            transpose(out + (i - i0) * c.Wp * c.outs, c.outs, c.Wo, c.outs, yn + i * c.Wo, P, b)


cdef void implicit_conv(Correlation* c, const float* nchw, int H, int W, int ph, int pw, float* src,
                        Py_ssize_t src_stride, const float* wt, const float* b, float* y, int nthreads,
                        float* out_buf, Py_ssize_t out_stride, const Py_ssize_t* aoff,
                        const Py_ssize_t* boff, const Py_ssize_t* rowoff) noexcept nogil:
    """y (N, outs, Ho, Wo) = the correlation c describes (see Correlation), bias b added, of the
    source nchw (N, chans, H, W) padded by (ph, pw).  With many images each thread turns whole
    images channels-last into its own buffer (src + thread·src_stride, which stays in L2) and
    correlates them; otherwise the whole batch is turned channels-last into src first and threads
    share the chunks of all images."""
    cdef Py_ssize_t item, n, k, t
    cdef Py_ssize_t plane = <Py_ssize_t>c.chans * H * W
    if c.N >= SPANS:
        for n in prange(c.N, nogil=True, schedule='static', num_threads=nthreads):
            t = threadid()
            to_channels_last(nchw + n * plane, c.chans, H, W, ph, pw, src + t * src_stride)
            for k in range(c.items_per_image):
                correlate_chunk(c, src + t * src_stride, n, k, wt, b, y, out_buf + t * out_stride, aoff, boff,
                                rowoff)
        return
    for n in prange(c.N, nogil=True, schedule='static', num_threads=nthreads):
        to_channels_last(nchw + n * plane, c.chans, H, W, ph, pw, src + n * src_stride)
    for item in prange(c.N * c.items_per_image, nogil=True, schedule='static', num_threads=nthreads):
        n = item // c.items_per_image
        correlate_chunk(c, src + n * src_stride, n, item - n * c.items_per_image, wt, b, y,
                        out_buf + threadid() * out_stride, aoff, boff, rowoff)


cdef Py_ssize_t source_images(Correlation* c, int nthreads) noexcept nogil:
    """Channels-last source images implicit_conv needs: one per thread, or the whole batch."""
    return nthreads if c.N >= SPANS else c.N


cdef _forward_implicit(const float[:, :, :, ::1] x, const float[:, :, :, ::1] w, const float[::1] b,
                       float[:, :, :, ::1] y, Sizes* z, int nthreads):
    cdef Correlation c = plan_correlation(z.N, z.Ho, z.Wo, z.Wp, z.sh, z.sw, z.C, z.K, z.groups, z.img,
                                          z.kh, z.kw, z.dw, True)
    # Dropped columns of the last rows read up to (kw-1)·dw·C values past an image: pad the end.
    cdef Py_ssize_t stride = z.img + (<Py_ssize_t>(z.kw - 1) * z.dw + 1) * z.C + 64
    cdef Py_ssize_t taps = <Py_ssize_t>z.kh * z.kw
    # (Py_ssize_t tables: two float32 slots per entry)
    bufs, release = SCRATCH.get(
        np.float32,
        [(source_images(&c, nthreads), stride), (z.K * z.ncolg,), (nthreads, out_rows(&c) * z.K + 64),
         (2 * taps,), (2 * taps,), (2 * z.P if c.listed else 2,)],
    )
    cdef float[:, ::1] xh = bufs[0], out_buf = bufs[2]
    cdef float[::1] wt = bufs[1]
    cdef Py_ssize_t[::1] aoff = bufs[3].view(np.intp), boff = bufs[4].view(np.intp), rowoff = bufs[5].view(np.intp)
    try:
        bufs[0][:, z.img:] = 0  # read by dropped columns only, but must be finite
        reorder_weights_t(&w[0, 0, 0, 0], z, False, &wt[0], nthreads)
        segments(z.kh, z.kw, z.dh, z.dw, &c, &aoff[0], &boff[0], &rowoff[0])
        with nogil:
            implicit_conv(&c, &x[0, 0, 0, 0], z.H, z.W, z.ph, z.pw, &xh[0, 0], stride, &wt[0], &b[0],
                          &y[0, 0, 0, 0], nthreads, &out_buf[0, 0], out_buf.shape[1], &aoff[0], &boff[0],
                          &rowoff[0])
    finally:
        release()


cdef _input_grad_implicit(const float[:, :, :, ::1] w, const float[:, :, :, ::1] gy,
                          float[:, :, :, ::1] gx, Sizes* z, int nthreads):
    """gX (eq. 4): a stride-1 correlation of G, padded by d(k-1) - p, with the rotated kernel
    whose input and output channels swap (within each group)."""
    # The full correlation needs d·(k-1) zeros; the forward padding p is already inside (it
    # shifts where gX starts), so pad by d·(k-1) - p.
    cdef int pgh = z.dh * (z.kh - 1) - z.ph, pgw = z.dw * (z.kw - 1) - z.pw
    cdef int Hg = z.Ho + 2 * pgh, Wg = z.Wo + 2 * pgw
    cdef Py_ssize_t gimg = <Py_ssize_t>Hg * Wg * z.K, taps = <Py_ssize_t>z.kh * z.kw
    cdef Correlation c = plan_correlation(z.N, z.H, z.W, Wg, 1, 1, z.K, z.C, z.groups, gimg, z.kh, z.kw, z.dw, True)
    cdef Py_ssize_t stride = gimg + (<Py_ssize_t>(z.kw - 1) * z.dw + 1) * z.K + 64
    bufs, release = SCRATCH.get(
        np.float32,
        [(source_images(&c, nthreads), stride), (taps * z.Kg * z.C,), (nthreads, out_rows(&c) * z.C + 64),
         (z.C,), (2 * taps,), (2 * taps,), (2 * z.H * z.W if c.listed else 2,)],
    )
    cdef float[:, ::1] gh = bufs[0], out_buf = bufs[2]
    cdef float[::1] wrt = bufs[1], zero = bufs[3]
    cdef Py_ssize_t[::1] aoff = bufs[4].view(np.intp), boff = bufs[5].view(np.intp), rowoff = bufs[6].view(np.intp)
    try:
        bufs[0][:, gimg:] = 0
        bufs[3].fill(0)
        reorder_weights_t(&w[0, 0, 0, 0], z, True, &wrt[0], nthreads)
        segments(z.kh, z.kw, z.dh, z.dw, &c, &aoff[0], &boff[0], &rowoff[0])
        with nogil:
            implicit_conv(&c, &gy[0, 0, 0, 0], z.Ho, z.Wo, pgh, pgw, &gh[0, 0], stride, &wrt[0], &zero[0],
                          &gx[0, 0, 0, 0], nthreads, &out_buf[0, 0], out_buf.shape[1], &aoff[0], &boff[0],
                          &rowoff[0])
    finally:
        release()


cdef void weight_grad_pixels(Sizes* z, const float* gy_n, Py_ssize_t p0, Py_ssize_t p1, float* g,
                             float* gb_acc) noexcept nogil:
    """g[p - p0, k] = G[n, k, p] for p0 <= p < p1 (pixel-major), and gb_acc[k] += Σ_p G[n, k, p] (eq. 3)."""
    cdef int k
    transpose(gy_n + p0, z.P, z.K, p1 - p0, g, z.K, NULL)
    for k in range(z.K):
        gb_acc[k] += sum_run(gy_n + k * z.P + p0, p1 - p0)


cdef void weight_grad_product(Sizes* z, Correlation* c, const float* a, const Py_ssize_t* pix,
                              Py_ssize_t npix, const float* g, const Py_ssize_t* aoff, const Py_ssize_t* boff,
                              float* acc) noexcept nogil:
    """Eq. (2) over npix pixels: acc[grp·ncolg + boff[s] + i, k] += Σ_p a[pix[p] + grp·Cg + aoff[s] + i]
    · g[p, grp·Kg + k], for each group and segment."""
    cdef int grp
    cdef Py_ssize_t s
    for grp in range(z.groups):
        for s in range(c.nseg):
            cnnframe_mk_sgemm_steps(c.T, z.Kg, npix, a + grp * z.Cg + aoff[s], pix, g + grp * z.Kg, z.K,
                                    acc + (grp * z.ncolg + boff[s]) * z.Kg, z.Kg, 1)


cdef _weight_grad_implicit(const float[:, :, :, ::1] x, const float[:, :, :, ::1] gy,
                           float[:, :, :, ::1] gw, float[::1] gb, Sizes* z, int nthreads):
    """gW (eq. 2) and gb (eq. 3) reading the input in place, any stride: for each kernel segment s,

        gwᵀ[boff[s] + i, k] += Σ_p Xh[n, pix(p) + aoff[s] + i] · G[n, k, p]

    over the output pixels p of a chunk (pix(p): where p's receptive field starts), G turned
    pixel-major first.  Chunks are spread over spans with their own accumulators."""
    cdef Correlation c = plan_correlation(z.N, z.Ho, z.Wo, z.Wp, z.sh, z.sw, z.C, z.K, z.groups, z.img,
                                          z.kh, z.kw, z.dw, True)
    c.listed = True  # (the pixel table below is needed whatever the waste)
    c.per_item = IMPLICIT_PIXELS if IMPLICIT_PIXELS < z.P else z.P
    c.items_per_image = (z.P + c.per_item - 1) // c.per_item
    cdef Py_ssize_t nitems = <Py_ssize_t>z.N * c.items_per_image, taps = <Py_ssize_t>z.kh * z.kw
    cdef int nspans = grad_spans(nitems, z.K * z.ncolg)
    # Spans of whole images when there are enough: each thread then turns its images channels-last
    # into its own buffer (which stays in L2), small images several at a time so that each product
    # sums over enough pixels; otherwise the whole batch is turned first.
    cdef bint by_image = z.N >= nspans
    cdef Py_ssize_t per_call = 1  # images per product (by_image)
    if by_image and 2 * z.P <= IMPLICIT_PIXELS:
        per_call = IMPLICIT_PIXELS // z.P
        c.per_item = per_call * z.P
    bufs, release = SCRATCH.get(
        np.float32,
        [(nthreads * per_call if by_image else z.N, z.img), (nthreads, c.per_item * z.K),
         (nspans, z.ncolg * z.groups, z.Kg), (nspans, z.K), (2 * taps,), (2 * taps,), (2 * per_call * z.P,)],
    )
    cdef float[:, ::1] xh = bufs[0], gbuf = bufs[1], gb_acc = bufs[3]
    cdef float[:, :, ::1] gw_acc = bufs[2]
    cdef Py_ssize_t[::1] aoff = bufs[4].view(np.intp), boff = bufs[5].view(np.intp), pix = bufs[6].view(np.intp)
    cdef Py_ssize_t item, n, n0, n1, p0, p1, s, j, cnt
    cdef int k, v, t, grp
    cdef float* g
    cdef float* a
    cdef const float* gp
    try:
        bufs[3].fill(0)
        if not by_image:
            fill_channels_last(x, z.ph, z.pw, &xh[0, 0], z.img, nthreads)
        segments(z.kh, z.kw, z.dh, z.dw, &c, &aoff[0], &boff[0], &pix[0])
        for j in range(1, per_call):  # image j of a product sits j·img further on
            for item in range(z.P):
                pix[j * z.P + item] = pix[item] + j * z.img
        for v in prange(nspans, nogil=True, schedule='static', num_threads=nthreads):
            t = threadid()
            g = &gbuf[t, 0]
            memset(&gw_acc[v, 0, 0], 0, gw_acc.shape[1] * gw_acc.shape[2] * sizeof(float))
            if by_image and per_call > 1:
                n0 = z.N * v // nspans
                n1 = z.N * (v + 1) // nspans
                a = &xh[t * per_call, 0]
                while n0 < n1:
                    cnt = per_call if n0 + per_call < n1 else n1 - n0
                    for j in range(cnt):
                        to_channels_last(&x[n0 + j, 0, 0, 0], z.C, z.H, z.W, z.ph, z.pw, a + j * z.img)
                        weight_grad_pixels(z, &gy[n0 + j, 0, 0, 0], 0, z.P, g + j * z.P * z.K, &gb_acc[v, 0])
                    weight_grad_product(z, &c, a, &pix[0], cnt * z.P, g, &aoff[0], &boff[0], &gw_acc[v, 0, 0])
                    n0 = n0 + cnt
            else:
                if by_image:
                    n0 = (z.N * v // nspans) * c.items_per_image
                    n1 = (z.N * (v + 1) // nspans) * c.items_per_image
                else:
                    n0 = nitems * v // nspans
                    n1 = nitems * (v + 1) // nspans
                for item in range(n0, n1):
                    n = item // c.items_per_image
                    p0 = (item - n * c.items_per_image) * c.per_item
                    p1 = p0 + c.per_item if p0 + c.per_item < z.P else z.P
                    if by_image:
                        a = &xh[t, 0]
                        if p0 == 0:
                            to_channels_last(&x[n, 0, 0, 0], z.C, z.H, z.W, z.ph, z.pw, a)
                    else:
                        a = &xh[n, 0]
                    weight_grad_pixels(z, &gy[n, 0, 0, 0], p0, p1, g, &gb_acc[v, 0])
                    weight_grad_product(z, &c, a, &pix[0] + p0, p1 - p0, g, &aoff[0], &boff[0], &gw_acc[v, 0, 0])
        weights_t_to_grad(gw_acc, z, gw, nthreads)
        span_sums(gb_acc, gb)
    finally:
        release()
