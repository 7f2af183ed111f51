# cython: language_level=3
"""Elementwise activation kernels on flat arrays, parallel over fixed runs of RUN elements.

No reductions: every element is computed alone, so results never depend on the thread count.
Callers (``cnnframe.ops.activation``) validate every argument.
"""
from cython.parallel cimport prange

ctypedef fused floating:
    float
    double

cdef extern from "activation.h" nogil:
    void cnnframe_relu_f(const float* x, Py_ssize_t n, float* y) noexcept
    void cnnframe_relu_d(const double* x, Py_ssize_t n, double* y) noexcept
    void cnnframe_relu_grad_f(const float* g, const float* y, Py_ssize_t n, float* dx) noexcept
    void cnnframe_relu_grad_d(const double* g, const double* y, Py_ssize_t n, double* dx) noexcept
    void cnnframe_leaky_f(const float* x, Py_ssize_t n, float a, float* y) noexcept
    void cnnframe_leaky_d(const double* x, Py_ssize_t n, double a, double* y) noexcept
    void cnnframe_leaky_grad_f(const float* g, const float* x, Py_ssize_t n, float a, float* dx) noexcept
    void cnnframe_leaky_grad_d(const double* g, const double* x, Py_ssize_t n, double a, double* dx) noexcept

# 64 KiB of float32: long enough to stream, short enough to balance two to eight threads.
cdef enum:
    RUN = 16384


cdef inline Py_ssize_t runs(Py_ssize_t n) noexcept nogil:
    return (n + RUN - 1) // RUN


cdef inline Py_ssize_t run_len(Py_ssize_t r, Py_ssize_t n) noexcept nogil:
    return min(RUN, n - r * RUN)


def relu(const floating[::1] x, floating[::1] y, int nthreads):
    """y = max(x, 0), NaN kept."""
    cdef Py_ssize_t n = x.shape[0], r
    for r in prange(runs(n), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        if floating is float:
            cnnframe_relu_f(&x[r * RUN], run_len(r, n), &y[r * RUN])
        else:
            cnnframe_relu_d(&x[r * RUN], run_len(r, n), &y[r * RUN])


def relu_grad(const floating[::1] g, const floating[::1] y, floating[::1] dx, int nthreads):
    """dx = G·[y > 0] from the forward output y."""
    cdef Py_ssize_t n = g.shape[0], r
    for r in prange(runs(n), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        if floating is float:
            cnnframe_relu_grad_f(&g[r * RUN], &y[r * RUN], run_len(r, n), &dx[r * RUN])
        else:
            cnnframe_relu_grad_d(&g[r * RUN], &y[r * RUN], run_len(r, n), &dx[r * RUN])


def leaky_relu(const floating[::1] x, floating[::1] y, double slope, int nthreads):
    """y = x if x > 0 else slope·x."""
    cdef Py_ssize_t n = x.shape[0], r
    for r in prange(runs(n), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        if floating is float:
            cnnframe_leaky_f(&x[r * RUN], run_len(r, n), <float>slope, &y[r * RUN])
        else:
            cnnframe_leaky_d(&x[r * RUN], run_len(r, n), slope, &y[r * RUN])


def leaky_relu_grad(const floating[::1] g, const floating[::1] x, floating[::1] dx, double slope, int nthreads):
    """dx = G if x > 0 else slope·G, from the forward input x."""
    cdef Py_ssize_t n = g.shape[0], r
    for r in prange(runs(n), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        if floating is float:
            cnnframe_leaky_grad_f(&g[r * RUN], &x[r * RUN], run_len(r, n), <float>slope, &dx[r * RUN])
        else:
            cnnframe_leaky_grad_d(&g[r * RUN], &x[r * RUN], run_len(r, n), slope, &dx[r * RUN])
