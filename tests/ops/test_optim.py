"""Optimizer kernels: bit-identical to the NumPy form of each update, sums of squares in a fixed order,
thread counts, and parameters that cannot be updated in place."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops


def arrays(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(4)]


def sgd_numpy(w, grad, buf, lr, mu, nesterov, scale, wd):
    """The update as NumPy operations in the parameter's dtype (optim/sgd.py's formula)."""
    f = w.dtype.type
    g = grad * f(scale) if scale != 1.0 else grad.copy()
    if wd:
        g += f(wd) * w
    if mu:
        buf *= f(mu)
        buf += g
        g = g + f(mu) * buf if nesterov else buf
    w -= f(lr) * g


def adam_numpy(w, grad, m, v, lr, b1, b2, eps, t, scale, wd):
    f = w.dtype.type
    g = grad * f(scale) if scale != 1.0 else grad.copy()
    if wd:
        g += f(wd) * w
    m *= f(b1)
    m += f(1.0 - b1) * g
    v *= f(b2)
    v += f(1.0 - b2) * (g * g)
    denom = np.sqrt(v)
    denom /= f((1.0 - b2**t) ** 0.5)
    denom += f(eps)
    w -= f(lr / (1.0 - b1**t)) * (m / denom)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mu, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("scale, wd", [(1.0, 0.0), (0.3, 5e-4)])
def test_sgd_is_bit_identical_to_the_numpy_form(dtype, mu, nesterov, scale, wd):
    w, g, buf, _ = arrays((37, 1001), dtype)  # runs of the kernel end inside the array
    w2, buf2 = w.copy(), buf.copy()
    for _ in range(3):
        ops.sgd_step(w, g, buf if mu else None, 0.05, mu, nesterov, scale, wd)
        sgd_numpy(w2, g, buf2, 0.05, mu, nesterov, scale, wd)
    assert np.array_equal(w, w2) and (not mu or np.array_equal(buf, buf2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale, wd", [(1.0, 0.0), (0.5, 1e-2)])
def test_adam_is_bit_identical_to_the_numpy_form(dtype, scale, wd):
    w, g, _, _ = arrays((20001,), dtype, 1)
    m, v = np.zeros_like(w), np.zeros_like(w)
    w2, m2, v2 = w.copy(), m.copy(), v.copy()
    for t in (1, 2, 3):
        ops.adam_step(w, g, m, v, 1e-3, (0.9, 0.999), 1e-8, t, scale, wd)
        adam_numpy(w2, g, m2, v2, 1e-3, 0.9, 0.999, 1e-8, t, scale, wd)
    assert np.array_equal(w, w2) and np.array_equal(m, m2) and np.array_equal(v, v2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_squares(dtype):
    x = arrays((3, 40000), dtype, 2)[0]  # several runs
    assert ops.sum_squares(x) == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-6)
    assert ops.sum_squares(x[:1, :5]) == pytest.approx(float(np.sum(x[:1, :5].astype(np.float64) ** 2)), rel=1e-6)
    assert ops.sum_squares(np.array([3.0, np.nan])) != ops.sum_squares(np.array([3.0, np.nan]))  # NaN
    results = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            results.append(ops.sum_squares(x))
    assert results[0] == results[1] == results[2]


def test_read_only_parameters_are_refused_read_only_gradients_accepted():
    w, g, _, _ = arrays((5,), np.float64)
    g.flags.writeable = False
    ops.sgd_step(w, g, None, 0.1)  # a read-only gradient is fine
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        ops.sgd_step(w, g, None, 0.1)


@pytest.mark.parametrize("call, exc, word", [
    (lambda w, g: ops.sgd_step(w, g[:2], None, 0.1), ValueError, "grad"),
    (lambda w, g: ops.sgd_step(w, g.astype(np.float32), None, 0.1), ValueError, "grad"),
    (lambda w, g: ops.sgd_step(w[::2], g[::2], None, 0.1), ValueError, "C-contiguous"),
    (lambda w, g: ops.sgd_step(w, g, None, 0.1, momentum=0.9), TypeError, "momentum_buffer"),
    (lambda w, g: ops.adam_step(w, g, np.zeros(3), np.zeros(6), 0.1, (0.9, 0.99), 1e-8, 1), ValueError, "exp_avg"),
    (lambda w, g: ops.sgd_step(w.astype(np.int64), g, None, 0.1), TypeError, "float32 or float64"),
])
def test_bad_arguments(call, exc, word):
    w, g, _, _ = arrays((6,), np.float64)
    with pytest.raises(exc, match=word):
        call(w, g)
