"""Pooling kernels against the loop reference, PyTorch's semantics, and finite differences."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
from cnnframe.ops import _reference as ref


def random_case(rng):
    while True:
        n, c = rng.integers(1, 4), rng.integers(1, 5)
        h, w = rng.integers(1, 11, size=2)
        k = tuple(int(v) for v in rng.integers(1, 5, size=2))
        s = tuple(int(v) for v in rng.integers(1, 4, size=2))
        p = tuple(int(v) for v in rng.integers(0, 3, size=2))
        try:
            out = ops.pool2d_output_shape((n, c, h, w), k, s, p)
        except ValueError:
            continue
        return (n, c, h, w), k, s, p, out


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_max_pool_matches_reference(seed, dtype):
    rng = np.random.default_rng(seed)
    xs, k, s, p, out = random_case(rng)
    x = rng.standard_normal(xs).astype(dtype)
    if seed % 2:
        x = np.round(x).astype(dtype)  # many ties: the first maximum must win
    g = rng.standard_normal(out).astype(dtype)
    y_ref, arg_ref = ref.max_pool2d_forward_ref(x, k, s, p)
    dx_ref = ref.max_pool2d_backward_ref(x, g, k, s, p)
    for threads in (1, 2):
        with cnnframe.num_threads(threads):
            y, arg = ops.max_pool2d_forward(x, k, s, p)
            dx = ops.max_pool2d_backward(g, arg, xs)
        assert y.dtype == dx.dtype == dtype and y.shape == out
        assert np.array_equal(arg, arg_ref)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=0)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_avg_pool_matches_reference(seed, dtype):
    rng = np.random.default_rng(seed + 50)
    xs, k, s, p, out = random_case(rng)
    x = rng.standard_normal(xs).astype(dtype)
    g = rng.standard_normal(out).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for threads in (1, 2):
        with cnnframe.num_threads(threads):
            y = ops.avg_pool2d_forward(x, k, s, p)
            dx = ops.avg_pool2d_backward(g, xs, k, s, p)
        np.testing.assert_allclose(y, ref.avg_pool2d_forward_ref(x, k, s, p), rtol=tol, atol=tol)
        np.testing.assert_allclose(dx, ref.avg_pool2d_backward_ref(xs, g, k, s, p), rtol=tol, atol=tol)


def test_pytorch_semantics_by_hand():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 3.0, -1.0, 5.0], [0.0, 0.0, 0.0, 0.0], [7.0, 1.0, 1.0, 7.0]])
    x = x.reshape(1, 1, 4, 4)
    y, arg = ops.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(y.ravel(), [3.0, 5.0, 7.0, 7.0])
    # Ties go to the first maximum in row-major order: 3.0 at (0, 1), not (0, 2) or (1, 1).
    np.testing.assert_array_equal(arg.ravel(), [1, 7, 12, 15])
    dx = ops.max_pool2d_backward(np.ones((1, 1, 2, 2)), arg, x.shape)
    assert dx[0, 0, 0, 1] == 1 and dx.sum() == 4
    # Overlapping windows add their gradients at a shared maximum.
    y, arg = ops.max_pool2d_forward(x, 3, stride=1)
    dx = ops.max_pool2d_backward(np.ones((1, 1, 2, 2)), arg, x.shape)
    assert dx[0, 0, 3, 0] == 1 and dx[0, 0, 3, 3] == 1 and dx[0, 0, 1, 3] == 1 and dx.sum() == 4
    # Average pooling with padding counts the padded zeros (count_include_pad=True).
    ya = ops.avg_pool2d_forward(np.ones((1, 1, 2, 2)), 2, stride=1, padding=1)
    np.testing.assert_allclose(ya[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])


def test_max_pool_propagates_nan():
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 1, 0] = np.nan
    y, arg = ops.max_pool2d_forward(x, 2)
    assert np.isnan(y).all() and arg.ravel()[0] == 2


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_central_difference_gradients(kind):
    rng = np.random.default_rng(1)
    # Well-separated distinct values keep max pooling away from ties under a 1e-6 perturbation.
    x = rng.permutation(np.arange(2 * 3 * 7 * 6, dtype=np.float64)).reshape(2, 3, 7, 6) * 0.01
    k, s, p = (3, 2), (2, 1), (1, 1)
    fwd = (lambda a: ops.max_pool2d_forward(a, k, s, p)[0]) if kind == "max" else (lambda a: ops.avg_pool2d_forward(a, k, s, p))
    g = rng.standard_normal(fwd(x).shape)
    if kind == "max":
        grad = ops.max_pool2d_backward(g, ops.max_pool2d_forward(x, k, s, p)[1], x.shape)
    else:
        grad = ops.avg_pool2d_backward(g, x.shape, k, s, p)
    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = np.sum(fwd(x) * g)
        x[idx] = old - eps
        down = np.sum(fwd(x) * g)
        x[idx] = old
        num[idx] = (up - down) / (2 * eps)
    err = np.abs(num - grad) / np.maximum(1e-8, np.abs(num) + np.abs(grad))
    assert err.max() < 1e-5
    assert np.abs(num - grad).max() < 1e-7


def test_non_contiguous_input():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 8, 10))[:, ::2, :, ::-1]
    y, _ = ops.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(y, ref.max_pool2d_forward_ref(np.ascontiguousarray(x), 2)[0])
    np.testing.assert_allclose(ops.avg_pool2d_forward(x, 2), ref.avg_pool2d_forward_ref(np.ascontiguousarray(x), 2))


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: ops.max_pool2d_forward(np.ones((2, 3, 4)), 2), ValueError, ["4 dimensions", "(2, 3, 4)"]),
        (lambda: ops.max_pool2d_forward(np.ones((1, 1, 4, 4), np.int32), 2), TypeError, ["int32"]),
        (lambda: ops.max_pool2d_forward(np.ones((1, 1, 4, 4)), 0), ValueError, ["kernel_size"]),
        (lambda: ops.max_pool2d_forward(np.ones((1, 1, 4, 4)), 2, stride=0), ValueError, ["stride"]),
        (lambda: ops.max_pool2d_forward(np.ones((1, 1, 4, 4)), 2, padding=-1), ValueError, ["padding"]),
        (lambda: ops.max_pool2d_forward(np.ones((1, 1, 4, 4)), 2, padding=2), ValueError, ["half the kernel"]),
        (lambda: ops.avg_pool2d_forward(np.ones((1, 1, 2, 2)), 3), ValueError, ["output size", "2x2"]),
        (lambda: ops.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int32) + 99, (1, 1, 4, 4)),
         ValueError, ["outside"]),
        (lambda: ops.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), (1, 1, 4, 4)), ValueError, ["argmax"]),
        (lambda: ops.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int32), (1, 2, 4, 4)),
         ValueError, ["input_shape"]),
        (lambda: ops.avg_pool2d_backward(np.ones((1, 1, 3, 3)), (1, 1, 4, 4), 2), ValueError, ["grad_out", "(1, 1, 2, 2)"]),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [(8, 8), (9, 11), (4, 18), (2, 2), (7, 3)])
def test_common_2x2_stride_2_window(dtype, hw):
    """The 2x2, stride-2 window has its own fast kernel (four outputs at a time for float32):
    check it on even and odd sizes, ties (first maximum wins) and NaNs (taken, as in PyTorch)."""
    rng = np.random.default_rng(hw[0] * 100 + hw[1])
    x = np.round(rng.standard_normal((3, 4) + hw) * 2).astype(dtype)  # many ties
    x[0, 0].flat[::7] = np.nan
    x[1, 2, 0, 0] = np.nan
    g = rng.standard_normal((3, 4, hw[0] // 2, hw[1] // 2)).astype(dtype)
    y_ref, arg_ref = ref.max_pool2d_forward_ref(np.nan_to_num(x, nan=np.inf), 2)
    for threads in (1, 2):
        with cnnframe.num_threads(threads):
            y, arg = ops.max_pool2d_forward(x, 2)
            dx = ops.max_pool2d_backward(g, arg, x.shape)
        nan_out = np.isnan(y)
        # NaN windows are exactly those whose reference maximum is +inf (NaN stood in as inf)
        assert np.array_equal(nan_out, np.isinf(y_ref))
        np.testing.assert_array_equal(y[~nan_out], y_ref[~nan_out])
        np.testing.assert_array_equal(arg, arg_ref)  # NaN windows: the first NaN, like the first inf
        np.testing.assert_allclose(dx, ref.max_pool2d_backward_ref(np.nan_to_num(x, nan=np.inf), g, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 2, 17, 19), (1, 4, 1, 30)])
def test_global_avg_pool_matches_reference(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) + 5).astype(dtype)
    g = rng.standard_normal(shape[:2]).astype(dtype)
    y = ops.global_avg_pool2d_forward(x)
    assert y.shape == shape[:2] and y.dtype == dtype
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, ref.global_avg_pool2d_ref(x), rtol=rtol)
    dx = ops.global_avg_pool2d_backward(g, shape)
    np.testing.assert_allclose(dx, np.broadcast_to(g[:, :, None, None] / (shape[2] * shape[3]), shape), rtol=rtol)


def test_global_avg_pool_threads_nan_and_errors():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 13, 11)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            outs.append(ops.global_avg_pool2d_forward(x))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    x[2, 3, 4, 5] = np.nan
    y = ops.global_avg_pool2d_forward(x)
    assert np.isnan(y[2, 3]) and np.isfinite(np.delete(y.ravel(), 2 * 7 + 3)).all()
    with pytest.raises(ValueError, match="4 dimensions"):
        ops.global_avg_pool2d_forward(x[0])
    with pytest.raises(ValueError, match="does not match"):
        ops.global_avg_pool2d_backward(np.ones((5, 7), np.float32), (5, 6, 2, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_inputs(tmp_path, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not xm.flags.writeable
    for k, s in ((2, 2), (3, 1)):
        y, arg = ops.max_pool2d_forward(xm, k, s)
        assert np.array_equal(y, ops.max_pool2d_forward(x, k, s)[0])
        g = np.ones_like(y)
        g.flags.writeable = arg.flags.writeable = False
        np.testing.assert_array_equal(ops.max_pool2d_backward(g, arg, x.shape), ref.max_pool2d_backward_ref(x, g, k, s))
        a = ops.avg_pool2d_forward(xm, k, s)
        np.testing.assert_allclose(a, ref.avg_pool2d_forward_ref(x, k, s), rtol=1e-6)
        np.testing.assert_allclose(ops.avg_pool2d_backward(g, x.shape, k, s), ref.avg_pool2d_backward_ref(x.shape, g, k, s), rtol=1e-6)
    assert np.array_equal(ops.global_avg_pool2d_forward(xm), ops.global_avg_pool2d_forward(x))


def test_backward_writes_every_element_of_dx():
    """dx comes from np.empty: the planes' leftover rows and columns must still be zero."""
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 7))
    y, arg = ops.max_pool2d_forward(x, 2)
    for _ in range(3):  # reuse of freed memory would show garbage if a cell were skipped
        dx = ops.max_pool2d_backward(np.ones_like(y), arg, x.shape)
        assert (dx[:, :, 4, :] == 0).all() and (dx[:, :, :, 6] == 0).all() and dx.sum() == y.size
        da = ops.avg_pool2d_backward(np.ones_like(y), x.shape, 2)
        assert (da[:, :, 4, :] == 0).all() and da.sum() == pytest.approx(y.size)
