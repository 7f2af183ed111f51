"""BatchNorm kernels against the loop reference: both dtypes, odd shapes, fused ReLU, evaluation mode,
thread counts, NaNs, read-only inputs and bad arguments."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
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
def test_results_do_not_depend_on_the_thread_count(dtype, relu):
    x, g, gamma, beta = case((5, 7, 19, 23), dtype, 3)  # odd sizes: every run has a tail
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            y, mean, var, inv = ops.batch_norm_forward(x, gamma, beta, 1e-5, relu=relu)
            outs.append((y, mean, var, inv) + ops.batch_norm_backward(g, x, mean, inv, gamma, beta, relu=relu))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)


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
