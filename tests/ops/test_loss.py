"""Softmax cross-entropy kernel against the loop reference: both dtypes, label smoothing, extreme and
non-finite logits, thread counts, read-only inputs and bad labels."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
from cnnframe.ops import _reference as ref


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k", [(1, 1), (1, 10), (5, 3), (64, 10)])
def test_matches_reference(n, k, dtype, smoothing):
    rng = np.random.default_rng(n * k)
    z = (rng.standard_normal((n, k)) * 4).astype(dtype)
    y = rng.integers(0, k, n)
    loss, probs, grad = ops.softmax_cross_entropy(z, y, smoothing)
    loss_ref, probs_ref, grad_ref = ref.softmax_cross_entropy_ref(z, y, smoothing)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert isinstance(loss, float) and loss == pytest.approx(loss_ref, rel=rtol, abs=rtol)
    assert probs.dtype == grad.dtype == dtype
    np.testing.assert_allclose(probs, probs_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad, grad_ref, rtol=rtol, atol=rtol)


def test_extreme_logits_do_not_overflow_and_nan_propagates():
    z = np.array([[1e4, -1e4, 0.0], [-1e30, 1e30, 5.0]], np.float32)
    loss, probs, grad = ops.softmax_cross_entropy(z, np.array([0, 0]))
    assert np.isfinite(probs).all() and np.isfinite(grad).all()
    assert loss == pytest.approx((0 + 2e30) / 2, rel=1e-6)
    z[0, 1] = np.nan
    loss, probs, grad = ops.softmax_cross_entropy(z, np.array([0, 0]))
    assert np.isnan(loss) and np.isnan(probs[0]).all() and np.isfinite(probs[1]).all()


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((999, 7)), rng.integers(0, 7, 999)
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            outs.append(ops.softmax_cross_entropy(z, y, 0.1))
    for other in outs[1:]:
        assert other[0] == outs[0][0] and np.array_equal(other[1], outs[0][1]) and np.array_equal(other[2], outs[0][2])


def test_read_only_inputs(tmp_path):
    z = np.random.default_rng(1).standard_normal((4, 3))
    np.save(tmp_path / "z.npy", z)
    y = np.array([0, 1, 2, 0], np.int32)
    y.flags.writeable = False
    loss, _, _ = ops.softmax_cross_entropy(np.load(tmp_path / "z.npy", mmap_mode="r"), y)
    assert loss == pytest.approx(ref.softmax_cross_entropy_ref(z, y)[0], rel=1e-12)


@pytest.mark.parametrize("z, y, exc, word", [
    (np.zeros(3), np.zeros(3, int), ValueError, "shape (N, classes)"),
    (np.zeros((0, 3)), np.zeros(0, int), ValueError, "empty batch"),
    (np.zeros((2, 3)), np.zeros(3, int), ValueError, "labels must have shape (2,)"),
    (np.zeros((2, 3)), np.zeros(2), TypeError, "integer class indices"),
    (np.zeros((2, 3)), np.array([0, 3]), ValueError, "label 3 at index 1 is out of range"),
    (np.zeros((2, 3), np.int64), np.zeros(2, int), TypeError, "int64"),
])
def test_bad_arguments(z, y, exc, word):
    with pytest.raises(exc) as info:
        ops.softmax_cross_entropy(z, y)
    assert word in str(info.value)
