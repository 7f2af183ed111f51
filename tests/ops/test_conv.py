"""Convolution kernels against the loop reference (docs/math.md eqs. 1-4) and finite differences."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
from cnnframe.ops import _reference as ref


def random_case(rng):
    """A random valid configuration within the ranges the kernels promise to support."""
    while True:
        n, c, k = rng.integers(1, 5), rng.integers(1, 6), rng.integers(1, 4)
        kh, kw = rng.integers(1, 6, size=2)
        h, w = rng.integers(1, 13, size=2)
        s = tuple(int(v) for v in rng.integers(1, 4, size=2))
        p = tuple(int(v) for v in rng.integers(0, 4, size=2))
        d = tuple(int(v) for v in rng.integers(1, 3, size=2))
        try:
            out = ops.conv2d_output_shape((n, c, h, w), (k, c, kh, kw), s, p, d)
        except ValueError:
            continue
        return (n, c, h, w), (k, c, kh, kw), s, p, d, out


def rel_err(a, b):
    return np.abs(a - b).max() / max(1e-30, np.abs(b).max())


@pytest.mark.parametrize("seed", range(24))
def test_matches_reference_float64(seed):
    rng = np.random.default_rng(seed)
    xs, ws, s, p, d, out = random_case(rng)
    x, w, b, g = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0]), rng.standard_normal(out)
    y_ref = ref.conv2d_forward_ref(x, w, b, s, p, d)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x, w, g, s, p, d)
    for threads in (1, 2):
        with cnnframe.num_threads(threads):
            y = ops.conv2d_forward(x, w, b, s, p, d)
            dx, dw, db = ops.conv2d_backward(x, w, g, s, p, d)
            dx_full, _, _ = ops.conv2d_backward(x, w, g, s, p, d, method="full")
        assert y.shape == out and y.dtype == np.float64
        assert rel_err(y, y_ref) < 1e-10, (threads, xs, ws, s, p, d)
        assert rel_err(dw, dw_ref) < 1e-10
        assert rel_err(db, db_ref) < 1e-10
        assert rel_err(dx, dx_ref) < 1e-10
        assert rel_err(dx_full, dx_ref) < 1e-10


@pytest.mark.parametrize("seed", range(100, 112))
def test_matches_reference_float32(seed, kernel_path):
    rng = np.random.default_rng(seed)
    xs, ws, s, p, d, out = random_case(rng)
    x, w, b, g = (rng.standard_normal(sh).astype(np.float32) for sh in (xs, ws, (ws[0],), out))
    y_ref = ref.conv2d_forward_ref(x, w, b, s, p, d)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x, w, g, s, p, d)
    for threads in (1, 2):
        with cnnframe.num_threads(threads):
            y = ops.conv2d_forward(x, w, b, s, p, d)
            dx, dw, db = ops.conv2d_backward(x, w, g, s, p, d)
        assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
        for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
            assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize(
    "xs, ws, s, p, d",
    [
        ((1, 3, 7, 5), (2, 3, 3, 2), (2, 1), (1, 0), (1, 2)),  # batch 1, non-square everything
        ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0, 1),  # smallest possible
        ((3, 2, 9, 4), (2, 2, 1, 4), (3, 1), (0, 2), 1),  # kernel wider than tall
        ((2, 4, 6, 11), (3, 4, 5, 1), 2, (2, 0), (1, 1)),  # stride remainder leaves unread rows
        ((1, 5, 12, 12), (4, 5, 3, 3), 1, 1, 1),  # batch 1 with more threads than images
    ],
)
def test_edge_shapes(xs, ws, s, p, d):
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    y_ref = ref.conv2d_forward_ref(x, w, b, s, p, d)
    g = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x, w, g, s, p, d)
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            y = ops.conv2d_forward(x, w, b, s, p, d)
            dx, dw, db = ops.conv2d_backward(x, w, g, s, p, d)
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "xs, ws, s, p, d",
    [
        ((3, 17, 9, 11), (20, 17, 3, 3), 1, 1, 1),  # more than 16 channels and filters: full vectors + tails
        ((2, 33, 6, 7), (35, 33, 2, 3), 1, (0, 2), 1),  # ragged tiles everywhere, non-square kernel
        ((2, 18, 7, 12), (9, 18, 5, 4), 1, (2, 3), (2, 2)),  # dilation: one segment per tap
        ((1, 24, 5, 5), (40, 24, 3, 3), 2, 1, 1),  # stride 2 (explicit im2col)
        ((5, 2, 4, 4), (3, 2, 1, 1), 1, 1, 1),  # padding beyond d(k-1): dX cannot be a full correlation
        ((9, 16, 6, 7), (18, 16, 3, 3), 1, 1, 1),  # 8+ images: each thread turns its own images channels-last
        ((9, 16, 9, 8), (17, 16, 3, 2), (2, 1), (1, 0), 1),  # the same, strided (listed rows)
    ],
)
def test_float32_paths_on_wider_layers(xs, ws, s, p, d, kernel_path):
    rng = np.random.default_rng(8)
    x, w, b = (rng.standard_normal(sh).astype(np.float32) for sh in (xs, ws, (ws[0],)))
    y_ref = ref.conv2d_forward_ref(x, w, b, s, p, d)
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x, w, g, s, p, d)
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            y = ops.conv2d_forward(x, w, b, s, p, d)
            dx, dw, db = ops.conv2d_backward(x, w, g, s, p, d)
            _, dw_only, _ = ops.conv2d_backward(x, w, g, s, p, d, need_input_grad=False)
        for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref), (dw_only, dw_ref)):
            assert rel_err(got, want) < 1e-5, (kernel_path, threads)


def test_worked_1d_example_from_math_md():
    """x = [a, b, c, d], w = [p, q]: dL/dx = correlate([0, g0, g1, g2, 0], [q, p]), dL/dw = correlate(x, g)."""
    a, b_, c, d_ = 1.0, 2.0, 3.0, 4.0
    p_, q = 0.5, -1.5
    g0, g1, g2 = 0.1, 0.2, 0.3
    x = np.array([a, b_, c, d_]).reshape(1, 1, 1, 4)
    w = np.array([p_, q]).reshape(1, 1, 1, 2)
    y = ops.conv2d_forward(x, w)
    np.testing.assert_allclose(y.ravel(), [a * p_ + b_ * q, b_ * p_ + c * q, c * p_ + d_ * q])
    g = np.array([g0, g1, g2]).reshape(1, 1, 1, 3)
    dx, dw, db = ops.conv2d_backward(x, w, g)
    np.testing.assert_allclose(dx.ravel(), [g0 * p_, g0 * q + g1 * p_, g1 * q + g2 * p_, g2 * q])
    np.testing.assert_allclose(dw.ravel(), [a * g0 + b_ * g1 + c * g2, b_ * g0 + c * g1 + d_ * g2])
    np.testing.assert_allclose(db, [g0 + g1 + g2])


@pytest.mark.parametrize("s, p, d", [(1, 0, 1), (2, 1, 1), ((1, 2), (2, 0), (2, 1))])
def test_central_difference_gradients(s, p, d):
    """Float64 central differences of L = Σ Y·G, eps 1e-6, relative error below 1e-6 everywhere."""
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 2, 6, 5)), rng.standard_normal((3, 2, 3, 2)), rng.standard_normal(3)
    g = rng.standard_normal(ops.conv2d_forward(x, w, b, s, p, d).shape)
    dx, dw, db = ops.conv2d_backward(x, w, g, s, p, d)
    eps = 1e-6

    def loss(x_, w_, b_):
        return float(np.sum(ops.conv2d_forward(x_, w_, b_, s, p, d) * g))

    for arr, grad in ((x, dx), (w, dw), (b, db)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = loss(x, w, b)
            arr[idx] = old - eps
            down = loss(x, w, b)
            arr[idx] = old
            num[idx] = (up - down) / (2 * eps)
        # Rounding in L (|L| ~ 10) limits central differences to ~1e-9 absolute; entries near zero
        # therefore get a slightly looser relative bound.
        err = np.abs(num - grad) / np.maximum(1e-8, np.abs(num) + np.abs(grad))
        assert err.max() < 1e-5
        assert np.abs(num - grad).max() < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_bit_identical_for_any_thread_count(kernel_path, dtype):
    """Work is cut into a fixed number of spans, so the thread count never changes a bit."""
    rng = np.random.default_rng(11)
    cases = [((5, 6, 10, 9), (7, 6, 3, 3), 1, 1, 1), ((1, 17, 9, 9), (20, 17, 5, 5), 1, 2, 1),
             ((3, 16, 8, 8), (32, 16, 3, 3), 2, 1, 1), ((3, 32, 8, 7), (32, 8, 3, 3), 1, 1, 4),
             ((10, 16, 7, 8), (16, 1, 3, 3), 1, 1, 16)]
    for xs, ws, s, p, grp in cases:
        x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
        g = rng.standard_normal(ops.conv2d_forward(x, w, None, s, p, 1, grp).shape).astype(dtype)
        results = []
        for threads in (1, 2, 3, 4, 7):
            with cnnframe.num_threads(threads):
                results.append((ops.conv2d_forward(x, w, None, s, p, 1, grp),)
                               + ops.conv2d_backward(x, w, g, s, p, 1, grp))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert np.array_equal(a, b), (xs, ws)


def test_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((3, 4, 14, 12))
    x = base[:, ::2, ::2, :]  # strided view
    w = rng.standard_normal((3, 3, 2, 4)).transpose(0, 2, 1, 3)  # (3, 2, 3, 4) non-contiguous
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = ops.conv2d_forward(x, w, None, 1, 1)
    np.testing.assert_allclose(y, ref.conv2d_forward_ref(np.ascontiguousarray(x), np.ascontiguousarray(w), None, 1, 1))
    g = rng.standard_normal(y.shape)[:, :, :, :]
    g = np.asfortranarray(g)
    dx, dw, db = ops.conv2d_backward(x, w, g, 1, 1)
    dx_r, dw_r, db_r = ref.conv2d_backward_ref(np.ascontiguousarray(x), np.ascontiguousarray(w), np.ascontiguousarray(g), 1, 1)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-10)
    np.testing.assert_allclose(dw, dw_r, rtol=1e-10)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(2)
    g = rng.standard_normal((2, 2, 5, 5))
    copies = [a.copy() for a in (x, w, b, g)]
    ops.conv2d_forward(x, w, b, 1, 1)
    ops.conv2d_backward(x, w, g, 1, 1)
    for a, c in zip((x, w, b, g), copies):
        assert np.array_equal(a, c)


def test_empty_batch_and_no_input_grad():
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    assert ops.conv2d_forward(x, w).shape == (0, 3, 3, 3)
    x = np.ones((2, 2, 5, 5), np.float32)
    dx, dw, db = ops.conv2d_backward(x, w, np.ones((2, 3, 3, 3), np.float32), need_input_grad=False)
    assert dx is None and dw.shape == w.shape and db.shape == (3,)
    np.testing.assert_allclose(db, 18.0)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(x=np.ones((2, 3, 5)), w=np.ones((1, 3, 3, 3))), ValueError, ["input", "4 dimensions", "(2, 3, 5)"]),
        (dict(x=np.ones((1, 3, 5, 5), np.int64), w=np.ones((1, 3, 3, 3))), TypeError, ["input", "int64"]),
        (dict(x=np.ones((1, 3, 5, 5), np.float16), w=np.ones((1, 3, 3, 3), np.float16)), TypeError, ["float16"]),
        (dict(x=np.ones((1, 3, 5, 5), np.float32), w=np.ones((1, 3, 3, 3))), TypeError, ["weight", "float64", "float32"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 2, 3, 3))), ValueError, ["channel", "3", "2", "(1, 2, 3, 3)"]),
        (dict(x=np.ones((1, 3, 2, 2)), w=np.ones((1, 3, 3, 3))), ValueError, ["output size", "2x2", "3x3"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 3, 3, 3)), stride=0), ValueError, ["stride", ">= 1"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 3, 3, 3)), stride=(1, -2)), ValueError, ["stride"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 3, 3, 3)), padding=-1), ValueError, ["padding", ">= 0"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 3, 3, 3)), dilation=0), ValueError, ["dilation"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 3, 3, 3)), stride=1.5), TypeError, ["stride", "int"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 3, 3, 3)), stride=True), TypeError, ["stride"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((1, 3, 3, 3)), padding=(1, 2, 3)), TypeError, ["padding"]),
        (dict(x=np.ones((1, 3, 5, 5)), w=np.ones((2, 3, 3, 3)), bias=np.ones(3)), ValueError, ["bias", "(2,)"]),
        (dict(x=[[1.0]], w=np.ones((1, 1, 1, 1))), TypeError, ["input", "numpy array"]),
        (dict(x=np.ones((1, 0, 5, 5)), w=np.ones((1, 0, 3, 3))), ValueError, ["empty"]),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, exc, words):
    args = dict(kwargs)
    x, w = args.pop("x"), args.pop("w")
    with pytest.raises(exc) as info:
        ops.conv2d_forward(x, w, **args)
    for word in words:
        assert word in str(info.value)


def test_backward_rejects_mismatched_grad_out():
    x, w = np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 4, 4, 4\).*\(2, 4, 3, 3\)"):
        ops.conv2d_backward(x, w, np.ones((2, 4, 4, 4)))
    with pytest.raises(TypeError, match="grad_out"):
        ops.conv2d_backward(x, w, np.ones((2, 4, 3, 3), np.float32))
    with pytest.raises(ValueError, match="method"):
        ops.conv2d_backward(x, w, np.ones((2, 4, 3, 3)), method="fft")


def test_scratch_reuse_does_not_leak_values_between_calls(kernel_path):
    """Scratch buffers are reused: a call full of NaNs must not poison the padding of the next."""
    rng = np.random.default_rng(12)
    bad = np.full((2, 17, 9, 9), np.nan, np.float32)
    w = rng.standard_normal((18, 17, 5, 5)).astype(np.float32)
    ops.conv2d_backward(bad, w, np.full((2, 18, 9, 9), np.nan, np.float32), 1, 2)
    ops.conv2d_forward(bad, w, None, 1, 2)
    x = rng.standard_normal((2, 17, 9, 9)).astype(np.float32)
    g = rng.standard_normal((2, 18, 9, 9)).astype(np.float32)
    y = ops.conv2d_forward(x, w, None, 1, 2)
    dx, dw, db = ops.conv2d_backward(x, w, g, 1, 2)
    np.testing.assert_allclose(y, ref.conv2d_forward_ref(x, w, None, 1, 2), rtol=1e-4, atol=1e-3)
    for got, want in zip((dx, dw, db), ref.conv2d_backward_ref(x, w, g, 1, 2)):
        assert np.isfinite(got).all()
        assert rel_err(got, want) < 1e-5


def test_wide_layer_caps_gradient_accumulators():
    """A 256→512 3x3 layer has 1.2 M weights: its per-span dW accumulators are capped in memory.
    Results must stay right (float32 vs float64) and bit-identical across thread counts."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 256, 3, 3))
    w = rng.standard_normal((512, 256, 3, 3)) * 0.05
    g = rng.standard_normal((2, 512, 3, 3))
    _, dw64, db64 = ops.conv2d_backward(x, w, g, 1, 1)
    runs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            runs.append(ops.conv2d_backward(x.astype(np.float32), w.astype(np.float32), g.astype(np.float32), 1, 1))
    for dx, dw, db in runs[1:]:
        assert np.array_equal(dw, runs[0][1]) and np.array_equal(dx, runs[0][0])
    assert rel_err(runs[0][1], dw64) < 1e-5
    assert rel_err(runs[0][2], db64) < 1e-5


# -- Grouped and depthwise convolution (math.md eq. 5) ------------------------------------------------


def random_grouped_case(rng, depthwise=False):
    """A random valid grouped configuration: g groups of cg input and kg output channels."""
    while True:
        g = int(rng.integers(2, 5))
        cg, kg = (1, 1) if depthwise else (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        n = int(rng.integers(1, 4))
        kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
        h, w = (int(v) for v in rng.integers(1, 10, size=2))
        s = tuple(int(v) for v in rng.integers(1, 3, size=2))
        p = tuple(int(v) for v in rng.integers(0, 3, size=2))
        d = tuple(int(v) for v in rng.integers(1, 3, size=2))
        xs, ws = (n, g * cg, h, w), (g * kg, cg, kh, kw)
        try:
            out = ops.conv2d_output_shape(xs, ws, s, p, d, g)
        except ValueError:
            continue
        return xs, ws, s, p, d, g, out


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("depthwise", [False, True])
def test_grouped_matches_reference_float64(seed, depthwise):
    rng = np.random.default_rng(200 + seed)
    xs, ws, s, p, d, grp, out = random_grouped_case(rng, depthwise)
    x, w, b, g = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0]), rng.standard_normal(out)
    y_ref = ref.conv2d_forward_ref(x, w, b, s, p, d, grp)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x, w, g, s, p, d, grp)
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            y = ops.conv2d_forward(x, w, b, s, p, d, grp)
            dx, dw, db = ops.conv2d_backward(x, w, g, s, p, d, grp)
            dx_full, _, _ = ops.conv2d_backward(x, w, g, s, p, d, grp, method="full")
        for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref), (dx_full, dx_ref)):
            assert rel_err(got, want) < 1e-10, (threads, xs, ws, s, p, d, grp)


@pytest.mark.parametrize("seed", range(6))
def test_grouped_matches_reference_float32(seed, kernel_path):
    rng = np.random.default_rng(300 + seed)
    xs, ws, s, p, d, grp, out = random_grouped_case(rng, depthwise=seed % 3 == 0)
    x, w, b, g = (rng.standard_normal(sh).astype(np.float32) for sh in (xs, ws, (ws[0],), out))
    want = (ref.conv2d_forward_ref(x, w, b, s, p, d, grp),) + ref.conv2d_backward_ref(x, w, g, s, p, d, grp)
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            got = (ops.conv2d_forward(x, w, b, s, p, d, grp),) + ops.conv2d_backward(x, w, g, s, p, d, grp)
        for a, b_ in zip(got, want):
            assert a.dtype == np.float32 and rel_err(a, b_) < 1e-4


@pytest.mark.parametrize(
    "xs, ws, s, p, d, grp",
    [
        ((2, 32, 7, 9), (32, 8, 3, 3), 1, 1, 1, 4),  # 16+ channels: implicit gX per group
        ((2, 20, 6, 5), (20, 1, 3, 2), (2, 1), (1, 0), (1, 2), 20),  # depthwise, non-square, strided, dilated
        ((2, 18, 8, 8), (36, 1, 3, 3), 1, 1, 1, 18),  # channel multiplier 2 (not depthwise)
        ((3, 24, 5, 6), (48, 12, 2, 3), 2, (1, 2), 1, 2),  # strided: listed or explicit rows
    ],
)
def test_grouped_float32_paths_on_wider_layers(xs, ws, s, p, d, grp, kernel_path):
    rng = np.random.default_rng(9)
    x, w, b = (rng.standard_normal(sh).astype(np.float32) for sh in (xs, ws, (ws[0],)))
    y_ref = ref.conv2d_forward_ref(x, w, b, s, p, d, grp)
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x, w, g, s, p, d, grp)
    runs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            runs.append((ops.conv2d_forward(x, w, b, s, p, d, grp),) + ops.conv2d_backward(x, w, g, s, p, d, grp))
            _, dw_only, db_only = ops.conv2d_backward(x, w, g, s, p, d, grp, need_input_grad=False)
        for got, want in zip(runs[-1] + (dw_only, db_only), (y_ref, dx_ref, dw_ref, db_ref, dw_ref, db_ref)):
            assert rel_err(got, want) < 1e-5, (kernel_path, threads)
    for other in runs[1:]:  # bit-identical for any thread count
        for a, b_ in zip(runs[0], other):
            assert np.array_equal(a, b_)


@pytest.mark.parametrize("grp, ws", [(2, (4, 1, 3, 2)), (2, (2, 1, 2, 3))])
def test_grouped_central_difference_gradients(grp, ws):
    """Float64 central differences for a grouped (4 outputs) and a depthwise (2 -> 2) layer."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal(ws), rng.standard_normal(ws[0])
    s, p, d = (1, 2), 1, (2, 1)
    g = rng.standard_normal(ops.conv2d_forward(x, w, b, s, p, d, grp).shape)
    dx, dw, db = ops.conv2d_backward(x, w, g, s, p, d, grp)
    eps = 1e-6
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            up = float(np.sum(ops.conv2d_forward(x, w, b, s, p, d, grp) * g))
            arr[idx] = old - eps
            down = float(np.sum(ops.conv2d_forward(x, w, b, s, p, d, grp) * g))
            arr[idx] = old
            num[idx] = (up - down) / (2 * eps)
        err = np.abs(num - grad) / np.maximum(1e-8, np.abs(num) + np.abs(grad))
        assert err.max() < 1e-5
        assert np.abs(num - grad).max() < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_nan_propagates_and_scratch_stays_clean(dtype):
    rng = np.random.default_rng(14)
    w = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
    x = rng.standard_normal((2, 8, 6, 6)).astype(dtype)
    x[1, 3, 2, 2] = np.nan
    y = ops.conv2d_forward(x, w, None, 1, 1, 1, 8)
    assert np.isnan(y[1, 3, 1:4, 1:4]).all() and np.isfinite(y[0]).all() and np.isfinite(np.delete(y[1], 3, 0)).all()
    g = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = ops.conv2d_backward(x, w, g, 1, 1, 1, 8)
    assert np.isnan(dw[3]).all() and np.isfinite(np.delete(dw, 3, 0)).all() and np.isfinite(dx).all()
    x[1, 3, 2, 2] = 0.5
    want = (ref.conv2d_forward_ref(x, w, None, 1, 1, 1, 8),) + ref.conv2d_backward_ref(x, w, g, 1, 1, 1, 8)
    got = (ops.conv2d_forward(x, w, None, 1, 1, 1, 8),) + ops.conv2d_backward(x, w, g, 1, 1, 1, 8)
    for a, b_ in zip(got, want):
        assert rel_err(a, b_) < (1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize(
    "xs, ws, grp, words",
    [
        ((1, 6, 5, 5), (4, 2, 3, 3), 4, ["groups=4", "6", "divide"]),
        ((1, 6, 5, 5), (3, 3, 3, 3), 2, ["groups=2", "output channels (3"]),
        ((1, 6, 5, 5), (4, 2, 3, 3), 2, ["weight.shape[1] must be 3"]),
    ],
)
def test_bad_groups_are_rejected(xs, ws, grp, words):
    with pytest.raises(ValueError) as info:
        ops.conv2d_forward(np.ones(xs), np.ones(ws), groups=grp)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        ops.conv2d_forward(np.ones((1, 2, 3, 3)), np.ones((1, 2, 1, 1)), groups=0)
    with pytest.raises(TypeError, match="groups must be a positive int"):
        ops.conv2d_forward(np.ones((1, 2, 3, 3)), np.ones((1, 2, 1, 1)), groups=1.0)


# -- Read-only inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grp", [1, 4])
def test_read_only_and_memory_mapped_inputs(tmp_path, dtype, grp):
    """Kernels take const memoryviews: np.load(mmap_mode="r") and writeable=False arrays work."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 4, 6, 7)).astype(dtype)
    w = rng.standard_normal((8, 4 // grp, 3, 3)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    g = rng.standard_normal((2, 8, 6, 7)).astype(dtype)
    want = (ops.conv2d_forward(x, w, b, 1, 1, 1, grp),) + ops.conv2d_backward(x, w, g, 1, 1, 1, grp)
    for name, a in (("x", x), ("w", w), ("b", b), ("g", g)):
        np.save(tmp_path / f"{name}.npy", a)
    mm = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in "xwbg"}
    assert not mm["x"].flags.writeable
    frozen = {}
    for name, a in (("x", x), ("w", w), ("b", b), ("g", g)):
        frozen[name] = a.copy()
        frozen[name].flags.writeable = False
    for arrays in (mm, frozen):
        got = (ops.conv2d_forward(arrays["x"], arrays["w"], arrays["b"], 1, 1, 1, grp),) + ops.conv2d_backward(
            arrays["x"], arrays["w"], arrays["g"], 1, 1, 1, grp
        )
        for a, b_ in zip(got, want):
            assert np.array_equal(a, b_)


def test_nan_image_does_not_leak_into_the_next_ones(kernel_path):
    """With 8+ images each thread reuses one buffer per image: a NaN image must not poison the
    images that follow it (padding and dropped columns are rewritten), and its own NaNs propagate."""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((9, 16, 6, 5)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    g = rng.standard_normal((9, 16, 6, 5)).astype(np.float32)
    x[0, 3, 2, 2] = np.nan
    g[4, 5, 0, 0] = np.nan
    with cnnframe.num_threads(2):
        y = ops.conv2d_forward(x, w, None, 1, 1)
        dx, dw, db = ops.conv2d_backward(x, w, g, 1, 1)
    assert np.isnan(y[0]).any() and np.isfinite(y[1:]).all()
    assert np.isnan(dx[4]).any() and np.isfinite(np.delete(dx, 4, 0)).all()
    # dW[k, c] sums G[n, k] · X[n, c]: NaN exactly where k = 5 (NaN gradient) or c = 3 (NaN input)
    assert np.isnan(dw[5]).all() and np.isnan(dw[:, 3]).all()
    assert np.isfinite(np.delete(np.delete(dw, 5, 0), 3, 1)).all()
    assert np.isnan(db[5]) and np.isfinite(np.delete(db, 5)).all()
    clean = np.delete(np.arange(9), [0, 4])
    y_ref = ref.conv2d_forward_ref(x[clean], w, None, 1, 1)
    assert rel_err(y[clean], y_ref) < 1e-5
    dx_ref = ref.conv2d_input_grad_ref(g[clean], w, x[clean].shape, 1, 1)
    assert rel_err(dx[clean], dx_ref) < 1e-5
