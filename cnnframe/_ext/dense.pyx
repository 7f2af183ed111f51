# cython: language_level=3
"""Fully connected layer kernels: matrix products on SciPy's BLAS, over fixed spans of rows.

Row-major arrays are passed to column-major BLAS as their transposes (a row-major r×c array is a
column-major c×r array), so each product below is written for the transposed result.  The rows
are cut into spans of SPAN rows whatever the thread count, and every span is one BLAS call on one
thread: each output element then comes from the same call for any number of threads, so results
are bit-identical.  The weight gradient's reduction over the batch stays inside one call per span
of output features.  Callers (``cnnframe.ops.dense``) validate every argument and pin this BLAS to
one thread.
"""
from cython.parallel cimport prange
from scipy.linalg.cython_blas cimport dgemm, sgemm

ctypedef fused floating:
    float
    double

cdef enum:
    SPAN = 128


cdef inline void gemm(char ta, char tb, int m, int n, int k, floating* a, int lda, floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Column-major C (m×n) = op(A)·op(B) + beta·C on one thread."""
    cdef floating alpha = 1
    if floating is float:
        sgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)


cdef inline int spans(Py_ssize_t n) noexcept nogil:
    return <int>((n + SPAN - 1) // SPAN)


def forward(const floating[:, ::1] x, const floating[:, ::1] w, const floating[::1] b, bint has_bias,
            floating[:, ::1] y, int nthreads):
    """y = x·Wᵀ + b;  x: (N, I), W: (O, I), y: (N, O)."""
    cdef int N = x.shape[0], I = x.shape[1], O = w.shape[0], s, r0, rows, o
    cdef floating beta = 1 if has_bias else 0
    for s in prange(spans(N), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        r0 = s * SPAN
        rows = min(SPAN, N - r0)
        if has_bias:
            for o in range(O * rows):
                (&y[r0, 0])[o] = b[o % O]
        # column-major yᵀ (O×rows) = W (as the transpose of Wᵀ, I×O) · xᵀ (I×rows)
        gemm(c'T', c'N', O, rows, I, <floating*>&w[0, 0], I, <floating*>&x[r0, 0], I, beta, &y[r0, 0], O)


def backward(const floating[:, ::1] x, const floating[:, ::1] w, const floating[:, ::1] g,
             floating[:, ::1] dw, floating[::1] db, bint has_bias, floating[:, ::1] dx, bint need_dx,
             int nthreads):
    """dW += Gᵀ·x,  db += Σ_n G[n],  dx = G·W (when need_dx);  G: (N, O)."""
    cdef int N = x.shape[0], I = x.shape[1], O = w.shape[0], s, r0, rows, o0, cols, o, n
    cdef double acc
    for s in prange(spans(O), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        o0 = s * SPAN
        cols = min(SPAN, O - o0)
        # column-major dWᵀ[:, o0:o0+cols] (I×cols) += xᵀ (I×N) · G[:, o0:o0+cols] (N×cols)
        gemm(c'N', c'T', I, cols, N, <floating*>&x[0, 0], I, <floating*>&g[0, o0], O, 1, &dw[o0, 0], I)
        if has_bias:
            for o in range(o0, o0 + cols):
                acc = 0
                for n in range(N):
                    acc = acc + g[n, o]
                db[o] = db[o] + <floating>acc
    if not need_dx:
        return
    for s in prange(spans(N), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        r0 = s * SPAN
        rows = min(SPAN, N - r0)
        # column-major dxᵀ (I×rows) = Wᵀ (I×O) · Gᵀ (O×rows)
        gemm(c'N', c'N', I, rows, O, <floating*>&w[0, 0], I, <floating*>&g[r0, 0], O, 0, &dx[r0, 0], I)
