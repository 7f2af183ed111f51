# cython: language_level=3
"""Batch normalisation kernels on (N, C, L) arrays: one channel per work item.

A channel's values are N runs of L contiguous elements (one per image).  One thread walks all of
them, for the statistics and for the output, so the channel stays in its core's cache between the
passes and each reduction adds in the same order for any thread count (sums through lanes.h, in
double).  Callers (``cnnframe.ops.norm``) validate every argument.
"""
from cython.parallel cimport parallel, prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc

from cnnframe._ext.lanes cimport cnnframe_acc, cnnframe_acc_total, cnnframe_acc_zero
from cnnframe._ext.pool cimport (
    cnnframe_max2x2_d,
    cnnframe_max2x2_f,
    cnnframe_max_grad_plane_d,
    cnnframe_max_grad_plane_f,
    cnnframe_max_plane_d,
    cnnframe_max_plane_f,
)

ctypedef fused floating:
    float
    double

cdef extern from "norm.h" nogil:
    void cnnframe_bn_apply_f(const float* x, Py_ssize_t n, float mean, float inv, float gamma, float beta,
                             float* y) noexcept
    void cnnframe_bn_apply_d(const double* x, Py_ssize_t n, double mean, double inv, double gamma, double beta,
                             double* y) noexcept
    void cnnframe_bn_apply_relu_f(const float* x, Py_ssize_t n, float mean, float inv, float gamma, float beta,
                                  float* y) noexcept
    void cnnframe_bn_apply_relu_d(const double* x, Py_ssize_t n, double mean, double inv, double gamma,
                                  double beta, double* y) noexcept
    void cnnframe_bn_dx_f(const float* g, const float* x, Py_ssize_t n, float mean, float inv, float k,
                          float mean_g, float mean_gx, float* dx) noexcept
    void cnnframe_bn_dx_d(const double* g, const double* x, Py_ssize_t n, double mean, double inv, double k,
                          double mean_g, double mean_gx, double* dx) noexcept
    void cnnframe_channel_sum_f(const float* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                                cnnframe_acc* a) noexcept
    void cnnframe_channel_sum_d(const double* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                                cnnframe_acc* a) noexcept
    void cnnframe_channel_sqdev_f(const float* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L, float c,
                                  cnnframe_acc* a) noexcept
    void cnnframe_channel_sqdev_d(const double* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L, double c,
                                  cnnframe_acc* a) noexcept
    void cnnframe_channel_dots_f(const float* g, const float* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                                 float mean, float inv, int relu, float gamma, float beta, float* out,
                                 cnnframe_acc* ag, cnnframe_acc* agx) noexcept
    void cnnframe_channel_dots_d(const double* g, const double* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                                 double mean, double inv, int relu, double gamma, double beta, double* out,
                                 cnnframe_acc* ag, cnnframe_acc* agx) noexcept
    void cnnframe_bn_dx_eval_f(const float* g, Py_ssize_t n, float k, float* dx) noexcept
    void cnnframe_bn_dx_eval_d(const double* g, Py_ssize_t n, double k, double* dx) noexcept


cdef extern from "cpu.h" nogil:
    int cnnframe_cpu_avx2() noexcept

cdef extern from "lanes.h" nogil:
    int cnnframe_avx2

# The AVX2 forms of the loops (same bits as SSE2 / plain C) run where the CPU has AVX2.
cnnframe_avx2 = cnnframe_cpu_avx2()


def avx2_available():
    """True when the CPU runs the AVX2 forms of the loops."""
    return bool(cnnframe_cpu_avx2())


def _use_avx2(bint on):
    """Switch the AVX2 forms on (where the CPU has them) or off; tests compare both paths.  Returns the
    previous setting."""
    global cnnframe_avx2
    old = cnnframe_avx2
    cnnframe_avx2 = on and cnnframe_cpu_avx2()
    return bool(old)


cdef inline void sum_channel(const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                             cnnframe_acc* acc) noexcept nogil:
    if floating is float:
        cnnframe_channel_sum_f(x, N, stride, L, acc)
    else:
        cnnframe_channel_sum_d(x, N, stride, L, acc)


cdef inline void sqdev_channel(const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L, floating c,
                               cnnframe_acc* acc) noexcept nogil:
    if floating is float:
        cnnframe_channel_sqdev_f(x, N, stride, L, c, acc)
    else:
        cnnframe_channel_sqdev_d(x, N, stride, L, c, acc)


cdef inline void dots_channel(const floating* g, const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                              floating mean, floating inv, bint relu, floating gamma, floating beta, floating* out,
                              cnnframe_acc* ag, cnnframe_acc* agx) noexcept nogil:
    """ag += G, agx += G·x̂ over the channel; with relu, G = g·[y > 0] (y = γ·x̂ + β recomputed from x as
    the forward pass formed it) is also written to out."""
    if floating is float:
        cnnframe_channel_dots_f(g, x, N, stride, L, mean, inv, relu, gamma, beta, out, ag, agx)
    else:
        cnnframe_channel_dots_d(g, x, N, stride, L, mean, inv, relu, gamma, beta, out, ag, agx)


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
    cdef cnnframe_acc acc
    cdef double v
    cdef floating mu
    cdef Py_ssize_t n, m = N * L
    cnnframe_acc_zero(&acc)
    sum_channel(x, N, stride, L, &acc)
    mu = <floating>(cnnframe_acc_total(&acc) / m)
    cnnframe_acc_zero(&acc)
    sqdev_channel(x, N, stride, L, mu, &acc)
    v = cnnframe_acc_total(&acc) / m
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


cdef void finish_channel(const floating* g, const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                         floating mean, floating inv, floating gamma, bint training, cnnframe_acc* ag,
                         cnnframe_acc* agx, floating* dgamma, floating* dbeta, floating* dx) noexcept nogil:
    """From the lanes of Σ G and Σ G·x̂: dγ, dβ, and dx = γ·inv·(G − mean(G) − x̂·mean(G·x̂)) (training)
    or γ·inv·G (evaluation), run by run; g may be dx itself."""
    cdef double sum_g = cnnframe_acc_total(ag), sum_gx = cnnframe_acc_total(agx)
    cdef Py_ssize_t n, m = N * L
    cdef floating k = gamma * inv
    cdef floating mean_g = <floating>(sum_g / m), mean_gx = <floating>(sum_gx / m)
    dgamma[0] = <floating>sum_gx
    dbeta[0] = <floating>sum_g
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


cdef void backward_channel(const floating* g, const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t L,
                           floating mean, floating inv, floating gamma, floating beta, bint training, bint relu,
                           floating* dgamma, floating* dbeta, floating* dx) noexcept nogil:
    cdef cnnframe_acc ag, agx
    cnnframe_acc_zero(&ag)
    cnnframe_acc_zero(&agx)
    # with relu, G·[y > 0] goes into dx (this channel's runs stay in cache), summed on the way
    dots_channel(g, x, N, stride, L, mean, inv, relu, gamma, beta, dx, &ag, &agx)
    finish_channel(<const floating*>dx if relu else g, x, N, stride, L, mean, inv, gamma, training, &ag, &agx, dgamma, dbeta, dx)


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


# -- BatchNorm, ReLU and max pooling in one pass -----------------------------------------------------------
# Windows of kh×kw with stride (kh, kw) and no padding.  Each image plane of the ReLU's output is formed
# in a per-thread scratch plane (in cache) by the same functions as the separate layers use, and pooled
# there (pool.h); backward scatters the pooled gradient into dx's planes the same way and continues in
# place.  So the results are the bits of BatchNorm, ReLU and MaxPool2D run one after the other,
# without the full-size intermediate arrays.

cdef inline void pool_plane(const floating* z, int H, int W, int Ho, int Wo, int kh, int kw,
                            floating* y, int* arg) noexcept nogil:
    if floating is float:
        if kh == 2 and kw == 2:
            cnnframe_max2x2_f(z, W, Ho, Wo, y, arg)
        else:
            cnnframe_max_plane_f(z, H, W, Ho, Wo, kh, kw, kh, kw, 0, 0, y, arg)
    else:
        if kh == 2 and kw == 2:
            cnnframe_max2x2_d(z, W, Ho, Wo, y, arg)
        else:
            cnnframe_max_plane_d(z, H, W, Ho, Wo, kh, kw, kh, kw, 0, 0, y, arg)


def forward_relu_maxpool(const floating[:, :, :, ::1] x, const floating[::1] gamma, const floating[::1] beta,
                         floating[::1] mean, floating[::1] var, floating[::1] inv_std, double eps, bint training,
                         int kh, int kw, floating[:, :, :, ::1] y, int[:, :, :, ::1] arg, int nthreads):
    """y = max pooling (kh×kw windows, stride (kh, kw)) of max(γ·(x − μ)·inv + β, 0); arg as MaxPool2D's.
    Statistics as in ``forward``.  Returns False when scratch memory could not be allocated."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], c, n
    cdef int H = x.shape[2], W = x.shape[3], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t L = <Py_ssize_t>H * W, stride = C * L
    cdef floating* z = NULL
    cdef int fails = 0
    if N == 0 or C == 0:
        return True
    with nogil, parallel(num_threads=max(1, nthreads)):
        z = <floating*>malloc(L * sizeof(floating))
        for c in prange(C, schedule='static'):
            if z == NULL:
                fails += 1
                continue
            if training:
                stats_channel(&x[0, c, 0, 0], N, stride, L, eps, &mean[c], &var[c], &inv_std[c])
            for n in range(N):
                apply_run(&x[n, c, 0, 0], L, mean[c], inv_std[c], gamma[c], beta[c], True, z)
                pool_plane(z, H, W, Ho, Wo, kh, kw, &y[n, c, 0, 0], &arg[n, c, 0, 0])
        free(z)
    return fails == 0


cdef long long backward_pool_channel(const floating* gy, const int* ap, const floating* x, Py_ssize_t N,
                                     Py_ssize_t stride, Py_ssize_t L, Py_ssize_t pstride, Py_ssize_t Lo,
                                     floating mean, floating inv, floating gamma, floating beta, bint training,
                                     floating* dgamma, floating* dbeta, floating* dx) noexcept nogil:
    """One channel of ``backward_relu_maxpool``: the pooled gradient is scattered to its maxima in dx's own
    planes, masked and summed there, then turned into BatchNorm's dx in place (the channel's planes stay
    in cache).  Returns the count of indices outside their plane."""
    cdef cnnframe_acc ag, agx
    cdef Py_ssize_t n
    cdef long long bad = 0
    cnnframe_acc_zero(&ag)
    cnnframe_acc_zero(&agx)
    for n in range(N):  # the pooled gradient at the maxima
        if floating is float:
            bad += cnnframe_max_grad_plane_f(gy + n * pstride, ap + n * pstride, L, Lo, dx + n * stride)
        else:
            bad += cnnframe_max_grad_plane_d(gy + n * pstride, ap + n * pstride, L, Lo, dx + n * stride)
    # G = that gradient·[y > 0] in place, summed on the way
    dots_channel(dx, x, N, stride, L, mean, inv, True, gamma, beta, dx, &ag, &agx)
    finish_channel(dx, x, N, stride, L, mean, inv, gamma, training, &ag, &agx, dgamma, dbeta, dx)
    return bad


def backward_relu_maxpool(const floating[:, :, :, ::1] gy, const int[:, :, :, ::1] arg,
                          const floating[:, :, :, ::1] x, const floating[::1] mean, const floating[::1] inv_std,
                          const floating[::1] gamma, const floating[::1] beta, bint training,
                          floating[::1] dgamma, floating[::1] dbeta, floating[:, :, :, ::1] dx, int nthreads):
    """Gradients of ``forward_relu_maxpool`` for the pooled output's gradient gy.  Returns the number of
    indices in arg that fall outside their plane (their gradient is skipped)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], c
    cdef Py_ssize_t L = <Py_ssize_t>x.shape[2] * x.shape[3], Lo = <Py_ssize_t>gy.shape[2] * gy.shape[3]
    cdef long long bad = 0
    if N == 0 or C == 0:
        return 0
    for c in prange(C, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        bad += backward_pool_channel(&gy[0, c, 0, 0], &arg[0, c, 0, 0], &x[0, c, 0, 0], N, C * L, L, C * Lo, Lo,
                                     mean[c], inv_std[c], gamma[c], beta[c], training, &dgamma[c], &dbeta[c],
                                     &dx[0, c, 0, 0])
    return bad
