# cython: language_level=3
"""Softmax cross-entropy on (N, classes) logits, one row per work item (docs/math.md, Softmax
cross-entropy).  Each row is computed in double from its own values, so nothing depends on the
thread count.  Callers (``cnnframe.ops.loss``) validate the logits and the labels.
"""
from cython.parallel cimport prange
from libc.math cimport exp, log

ctypedef fused floating:
    float
    double


cdef void row(const floating* z, Py_ssize_t k, Py_ssize_t label, double smoothing, double scale,
              floating* probs, floating* grad, double* loss) noexcept nogil:
    cdef Py_ssize_t c
    cdef double mx = z[0], s = 0, lse, logp, logp_sum = 0, p
    for c in range(1, k):
        if z[c] > mx or z[c] != z[c]:
            mx = z[c]
    for c in range(k):
        s = s + exp(<double>z[c] - mx)
    lse = mx + log(s)
    for c in range(k):
        logp = <double>z[c] - lse
        logp_sum = logp_sum + logp
        p = exp(logp)
        probs[c] = <floating>p
        # t = (1 − ε)·onehot(y) + ε/classes;  dL/dz = (softmax(z) − t) / N
        grad[c] = <floating>((p - smoothing / k - (1.0 - smoothing if c == label else 0.0)) * scale)
    loss[0] = -(1.0 - smoothing) * (<double>z[label] - lse) - smoothing * logp_sum / k


def softmax_cross_entropy(const floating[:, ::1] z, const long long[::1] labels, double smoothing,
                          floating[:, ::1] probs, floating[:, ::1] grad, double[::1] losses, int nthreads):
    """Per row n: losses[n] = −Σ_c t[n,c]·log softmax(z_n)[c], probs = softmax(z), grad = (probs − t)/N."""
    cdef Py_ssize_t N = z.shape[0], K = z.shape[1], n
    cdef double scale = 1.0 / N
    for n in prange(N, nogil=True, schedule='static', num_threads=max(1, nthreads)):
        row(&z[n, 0], K, labels[n], smoothing, scale, &probs[n, 0], &grad[n, 0], &losses[n])
