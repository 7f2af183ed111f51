"""BatchNorm1D/2D against the formulas written out with NumPy: batch statistics, running averages
(biased variance to normalise, unbiased to update, momentum 0.1), evaluation mode, gradients."""
import numpy as np
import pytest

import cnnframe
from cnnframe.gradcheck import check_layer, check_model
from cnnframe.layers import BatchNorm1D, BatchNorm2D, MaxPool2D, ReLU


def _set_affine(layer, rng):
    c = layer.num_features
    layer.parameters()["weight"].data[...] = rng.uniform(0.5, 1.5, c)
    layer.parameters()["bias"].data[...] = rng.standard_normal(c)


def test_batchnorm2d_training_by_hand():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 2)) * 2 + 1
    layer = BatchNorm2D(3, dtype="float64")
    _set_affine(layer, rng)
    gamma, beta = layer.parameters()["weight"].data.copy(), layer.parameters()["bias"].data.copy()
    y = layer.forward(x)
    m = 4 * 5 * 2
    for c in range(3):
        v = x[:, c].ravel()
        mu = v.sum() / m
        var = ((v - mu) ** 2).sum() / m
        np.testing.assert_allclose(y[:, c], gamma[c] * (x[:, c] - mu) / np.sqrt(var + 1e-5) + beta[c], rtol=1e-12)
        assert layer.buffers()["running_mean"][c] == pytest.approx(0.9 * 0 + 0.1 * mu, rel=1e-12)
        assert layer.buffers()["running_var"][c] == pytest.approx(0.9 * 1 + 0.1 * var * m / (m - 1), rel=1e-12)

    # gradient: differentiate y = γ (x − μ)/√(σ²+eps) + β by hand through μ and σ²
    g = rng.standard_normal(x.shape)
    dx = layer.backward(g)
    for c in range(3):
        v, gc = x[:, c], g[:, c]
        mu = v.mean()
        var = ((v - mu) ** 2).mean()
        s = np.sqrt(var + 1e-5)
        dxhat = gc * gamma[c]
        dvar = np.sum(dxhat * (v - mu)) * -0.5 * s**-3
        dmu = -np.sum(dxhat) / s + dvar * np.mean(-2 * (v - mu))
        want = dxhat / s + dvar * 2 * (v - mu) / m + dmu / m
        np.testing.assert_allclose(dx[:, c], want, rtol=1e-10, atol=1e-12)
        assert layer.parameters()["weight"].grad[c] == pytest.approx(np.sum(gc * (v - mu) / s), rel=1e-11)
        assert layer.parameters()["bias"].grad[c] == pytest.approx(gc.sum(), rel=1e-12)


def test_batchnorm1d_running_stats_and_eval():
    rng = np.random.default_rng(1)
    layer = BatchNorm1D(dtype="float64", momentum=0.3)
    rm, rv = np.zeros(4), np.ones(4)
    for _ in range(3):
        x = rng.standard_normal((6, 4)) * 3 + 2
        layer.forward(x)
        rm = 0.7 * rm + 0.3 * x.mean(axis=0)
        rv = 0.7 * rv + 0.3 * x.var(axis=0, ddof=1)
    np.testing.assert_allclose(layer.buffers()["running_mean"], rm, rtol=1e-12)
    np.testing.assert_allclose(layer.buffers()["running_var"], rv, rtol=1e-12)

    layer.eval()
    _set_affine(layer, rng)
    gamma, beta = layer.parameters()["weight"].data, layer.parameters()["bias"].data
    x = rng.standard_normal((2, 4))
    y = layer.forward(x)
    np.testing.assert_allclose(y, gamma * (x - rm) / np.sqrt(rv + 1e-5) + beta, rtol=1e-12)
    np.testing.assert_allclose(layer.buffers()["running_mean"], rm)  # eval leaves the statistics alone
    g = rng.standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(g), g * gamma / np.sqrt(rv + 1e-5), rtol=1e-12)
    # eval works on a single sample
    assert layer.forward(x[:1]).shape == (1, 4)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cls, shape", [(BatchNorm2D, (3, 3, 4)), (BatchNorm1D, (5,))])
def test_gradcheck_both_modes(cls, shape, mode):
    rng = np.random.default_rng(2)
    layer = cls(dtype="float64")
    layer.build(shape)
    _set_affine(layer, rng)
    layer.buffers()["running_mean"][...] = rng.standard_normal(shape[0])
    layer.buffers()["running_var"][...] = rng.uniform(0.5, 2, shape[0])
    getattr(layer, mode)()
    with cnnframe.num_threads(1):
        report = check_layer(layer, shape, batch_size=4)
    assert report.passed, str(report)


def test_inference_and_config():
    layer = BatchNorm2D()
    assert layer.output_shape((8, 5, 5)) == (8, 5, 5)
    assert not layer.parameters()
    layer.forward(np.ones((2, 8, 3, 3), np.float32))
    assert layer.num_features == 8
    assert [p.shape for p in layer.parameters().values()] == [(8,), (8,)]
    assert not any(p.weight_decay for p in layer.parameters().values())
    assert list(layer.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert layer.get_config() == {"type": "batchnorm2d", "dtype": "float32", "num_features": 8, "eps": 1e-5, "momentum": 0.1}
    layer.buffers()["running_mean"][...] = 3
    layer.reset_parameters(np.random.default_rng(0))
    assert np.all(layer.buffers()["running_mean"] == 0) and np.all(layer.buffers()["running_var"] == 1)


def test_errors():
    with pytest.raises(ValueError, match=r"BatchNorm1D: training needs more than one value per feature.*\(1, 4\).*eval"):
        BatchNorm1D().forward(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2D: expected input with 4 dimensions \(N, C, H, W\), got shape \(2, 4\)"):
        BatchNorm2D().forward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1D: expected input with 2 dimensions \(N, F\), got shape \(2, 4, 3\)"):
        BatchNorm1D().forward(np.ones((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2D: input has 3 features/channels \(shape \(2, 3, 2, 2\)\) but the layer was built for 4"):
        BatchNorm2D(4).forward(np.ones((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm2D(momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm1D(eps=0)
    with pytest.raises(ValueError, match=r"per-sample input shape \(C, H, W\)"):
        BatchNorm2D().output_shape((4,))


# -- BatchNorm then ReLU in one pass ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("cls, shape", [(BatchNorm2D, (4, 3, 5, 6)), (BatchNorm1D, (6, 7))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_pair_is_bit_identical_to_the_two_layers(cls, shape, dtype, mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    pairs = [(cls(dtype=dtype), ReLU(dtype=dtype)) for _ in range(2)]
    for bn, _ in pairs:
        bn.build(shape[1:])
        _set_affine(bn, np.random.default_rng(4))
        bn.buffers()["running_var"][...] = 2.0
        getattr(bn, mode)()
    (bn1, relu1), (bn2, relu2) = pairs
    z1 = bn1.forward_fused(x, (relu1,))
    z2 = relu2.forward(bn2.forward(x))
    assert np.array_equal(z1, z2) and (z1 >= 0).all()
    d1 = bn1.backward_fused(g, (relu1,))
    d2 = bn2.backward(relu2.backward(g))
    assert np.array_equal(d1, d2)
    for name in ("weight", "bias"):
        assert np.array_equal(bn1.parameters()[name].grad, bn2.parameters()[name].grad)
    for name in ("running_mean", "running_var"):
        assert np.array_equal(bn1.buffers()[name], bn2.buffers()[name])
    # after a fused forward each layer still runs its own backward alone
    assert np.array_equal(bn1.backward(relu1.backward(g)), d2)


def test_sequential_fuses_batchnorm_and_relu(monkeypatch):
    model = cnnframe.Sequential([BatchNorm2D(), ReLU(), BatchNorm2D(), cnnframe.layers.Flatten()],
                                input_shape=(2, 3, 3))

    def unused(self, x):
        raise AssertionError("ReLU.forward must not run: the BatchNorm before it computes its output")

    monkeypatch.setattr(ReLU, "forward", unused)
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (4, 18) and np.isfinite(model.backward(np.ones_like(y))).all()


def test_backward_fused_needs_a_fused_forward():
    bn, relu = BatchNorm2D(), ReLU()
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    bn.forward(x)
    with pytest.raises(RuntimeError, match="forward_fused"):
        bn.backward_fused(np.ones_like(x), (relu,))
    bn.forward_fused(x, (relu,))
    with pytest.raises(ValueError, match="ReLU: grad_out has shape"):
        bn.backward_fused(np.ones((2, 3, 2, 1), np.float32), (relu,))
    with pytest.raises(RuntimeError, match="same layers"):
        bn.backward_fused(np.ones((2, 3, 1, 1), np.float32), (relu, MaxPool2D(2)))
    pool = MaxPool2D(2)
    assert bn.fuses((relu,)) == 1 and bn.fuses((relu, pool)) == 2 and bn.fuses((relu, relu, pool)) == 1
    assert bn.fuses((relu, MaxPool2D(3, stride=2))) == 1 and bn.fuses((relu, MaxPool2D(2, padding=1))) == 1
    assert bn.fuses((cnnframe.layers.LeakyReLU(),)) == 0 and relu.fuses((bn,)) == 0 and bn.fuses(()) == 0
    assert BatchNorm1D().fuses((relu, pool)) == 1


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_with_fused_pairs_passes_the_float64_gradient_check(mode):
    model = cnnframe.Sequential([cnnframe.layers.Conv2D(3, 3, padding=1), BatchNorm2D(), ReLU(),
                                 cnnframe.layers.Flatten(), BatchNorm1D(), ReLU(), cnnframe.layers.Dense(4)],
                                input_shape=(2, 4, 4), seed=1)
    for layer in model.layers:
        if isinstance(layer, (BatchNorm1D, BatchNorm2D)):
            _set_affine(layer, np.random.default_rng(5))
            layer.buffers()["running_var"][...] = 1.5
    getattr(model, mode)()
    x = np.random.default_rng(6).standard_normal((5, 2, 4, 4))
    with cnnframe.num_threads(1):
        report = check_model(model, cnnframe.SoftmaxCrossEntropy(), x, np.array([0, 1, 2, 3, 0]))
    assert report.passed, str(report)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_batchnorm_relu_maxpool_is_bit_identical_to_the_three_layers(dtype, mode):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 3, 7, 6)).astype(dtype)
    models = []
    for _ in range(2):
        m = cnnframe.Sequential([BatchNorm2D(dtype=dtype), ReLU(dtype=dtype), MaxPool2D(2, dtype=dtype)],
                                input_shape=(3, 7, 6))
        _set_affine(m.layers[0], np.random.default_rng(4))
        getattr(m, mode)()
        models.append(m)
    fused, plain = models
    y1 = fused.forward(x)
    assert fused._plan == [(0, 2)]
    y2 = x
    for layer in plain.layers:
        y2 = layer.forward(y2)
    g = rng.standard_normal(y1.shape).astype(dtype)
    d1 = fused.backward(g)
    d2 = g
    for layer in reversed(plain.layers):
        d2 = layer.backward(d2)
    assert np.array_equal(y1, y2) and np.array_equal(d1, d2)
    for (name, a), b in zip(fused.parameters().items(), plain.parameters().values()):
        assert np.array_equal(a.grad, b.grad), name
    for (name, a), b in zip(fused.buffers().items(), plain.buffers().values()):
        assert np.array_equal(a, b), name
    # the pooling layer alone still runs its backward after the fused forward; the ReLU has no output to use
    assert np.array_equal(fused.layers[2].backward(g), plain.layers[2].backward(g))
    with pytest.raises(RuntimeError, match="before forward"):
        fused.layers[1].backward(np.ones((4, 3, 7, 6), dtype))


def test_model_with_fused_batchnorm_relu_maxpool_passes_the_float64_gradient_check():
    model = cnnframe.Sequential([cnnframe.layers.Conv2D(3, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2),
                                 cnnframe.layers.Flatten(), cnnframe.layers.Dense(3)], input_shape=(2, 6, 5), seed=2)
    _set_affine(model.layers[1], np.random.default_rng(5))
    x = np.random.default_rng(7).standard_normal((4, 2, 6, 5))
    with cnnframe.num_threads(1):
        report = check_model(model, cnnframe.SoftmaxCrossEntropy(), x, np.array([0, 1, 2, 0]))
    assert report.passed, str(report)
