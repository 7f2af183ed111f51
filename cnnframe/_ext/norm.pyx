# cython: language_level=3
"""Batch normalisation kernels on (N, C, L) arrays: one channel per work item.

A channel's values are N runs of L contiguous elements (one per image).  One thread walks all of
them, for the statistics and for the output, so the channel stays in its core's cache between the
passes and each reduction adds in the same order for any thread count (sums through lanes.h, in
double).  Callers (``cnnframe.ops.norm``) validate every argument.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt

ctypedef fused floating:
    float
    double

cdef extern from "norm.h" nogil:
    void cnnframe_lanes_zero(double* acc) noexcept
    double cnnframe_lanes_total(const double* acc) noexcept
    void cnnframe_sum_f(const float* x, Py_ssize_t n, double* acc) noexcept
    void cnnframe_sum_d(const double* x, Py_ssize_t n, double* acc) noexcept
    void cnnframe_sqdev_f(const float* x, Py_ssize_t n, float c, double* acc) noexcept
    void cnnframe_sqdev_d(const double* x, Py_ssize_t n, double c, double* acc) noexcept
    void cnnframe_bn_apply_f(const float* x, Py_ssize_t n, float mean, float inv, float gamma, float beta,
                             float* y) noexcept
    void cnnframe_bn_apply_d(const double* x, Py_ssize_t n, double mean, double inv, double gamma, double beta,
                             double* y) noexcept
    void cnnframe_dots_f(const float* g, const float* x, Py_ssize_t n, float mean, float inv,
                         double* ag, double* agx) noexcept
    void cnnframe_dots_d(const double* g, const double* x, Py_ssize_t n, double mean, double inv,
                         double* ag, double* agx) noexcept
    void cnnframe_bn_apply_relu_f(const float* x, Py_ssize_t n, float mean, float inv, float gamma, float beta,
                                  float* y) noexcept
    void cnnframe_bn_apply_relu_d(const double* x, Py_ssize_t n, double mean, double inv, double gamma,
                                  double beta, double* y) noexcept
    void cnnframe_relu_dots_f(const float* g, const float* x, Py_ssize_t n, float mean, float inv, float gamma,
                              float beta, float* out, double* ag, double* agx) noexcept
    void cnnframe_relu_dots_d(const double* g, const double* x, Py_ssize_t n, double mean, double inv,
                              double gamma, double beta, double* out, double* ag, double* agx) noexcept
    void cnnframe_bn_dx_f(const float* g, const float* x, Py_ssize_t n, float mean, float inv, float k,
                          float mean_g, float mean_gx, float* dx) noexcept
    void cnnframe_bn_dx_d(const double* g, const double* x, Py_ssize_t n, double mean, double inv, double k,
                          double mean_g, double mean_gx, double* dx) noexcept
    void cnnframe_bn_dx_eval_f(const float* g, Py_ssize_t n, float k, float* dx) noexcept
    void cnnframe_bn_dx_eval_d(const double* g, Py_ssize_t n, double k, double* dx) noexcept


cdef inline void sum_run(const floating* x, Py_ssize_t n, double* acc) noexcept nogil:
    if floating is float:
        cnnframe_sum_f(x, n, acc)
    else:
        cnnframe_sum_d(x, n, acc)


cdef inline void sqdev_run(const floating* x, Py_ssize_t n, floating c, double* acc) noexcept nogil:
    if floating is float:
        cnnframe_sqdev_f(x, n, c, acc)
    else:
        cnnframe_sqdev_d(x, n, c, acc)


cdef inline void apply_run(const floating* x, Py_ssize_t n, floating mean, floating inv, floating gamma,
                           floating beta, bint relu, floating* y) noexcept nogil:
    if floating is float:
        if relu:
            cnnframe_bn_apply_relu_f(x, n, mean, inv, gamma, beta, y)
        else:
            cnnframe_bn_apply_f(x, n, mean, inv, gamma, beta, y)
    else:
        if relu:
            cnnframe_bn_apply_relu_d(x, n, mean, inv, gamma, beta, y)
        else:
            cnnframe_bn_apply_d(x, n, mean, inv, gamma, beta, y)


cdef void stats_channel(const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L, double eps,
                        floating* mean, floating* var, floating* inv_std) noexcept nogil:
    """μ = (1/m) Σ x,  σ² = (1/m) Σ (x − μ)² (two passes: no cancellation), inv = 1/√(σ² + eps)."""
    cdef double acc[8]
    cdef double v
    cdef floating mu
    cdef Py_ssize_t n, m = N * L
    cnnframe_lanes_zero(acc)
    for n in range(N):
        sum_run(x + n * stride, L, acc)
    mu = <floating>(cnnframe_lanes_total(acc) / m)
    cnnframe_lanes_zero(acc)
    for n in range(N):
        sqdev_run(x + n * stride, L, mu, acc)
    v = cnnframe_lanes_total(acc) / m
    mean[0] = mu
    var[0] = <floating>v
    inv_std[0] = <floating>(1.0 / sqrt(v + eps))


def forward(const floating[:, :, ::1] x, const floating[::1] gamma, const floating[::1] beta,
            floating[::1] mean, floating[::1] var, floating[::1] inv_std, double eps, bint training, bint relu,
            floating[:, :, ::1] y, int nthreads):
    """y = γ·(x − μ)·inv + β per channel, then max(y, 0) when relu.

    training: μ, σ² (biased) and inv = 1/√(σ² + eps) are computed from x and written to mean, var,
    inv_std; otherwise mean and inv_std are inputs (from the running statistics) and var is unused.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c, n
    cdef Py_ssize_t stride = C * L
    if N == 0 or C == 0:
        return
    for c in prange(C, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        if training:
            stats_channel(&x[0, c, 0], N, stride, L, eps, &mean[c], &var[c], &inv_std[c])
        for n in range(N):
            apply_run(&x[n, c, 0], L, mean[c], inv_std[c], gamma[c], beta[c], relu, &y[n, c, 0])


cdef void backward_channel(const floating* g, const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                           floating mean, floating inv, floating gamma, floating beta, bint training, bint relu,
                           floating* dgamma, floating* dbeta, floating* dx) noexcept nogil:
    cdef double ag[8]
    cdef double agx[8]
    cdef double sum_g, sum_gx
    cdef Py_ssize_t n, m = N * L
    cdef floating k = gamma * inv, mean_g, mean_gx
    cnnframe_lanes_zero(ag)
    cnnframe_lanes_zero(agx)
    for n in range(N):
        if relu:  # G·[y > 0] into dx (this channel's runs stay in cache), summed on the way
            if floating is float:
                cnnframe_relu_dots_f(g + n * stride, x + n * stride, L, mean, inv, gamma, beta, dx + n * stride,
                                     ag, agx)
            else:
                cnnframe_relu_dots_d(g + n * stride, x + n * stride, L, mean, inv, gamma, beta, dx + n * stride,
                                     ag, agx)
        elif floating is float:
            cnnframe_dots_f(g + n * stride, x + n * stride, L, mean, inv, ag, agx)
        else:
            cnnframe_dots_d(g + n * stride, x + n * stride, L, mean, inv, ag, agx)
    if relu:
        g = dx
    sum_g = cnnframe_lanes_total(ag)
    sum_gx = cnnframe_lanes_total(agx)
    dgamma[0] = <floating>sum_gx
    dbeta[0] = <floating>sum_g
    mean_g = <floating>(sum_g / m)
    mean_gx = <floating>(sum_gx / m)
    for n in range(N):
        if training:
            if floating is float:
                cnnframe_bn_dx_f(g + n * stride, x + n * stride, L, mean, inv, k, mean_g, mean_gx, dx + n * stride)
            else:
                cnnframe_bn_dx_d(g + n * stride, x + n * stride, L, mean, inv, k, mean_g, mean_gx, dx + n * stride)
        else:
            if floating is float:
                cnnframe_bn_dx_eval_f(g + n * stride, L, k, dx + n * stride)
            else:
                cnnframe_bn_dx_eval_d(g + n * stride, L, k, dx + n * stride)


def backward(const floating[:, :, ::1] g, const floating[:, :, ::1] x, const floating[::1] mean,
             const floating[::1] inv_std, const floating[::1] gamma, const floating[::1] beta, bint training,
             bint relu, floating[::1] dgamma, floating[::1] dbeta, floating[:, :, ::1] dx, int nthreads):
    """dγ = Σ G·x̂, dβ = Σ G (written, not added), and dx: training γ·inv·(G − mean(G) − x̂·mean(G·x̂)),
    evaluation γ·inv·G.  With relu, g is the gradient of max(y, 0) and G = g·[y > 0]."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], c
    if N == 0 or C == 0:
        return
    for c in prange(C, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        backward_channel(&g[0, c, 0], &x[0, c, 0], N, C * L, L, mean[c], inv_std[c], gamma[c], beta[c], training,
                         relu, &dgamma[c], &dbeta[c], &dx[0, c, 0])
