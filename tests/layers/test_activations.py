"""Activations against their formulas, written out with NumPy/math, plus extreme inputs."""
import math
import warnings

import numpy as np
import pytest

from cnnframe.layers import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4, 5)) * 3
G = RNG.standard_normal((3, 4, 5))


def _elementwise(f):
    return np.vectorize(f)(X)


@pytest.mark.parametrize(
    "layer, f, df",
    [
        (ReLU(dtype="float64"), lambda v: max(v, 0.0), lambda v: 1.0 if v > 0 else 0.0),
        (LeakyReLU(0.2, dtype="float64"), lambda v: v if v > 0 else 0.2 * v, lambda v: 1.0 if v > 0 else 0.2),
        (Sigmoid(dtype="float64"), lambda v: 1 / (1 + math.exp(-v)), lambda v: math.exp(-v) / (1 + math.exp(-v)) ** 2),
        (Tanh(dtype="float64"), math.tanh, lambda v: 1 / math.cosh(v) ** 2),
    ],
    ids=["relu", "leakyrelu", "sigmoid", "tanh"],
)
def test_elementwise_by_hand(layer, f, df):
    np.testing.assert_allclose(layer.forward(X), _elementwise(f), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.backward(G), G * _elementwise(df), rtol=1e-12, atol=1e-15)
    assert layer.output_shape((4, 5)) == (4, 5)


def test_softmax_by_hand_along_axis_1():
    layer = Softmax(dtype="float64")
    y = layer.forward(X)
    expected = np.empty_like(X)
    for n in range(3):
        for j in range(5):
            e = [math.exp(X[n, c, j]) for c in range(4)]
            for c in range(4):
                expected[n, c, j] = e[c] / sum(e)
    np.testing.assert_allclose(y, expected, rtol=1e-13)
    # dx_c = Σ_k G_k ∂y_k/∂x_c with ∂y_k/∂x_c = y_k (δ_kc − y_c)
    dx = layer.backward(G)
    for n in range(3):
        for j in range(5):
            yy, gg = expected[n, :, j], G[n, :, j]
            for c in range(4):
                want = sum(gg[k] * yy[k] * ((k == c) - yy[c]) for k in range(4))
                assert dx[n, c, j] == pytest.approx(want, rel=1e-11, abs=1e-14)


def test_extreme_inputs_do_not_overflow():
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in ("float32", "float64"):
            s = Sigmoid(dtype=dtype).forward(x)
            assert np.all(np.isfinite(s)) and s[0, 0] == 0 and s[0, -1] == 1
            sm = Softmax(dtype=dtype).forward(x)
            assert np.all(np.isfinite(sm)) and sm[0, -1] == pytest.approx(1.0)
            assert np.all(np.isfinite(Tanh(dtype=dtype).forward(x)))


def test_leakyrelu_config_and_errors():
    layer = LeakyReLU(negative_slope=0.3)
    assert layer.get_config() == {"type": "leakyrelu", "dtype": "float32", "negative_slope": 0.3}
    assert LeakyReLU.from_config(layer.get_config()).negative_slope == 0.3
    with pytest.raises(TypeError, match="negative_slope"):
        LeakyReLU(negative_slope="x")
    assert LeakyReLU().negative_slope == 0.01  # PyTorch's default


def test_activation_errors():
    with pytest.raises(ValueError, match=r"Softmax: expected input with at least 2 dimensions \(N, C, \.\.\.\), got shape \(5,\)"):
        Softmax().forward(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="ReLU: input must be a floating-point array, got dtype bool"):
        ReLU().forward(np.zeros((2, 2), bool))
    with pytest.raises(RuntimeError, match="Tanh: backward\\(\\) called before forward"):
        Tanh().backward(np.zeros((2, 2), np.float32))
    r = ReLU()
    r.forward(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"ReLU: grad_out has shape \(2, 3\) but the last forward produced \(2, 2\)"):
        r.backward(np.zeros((2, 3), np.float32))


def test_float16_input_is_cast_to_layer_dtype():
    y = ReLU().forward(np.ones((2, 2), np.float16))
    assert y.dtype == np.float32
