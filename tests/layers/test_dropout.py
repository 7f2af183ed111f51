"""Dropout: inverted scaling, identity in eval, seeded masks, gradient through the same mask."""
import numpy as np
import pytest

from cnnframe.gradcheck import check_layer
from cnnframe.layers import Dropout


def test_inverted_scaling_and_mask_statistics():
    layer = Dropout(0.25, seed=0, dtype="float64")
    x = np.ones((200, 500))
    y = layer.forward(x)
    kept = y != 0
    np.testing.assert_array_equal(y[kept], np.full(kept.sum(), 1 / 0.75))
    assert abs(kept.mean() - 0.75) < 0.005  # 100k Bernoulli draws: std 0.0014
    assert abs(y.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    g = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(g), np.where(kept, g / 0.75, 0.0), rtol=1e-15)


def test_eval_is_identity_and_p_edges():
    x = np.random.default_rng(0).standard_normal((3, 4))
    layer = Dropout(0.5, seed=1, dtype="float64").eval()
    np.testing.assert_array_equal(layer.forward(x), x)
    g = np.ones_like(x)
    np.testing.assert_array_equal(layer.backward(g), g)
    np.testing.assert_array_equal(Dropout(0.0, dtype="float64").forward(x), x)
    assert np.all(Dropout(1.0, dtype="float64").forward(x) == 0)
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="Dropout: p must be a probability"):
            Dropout(bad)


def test_seed_and_reseed_reproduce_masks_across_dtypes():
    x = np.ones((4, 50))
    a = Dropout(0.5, seed=3, dtype="float64")
    b = Dropout(0.5, seed=3, dtype="float32")
    ya1, ya2 = a.forward(x), a.forward(x)
    assert not np.array_equal(ya1, ya2)  # a fresh mask each forward
    np.testing.assert_array_equal(b.forward(x), ya1)
    a.reseed(3)
    np.testing.assert_array_equal(a.forward(x), ya1)
    a.reseed(4)
    assert not np.array_equal(a.forward(x), ya1)
    assert Dropout(0.2, seed=9).get_config() == {"type": "dropout", "dtype": "float32", "p": 0.2, "seed": 9}


def test_gradcheck_with_fixed_mask():
    report = check_layer(Dropout(0.5, seed=0, dtype="float64"), (3, 4, 4), batch_size=2)
    assert report.passed, str(report)
    # half the inputs are dropped: their gradients are exactly zero and the check still passes
    assert report.tensors["input"].checked == 96
