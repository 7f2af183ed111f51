# cython: language_level=3
"""Optimizer kernels: the update of one parameter in one pass, and sums of squares for the global
gradient norm, over fixed runs of RUN elements spread across threads.

The update has no reductions, so its split does not matter; the sum of squares adds each run on
the lanes of lanes.h and then the runs in order, the same for any thread count.  Callers
(``cnnframe.ops.optim``) validate every argument.
"""
from cython.parallel cimport prange

from cnnframe._ext.lanes cimport cnnframe_acc, cnnframe_acc_total, cnnframe_acc_zero, cnnframe_lanes_sqdev_d, cnnframe_lanes_sqdev_f

ctypedef fused floating:
    float
    double

cdef extern from "optim.h" nogil:
    void cnnframe_sgd_f(float* w, const float* grad, float* buf, Py_ssize_t n, float lr, float mu, float scale,
                        float wd, int scaled, int decay, int momentum, int nesterov) noexcept
    void cnnframe_sgd_d(double* w, const double* grad, double* buf, Py_ssize_t n, double lr, double mu,
                        double scale, double wd, int scaled, int decay, int momentum, int nesterov) noexcept
    void cnnframe_adam_f(float* w, const float* grad, float* m, float* v, Py_ssize_t n, float lr_t, float b1,
                         float b2, float one_b1, float one_b2, float c2, float eps, float scale, float wd,
                         int scaled, int decay) noexcept
    void cnnframe_adam_d(double* w, const double* grad, double* m, double* v, Py_ssize_t n, double lr_t,
                         double b1, double b2, double one_b1, double one_b2, double c2, double eps, double scale,
                         double wd, int scaled, int decay) noexcept

cdef enum:
    RUN = 16384


cdef inline Py_ssize_t nruns(Py_ssize_t n) noexcept nogil:
    return (n + RUN - 1) // RUN


cdef double run_sumsq(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef cnnframe_acc acc
    cnnframe_acc_zero(&acc)
    if floating is float:
        cnnframe_lanes_sqdev_f(x, n, 0, &acc)
    else:
        cnnframe_lanes_sqdev_d(x, n, 0, &acc)
    return cnnframe_acc_total(&acc)


def sum_squares(const floating[::1] x, double[::1] partials, int nthreads):
    """Σ x² in double: runs on threads (partials[r], one per run), then the runs added in order."""
    cdef Py_ssize_t n = x.shape[0], r, k = nruns(n)
    cdef double total = 0
    for r in prange(k, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        partials[r] = run_sumsq(&x[r * RUN], min(RUN, n - r * RUN))
    for r in range(k):
        total += partials[r]
    return total


def sgd(floating[::1] w, const floating[::1] grad, floating[::1] buf, double lr, double momentum, bint nesterov,
        double scale, double weight_decay, int nthreads):
    """One SGD step in place (buf: the momentum buffer, unused when momentum is 0)."""
    cdef Py_ssize_t n = w.shape[0], r, i0
    cdef bint scaled = scale != 1.0, decay = weight_decay != 0.0, has_mom = momentum != 0.0
    for r in prange(nruns(n), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        i0 = r * RUN
        if floating is float:
            cnnframe_sgd_f(&w[i0], &grad[i0], &buf[i0] if has_mom else NULL, min(RUN, n - i0), <float>lr,
                           <float>momentum, <float>scale, <float>weight_decay, scaled, decay, has_mom, nesterov)
        else:
            cnnframe_sgd_d(&w[i0], &grad[i0], &buf[i0] if has_mom else NULL, min(RUN, n - i0), lr, momentum, scale,
                           weight_decay, scaled, decay, has_mom, nesterov)


def adam(floating[::1] w, const floating[::1] grad, floating[::1] m, floating[::1] v, double lr_t, double beta1,
         double beta2, double c2, double eps, double scale, double weight_decay, int nthreads):
    """One Adam step in place; lr_t = lr / (1 − β1^t), c2 = √(1 − β2^t)."""
    cdef Py_ssize_t n = w.shape[0], r, i0
    cdef bint scaled = scale != 1.0, decay = weight_decay != 0.0
    for r in prange(nruns(n), nogil=True, schedule='static', num_threads=max(1, nthreads)):
        i0 = r * RUN
        if floating is float:
            cnnframe_adam_f(&w[i0], &grad[i0], &m[i0], &v[i0], min(RUN, n - i0), <float>lr_t, <float>beta1,
                            <float>beta2, <float>(1.0 - beta1), <float>(1.0 - beta2), <float>c2, <float>eps,
                            <float>scale, <float>weight_decay, scaled, decay)
        else:
            cnnframe_adam_d(&w[i0], &grad[i0], &m[i0], &v[i0], min(RUN, n - i0), lr_t, beta1, beta2, 1.0 - beta1,
                            1.0 - beta2, c2, eps, scale, weight_decay, scaled, decay)
