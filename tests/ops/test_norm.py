"""BatchNorm kernels against the loop reference: both dtypes, odd shapes, fused ReLU, evaluation mode,
thread counts, NaNs, read-only inputs and bad arguments."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
from cnnframe._ext import norm as norm_ext
from cnnframe.ops import _reference as ref

SHAPES = [(1, 3, 2, 5), (4, 2, 3, 3), (2, 5, 1, 1), (3, 4, 7), (6, 3), (2, 1, 33, 17), (1, 2, 300)]


def case(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    return x, g, gamma, beta


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_training_matches_reference(shape, dtype, relu):
    x, g, gamma, beta = case(shape, dtype, sum(shape))
    y, mean, var, inv_std = ops.batch_norm_forward(x, gamma, beta, 1e-5, relu=relu)
    y_ref, mean_ref, var_ref = ref.batch_norm_forward_ref(x, gamma, beta, 1e-5, relu=relu)
    assert y.shape == shape and y.dtype == mean.dtype == var.dtype == inv_std.dtype == dtype
    np.testing.assert_allclose(y, y_ref, **tol(dtype))
    np.testing.assert_allclose(mean, mean_ref, **tol(dtype))
    np.testing.assert_allclose(var, var_ref, **tol(dtype))
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(var_ref + 1e-5), **tol(dtype))
    dx, dgamma, dbeta = ops.batch_norm_backward(g, x, mean, inv_std, gamma, beta, relu=relu)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward_ref(x, g, gamma, beta, 1e-5, relu=relu)
    np.testing.assert_allclose(dx, dx_ref, **tol(dtype))
    np.testing.assert_allclose(dgamma, dgamma_ref, **tol(dtype))
    np.testing.assert_allclose(dbeta, dbeta_ref, **tol(dtype))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluation_uses_the_given_statistics(dtype, relu):
    x, g, gamma, beta = case((3, 4, 5, 2), dtype, 7)
    mean = np.array([0.5, -1, 2, 0], dtype)
    inv_std = np.array([1.0, 0.5, 2, 3], dtype)
    y, _, var, _ = ops.batch_norm_forward(x, gamma, beta, 1e-5, mean=mean, inv_std=inv_std, relu=relu)
    c = (slice(None), None, None)  # (C,) → (C, 1, 1), broadcast over (N, C, H, W)
    y_ref = gamma[c] * (x.astype(np.float64) - mean[c]) * inv_std[c] + beta[c]
    np.testing.assert_allclose(y, np.maximum(y_ref, 0) if relu else y_ref, **tol(dtype))
    assert var is None
    dx, dgamma, dbeta = ops.batch_norm_backward(g, x, mean, inv_std, gamma, beta, training=False, relu=relu)
    G = np.where(y_ref > 0, g, 0) if relu else g.astype(np.float64)
    xhat = (x.astype(np.float64) - mean[c]) * inv_std[c]
    np.testing.assert_allclose(dx, G * (gamma * inv_std)[c], **tol(dtype))
    np.testing.assert_allclose(dgamma, (G * xhat).sum(axis=(0, 2, 3)), **tol(dtype))
    np.testing.assert_allclose(dbeta, G.sum(axis=(0, 2, 3)), **tol(dtype))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7, 19, 23), (9, 5, 16, 16)])  # every run with a tail; whole segments
def test_results_do_not_depend_on_the_thread_count(shape, dtype, relu):
    x, g, gamma, beta = case(shape, dtype, 3)
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            y, mean, var, inv = ops.batch_norm_forward(x, gamma, beta, 1e-5, relu=relu)
            outs.append((y, mean, var, inv) + ops.batch_norm_backward(g, x, mean, inv, gamma, beta, relu=relu))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_backward_relu_mask_is_the_forward_one(dtype):
    """γ·x̂ + β lands within rounding of 0 for many values (β = −γ·x̂ of 1, half the values near 1): the
    backward pass must recompute exactly the forward's sign, or a fused multiply-add in one pass and
    not the other would show as gradients where the output is 0, or none where it is not."""
    rng = np.random.default_rng(2)
    x = (1 + np.finfo(dtype).eps * rng.integers(-20, 21, (4, 2, 4099))).astype(dtype)  # 1 within 20 ulps
    x[:, :, ::2] = rng.standard_normal((4, 2, 2050)).astype(dtype)
    gamma = np.array([1.3, -0.7], dtype)
    _, mean, _, inv = ops.batch_norm_forward(x, gamma, np.zeros(2, dtype), 1e-5)
    beta = -gamma * ((dtype(1) - mean) * inv)
    y, mean, _, inv = ops.batch_norm_forward(x, gamma, beta, 1e-5, relu=True)
    dx, _, _ = ops.batch_norm_backward(np.ones_like(x), x, mean, inv, gamma, beta, training=False, relu=True)
    assert 1000 < np.count_nonzero(y == 0) < x.size - 1000
    assert np.array_equal(dx != 0, y > 0)  # evaluation: dx = γ·inv·G, G = [y > 0]


def test_float32_statistics_keep_float32_precision_on_long_channels():
    """Sums run in double over lanes: a channel of 2^20 values near 1000 still gets its mean and variance."""
    rng = np.random.default_rng(0)
    x = (1000 + rng.standard_normal((16, 2, 256, 256))).astype(np.float32)
    _, mean, var, _ = ops.batch_norm_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32), 1e-5)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2, 3)), rtol=1e-4)


def test_nan_stays_in_its_channel():
    x, g, gamma, beta = case((2, 3, 4, 4), np.float32, 1)
    x[1, 1, 2, 3] = np.nan
    for relu in (False, True):
        y, mean, _, inv = ops.batch_norm_forward(x, gamma, beta, 1e-5, relu=relu)
        assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
        dx, dgamma, dbeta = ops.batch_norm_backward(g, x, mean, inv, gamma, beta, relu=relu)
        assert np.isnan(dx[:, 1]).all() and np.isfinite(dx[:, [0, 2]]).all()
        assert np.isnan(dgamma[1]) and np.isfinite(dgamma[[0, 2]]).all()


def test_read_only_inputs(tmp_path):
    x, g, gamma, beta = case((2, 3, 4, 5), np.float32, 2)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for a in (g, gamma, beta):
        a.flags.writeable = False
    y, mean, var, inv = ops.batch_norm_forward(xm, gamma, beta, 1e-5, relu=True)
    mean.flags.writeable = inv.flags.writeable = False
    dx, _, _ = ops.batch_norm_backward(g, xm, mean, inv, gamma, beta, relu=True)
    y2, _, _, _ = ops.batch_norm_forward(x.copy(), gamma, beta, 1e-5, relu=True)
    assert np.array_equal(y, y2) and np.isfinite(dx).all()


@pytest.mark.parametrize("call, exc, words", [
    (lambda x, w: ops.batch_norm_forward(x[0, 0, 0], w, w, 1e-5), ValueError, ["(N, C, ...)"]),
    (lambda x, w: ops.batch_norm_forward(x[:0], w, w, 1e-5), ValueError, ["empty"]),
    (lambda x, w: ops.batch_norm_forward(x, w[:2], w, 1e-5), ValueError, ["weight", "(3,)"]),
    (lambda x, w: ops.batch_norm_forward(x, w, w.astype(np.float64), 1e-5), TypeError, ["bias", "float64"]),
    (lambda x, w: ops.batch_norm_forward(x, w, w, 0.0), ValueError, ["eps"]),
    (lambda x, w: ops.batch_norm_forward(x, w, w, 1e-5, mean=w), ValueError, ["mean and inv_std"]),
    (lambda x, w: ops.batch_norm_forward(x.astype(np.int32), w, w, 1e-5), TypeError, ["int32"]),
    (lambda x, w: ops.batch_norm_backward(x[:1], x, w, w, w, w), ValueError, ["grad_out", "shape"]),
    (lambda x, w: ops.batch_norm_backward(x.astype(np.float64), x, w, w, w, w), TypeError, ["grad_out"]),
])
def test_bad_arguments(call, exc, words):
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(exc) as info:
        call(x, np.ones(3, np.float32))
    for w in words:
        assert w in str(info.value)


# -- BatchNorm, ReLU and max pooling in one pass ------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("k", [2, (3, 2), 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (3, 5, 2, 2)])
def test_relu_maxpool_is_bit_identical_to_the_three_ops(shape, dtype, k, training):
    x, _, gamma, beta = case(shape, dtype, sum(shape))
    x[0, 0, 0, :2] = x[0, 0, 1, 0] = -50  # a window where the ReLU zeroes every value: ties at 0
    stats = {} if training else {"mean": np.full(shape[1], 1.5, dtype), "inv_std": np.full(shape[1], 0.7, dtype)}
    if np.ndim(k) == 0 and min(shape[2:]) < k or np.ndim(k) == 1 and (shape[2] < k[0] or shape[3] < k[1]):
        return
    y, arg, mean, var, inv = ops.batch_norm_relu_maxpool_forward(x, gamma, beta, 1e-5, k, **stats)
    z, mean2, var2, inv2 = ops.batch_norm_forward(x, gamma, beta, 1e-5, relu=True, **stats)
    y2, arg2 = ops.max_pool2d_forward(z, k)
    assert np.array_equal(y, y2) and np.array_equal(arg, arg2) and np.array_equal(mean, mean2)
    assert np.array_equal(inv, inv2) and (var is None) == (var2 is None) and (var is None or np.array_equal(var, var2))
    g = np.random.default_rng(9).standard_normal(y.shape).astype(dtype)
    dx, dgamma, dbeta = ops.batch_norm_relu_maxpool_backward(g, arg, x, mean, inv, gamma, beta, k, training)
    dz = ops.max_pool2d_backward(g, arg2, x.shape)
    dx2, dgamma2, dbeta2 = ops.batch_norm_backward(dz, x, mean, inv, gamma, beta, training, relu=True)
    assert np.array_equal(dx, dx2) and np.array_equal(dgamma, dgamma2) and np.array_equal(dbeta, dbeta2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_maxpool_matches_the_loop_references(dtype):
    x, _, gamma, beta = case((2, 3, 5, 6), dtype, 4)
    y, arg, _, _, _ = ops.batch_norm_relu_maxpool_forward(x, gamma, beta, 1e-5, 2)
    z_ref, _, _ = ref.batch_norm_forward_ref(x, gamma, beta, 1e-5, relu=True)
    y_ref, _ = ref.max_pool2d_forward_ref(z_ref, 2)
    np.testing.assert_allclose(y, y_ref, **tol(dtype))
    g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    _, _, _, _, inv = ops.batch_norm_relu_maxpool_forward(x, gamma, beta, 1e-5, 2)
    _, mean, _, inv = ops.batch_norm_forward(x, gamma, beta, 1e-5)
    dx, dgamma, dbeta = ops.batch_norm_relu_maxpool_backward(g, arg, x, mean, inv, gamma, beta, 2)
    dz = np.zeros(x.shape)  # the pooled gradient at the maxima the reference pooling picks
    dz.reshape(6, -1)[np.arange(6)[:, None], arg.reshape(6, -1)] = g.reshape(6, -1)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward_ref(x, dz, gamma, beta, 1e-5, relu=True)
    np.testing.assert_allclose(dx, dx_ref, **tol(dtype))
    np.testing.assert_allclose(dgamma, dgamma_ref, **tol(dtype))
    np.testing.assert_allclose(dbeta, dbeta_ref, **tol(dtype))


def test_relu_maxpool_threads_read_only_and_bad_indices(tmp_path):
    x, _, gamma, beta = case((3, 5, 10, 12), np.float32, 5)
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            y, arg, mean, var, inv = ops.batch_norm_relu_maxpool_forward(x, gamma, beta, 1e-5, 2)
            outs.append((y, arg, mean, var) + ops.batch_norm_relu_maxpool_backward(np.ones_like(y), arg, x, mean, inv,
                                                                                  gamma, beta, 2))
    for other in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(outs[0], other))
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    arg.flags.writeable = False
    y2, _, _, _, _ = ops.batch_norm_relu_maxpool_forward(xm, gamma, beta, 1e-5, 2)
    dx2, _, _ = ops.batch_norm_relu_maxpool_backward(np.ones_like(y), arg, xm, mean, inv, gamma, beta, 2)
    assert np.array_equal(y2, outs[0][0]) and np.array_equal(dx2, outs[0][4])
    bad = arg.copy()
    bad[1, 2, 3, 4] = 10 * 12
    with pytest.raises(ValueError, match="1 indices outside the input plane of 120"):
        ops.batch_norm_relu_maxpool_backward(np.ones_like(y), bad, x, mean, inv, gamma, beta, 2)
    with pytest.raises(ValueError, match="argmax must be the int32"):
        ops.batch_norm_relu_maxpool_backward(np.ones_like(y), arg.astype(np.int64), x, mean, inv, gamma, beta, 2)
    with pytest.raises(ValueError, match="gives"):
        ops.batch_norm_relu_maxpool_backward(np.ones_like(y), arg, x, mean, inv, gamma, beta, 3)
    with pytest.raises(ValueError, match="output size"):
        ops.batch_norm_relu_maxpool_forward(x, gamma, beta, 1e-5, 11)


def test_float32_statistics_of_many_short_runs():
    """BatchNorm1D's channels are runs of one value each: 10^5 of them still sum to float32 precision."""
    rng = np.random.default_rng(1)
    x = (100 + rng.standard_normal((100_000, 3))).astype(np.float32)
    _, mean, var, _ = ops.batch_norm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), 1e-5)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-4)


# -- The AVX2 forms of the loops give the bits of the SSE2 / plain-C forms ------------------------------------
@pytest.fixture
def both_paths():
    """Runs a callable once with the AVX2 loops off and once on; returns both results."""
    if not norm_ext.avx2_available():
        pytest.skip("this CPU has no AVX2: only the SSE2 / plain-C loops exist here")

    def run(f):
        old = norm_ext._use_avx2(False)
        try:
            base = f()
            norm_ext._use_avx2(True)
            return base, f()
        finally:
            norm_ext._use_avx2(old)
    return run


def assert_same_bits(a, b):
    for u, v in zip(a, b):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        assert np.array_equal(u.view(f"u{u.itemsize}"), v.view(f"u{v.itemsize}"))


def awkward(shape, dtype, seed):
    """Ties (the first image rounded; the others not, so the sums round), a NaN, -0.0, and a first channel
    with γ = β = 0 (γ·x̂ + β is 0 there, which the ReLU zeroes); the gradient as ``case`` gives it."""
    x, g, gamma, beta = case(shape, dtype, seed)
    gamma[0] = beta[0] = 0
    x[0] = np.round(x[0] * 4) / 4
    flat = x.reshape(-1)
    flat[::97] = np.nan if flat.size > 50 else flat[::97]
    flat[5::89] = -0.0
    return x, g, gamma, beta


# (N, L): odd runs; then float32 channels whose 256-element segments the AVX2 loops sum four at a time
# (runs of 64, 256, 768 and 1024; a last group of fewer than four segments; a rest that starts mid-run).
RUNS = [(3, 1), (3, 7), (3, 8), (3, 9), (3, 31), (3, 33), (3, 1000), (19, 64), (9, 256), (2, 768), (5, 1024)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, run", RUNS)
def test_avx2_loops_give_the_bits_of_the_sse2_loops(both_paths, n, run, dtype):
    x, g, gamma, beta = awkward((n, 3, run), dtype, run)
    clean = np.nan_to_num(x)  # statistics free of the NaN, so the sums are compared too
    for relu in (False, True):
        for data in (x, clean):
            out = both_paths(lambda: ops.batch_norm_forward(data, gamma, beta, 1e-5, relu=relu))
            assert_same_bits(*out)
            mean, inv = out[0][1], out[0][3]
            for training in (True, False):
                assert_same_bits(*both_paths(lambda: ops.batch_norm_backward(g, data, mean, inv, gamma, beta,
                                                                             training, relu=relu)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 6, 2 * wo + 1) for wo in (1, 7, 8, 9, 31, 33)]  # odd widths: the last
                         + [(19, 2, 8, 8), (9, 2, 16, 16), (5, 2, 32, 32), (2, 2, 24, 32)])  # column is dropped
def test_avx2_relu_maxpool_gives_the_bits_of_the_sse2_path(both_paths, shape, dtype):
    wo = shape[3] // 2
    x, _, gamma, beta = awkward(shape, dtype, wo)
    x[0, 0, :2, :4] = -50  # windows the ReLU zeroes: ties at 0
    clean = np.nan_to_num(x)
    for data in (x, clean):
        (y, arg, mean, var, inv), other = both_paths(lambda: ops.batch_norm_relu_maxpool_forward(data, gamma, beta,
                                                                                                 1e-5, 2))
        assert_same_bits((y, arg, mean, var, inv), other)
        gy = np.random.default_rng(wo).standard_normal(y.shape).astype(dtype)
        for training in (True, False):
            assert_same_bits(*both_paths(lambda: ops.batch_norm_relu_maxpool_backward(gy, arg, data, mean, inv, gamma,
                                                                                       beta, 2, training)))
