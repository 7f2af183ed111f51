"""Dense against y = x Wᵀ + b written out by hand, shape inference, init and input errors."""
import math

import numpy as np
import pytest

from cnnframe.layers import Dense


def test_forward_backward_by_hand():
    rng = np.random.default_rng(0)
    layer = Dense(3, in_features=4, dtype="float64", seed=0)
    w, b = layer.parameters()["weight"].data, layer.parameters()["bias"].data
    x = rng.standard_normal((5, 4))
    y = layer.forward(x)
    for n in range(5):
        for o in range(3):
            assert y[n, o] == pytest.approx(sum(x[n, i] * w[o, i] for i in range(4)) + b[o], rel=1e-13)
    g = rng.standard_normal((5, 3))
    dx = layer.backward(g)
    for n in range(5):
        for i in range(4):
            assert dx[n, i] == pytest.approx(sum(g[n, o] * w[o, i] for o in range(3)), rel=1e-13)
    dw = layer.parameters()["weight"].grad
    for o in range(3):
        for i in range(4):
            assert dw[o, i] == pytest.approx(sum(g[n, o] * x[n, i] for n in range(5)), rel=1e-13)
    np.testing.assert_allclose(layer.parameters()["bias"].grad, g.sum(axis=0), rtol=1e-13)


def test_no_bias():
    layer = Dense(2, in_features=3, bias=False, dtype="float64")
    assert list(layer.parameters()) == ["weight"]
    x = np.ones((1, 3))
    np.testing.assert_allclose(layer.forward(x), layer.parameters()["weight"].data.sum(axis=1)[None])


def test_shape_inference_and_lazy_build():
    layer = Dense(10)
    assert not layer.built and not layer.parameters()
    assert layer.output_shape((32,)) == (10,)
    assert not layer.parameters()
    y = layer.forward(np.zeros((4, 32), np.float32))
    assert y.shape == (4, 10) and layer.in_features == 32
    assert layer.parameters()["weight"].shape == (10, 32)
    assert layer.get_config()["in_features"] == 32
    assert not layer.parameters()["bias"].weight_decay and layer.parameters()["weight"].weight_decay


def test_init_pytorch_default_and_seed():
    a = Dense(50, in_features=200, seed=1)
    bound = 1 / math.sqrt(200)
    w = a.parameters()["weight"].data
    assert 0.95 * bound < np.abs(w).max() <= bound
    assert np.abs(a.parameters()["bias"].data).max() <= bound
    np.testing.assert_array_equal(Dense(50, in_features=200, seed=1).parameters()["weight"].data, w)
    lazy = Dense(50, seed=1)
    lazy.build((200,))
    np.testing.assert_array_equal(lazy.parameters()["weight"].data, w)
    c = Dense(50, in_features=200)
    c.reset_parameters(np.random.default_rng(1))
    np.testing.assert_array_equal(c.parameters()["weight"].data, w)


def test_errors_suggest_flatten():
    layer = Dense(3)
    with pytest.raises(ValueError, match=r"Dense: expected input with 2 dimensions \(N, F\), got shape \(2, 1, 4, 4\).*Flatten"):
        layer.forward(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"Dense: expects per-sample input shape \(F,\), got \(1, 4, 4\).*Flatten"):
        layer.output_shape((1, 4, 4))
    layer = Dense(3, in_features=4)
    with pytest.raises(ValueError, match=r"Dense: input has 5 features \(shape \(2, 5\)\) but the layer was built for 4"):
        layer.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="Dense: input must be a floating-point array, got dtype int32"):
        layer.forward(np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match="Dense: input has an empty batch"):
        layer.forward(np.zeros((0, 4), np.float32))
    with pytest.raises(TypeError):  # PyTorch's positional Linear(in, out) is not silently misread
        Dense(4, 3)
    with pytest.raises(ValueError, match="out_features must be a positive integer"):
        Dense(0)
    with pytest.raises(TypeError, match="seed"):
        Dense(2, seed="abc")


def test_float32_layer_casts_float64_input():
    layer = Dense(2, in_features=3, seed=0)
    x = np.arange(6.0).reshape(2, 3)
    y = layer.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, layer.forward(x.astype(np.float32)))


def test_first_layer_can_skip_its_input_gradient():
    layer = Dense(3, in_features=4, seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 4))
    g = np.random.default_rng(1).standard_normal((5, 3))
    layer.forward(x)
    dx = layer.backward(g)
    dw = layer.parameters()["weight"].grad.copy()
    layer.zero_grad()
    layer.need_input_grad = False
    assert layer.backward(g) is None
    np.testing.assert_array_equal(layer.parameters()["weight"].grad, dw)
    np.testing.assert_allclose(dx, g @ layer.parameters()["weight"].data, rtol=1e-12)
