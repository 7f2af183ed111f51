"""ReLU and LeakyReLU kernels against NumPy: both dtypes, sizes around the kernels' run length,
NaN and infinities, thread counts, read-only inputs and bad arguments."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops

SIZES = [(1,), (7,), (16383,), (16385,), (3, 5, 7, 11), (2, 40000)]
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30])


def data(shape, dtype, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[: min(flat.size, SPECIAL.size)] = SPECIAL[: flat.size]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SIZES)
def test_relu_matches_numpy(shape, dtype):
    x, g = data(shape, dtype), data(shape, dtype, 1)
    y = ops.relu_forward(x)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_array_equal(y, np.maximum(x, 0))  # NaN stays NaN
    dx = ops.relu_backward(g, y)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(dx, g * (y > 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SIZES)
def test_leaky_relu_matches_numpy(shape, dtype):
    x, g = data(shape, dtype), data(shape, dtype, 1)
    a = dtype(0.1)
    y = ops.leaky_relu_forward(x, 0.1)
    np.testing.assert_array_equal(y, np.where(x > 0, x, x * a))
    np.testing.assert_array_equal(ops.leaky_relu_backward(g, x, 0.1), np.where(x > 0, g, g * a))


def test_results_do_not_depend_on_the_thread_count():
    x, g = data((3, 50001), np.float32), data((3, 50001), np.float32, 1)
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            y = ops.relu_forward(x)
            outs.append((y, ops.relu_backward(g, y), ops.leaky_relu_forward(x, 0.2), ops.leaky_relu_backward(g, x, 0.2)))
    for other in outs[1:]:
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(outs[0], other))


def test_read_only_and_non_contiguous_inputs(tmp_path):
    x = data((4, 6), np.float64)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(ops.relu_forward(xm), np.maximum(x, 0))
    np.testing.assert_array_equal(ops.leaky_relu_forward(x[:, ::2], 0.5), np.where(x[:, ::2] > 0, x[:, ::2], x[:, ::2] / 2))
    g = np.ones_like(x)
    g.flags.writeable = False
    np.testing.assert_array_equal(ops.relu_backward(g, xm), (x > 0).astype(np.float64))


@pytest.mark.parametrize("call, exc, word", [
    (lambda x: ops.relu_forward(x.tolist()), TypeError, "numpy array"),
    (lambda x: ops.relu_forward(x.astype(np.int64)), TypeError, "int64"),
    (lambda x: ops.relu_backward(x[:1], x), ValueError, "shape"),
    (lambda x: ops.relu_backward(x.astype(np.float32), x), TypeError, "dtype"),
    (lambda x: ops.leaky_relu_backward(x, x[:, :1], 0.1), ValueError, "shape"),
])
def test_bad_arguments(call, exc, word):
    with pytest.raises(exc, match=word):
        call(np.ones((2, 3)))
