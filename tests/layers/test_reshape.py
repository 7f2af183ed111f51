"""Flatten: C-order flattening (as PyTorch) and its inverse."""
import numpy as np
import pytest

from cnnframe.layers import Flatten


def test_flatten_c_order_and_backward():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)
    layer = Flatten(dtype="float64")
    y = layer.forward(x)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y[1], np.arange(12, 24))  # sample 1: channel 0 row 0, row 1, channel 1 ...
    g = np.arange(24.0).reshape(2, 12) * -1
    np.testing.assert_array_equal(layer.backward(g), g.reshape(2, 3, 2, 2))
    assert layer.output_shape((3, 2, 2)) == (12,)
    assert layer.output_shape((7,)) == (7,)


def test_flatten_errors():
    with pytest.raises(ValueError, match=r"Flatten: expected input with at least 2 dimensions .* got shape \(5,\)"):
        Flatten().forward(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="at least one dimension"):
        Flatten().output_shape(())
    layer = Flatten()
    layer.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 11\)"):
        layer.backward(np.zeros((2, 11), np.float32))
