import numpy as np
import pytest

import cnnframe
from cnnframe.losses import MSE, SoftmaxCrossEntropy, log_softmax, softmax
from cnnframe.ops import _reference as ref


def _ce_loop(z, y, eps):
    """Cross-entropy straight from the definition, one sample and one class at a time, in float64."""
    return ref.softmax_cross_entropy_ref(z, y, eps)[0]


def _numgrad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        fp = f(x)
        x[idx] = old - h
        fm = f(x)
        x[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


def _rel_err(a, b):
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cross_entropy_value_and_gradient_match_definition(eps):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((7, 5))
    y = rng.integers(0, 5, size=7)
    loss = SoftmaxCrossEntropy(label_smoothing=eps)
    value = loss.forward(z, y)
    assert isinstance(value, float)
    assert value == pytest.approx(_ce_loop(z, y, eps), rel=1e-12)
    grad = loss.backward()
    assert grad.shape == z.shape and grad.dtype == np.float64
    # closed form (softmax - target) / N
    target = np.full((7, 5), eps / 5)
    target[np.arange(7), y] += 1 - eps
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(grad, (e / e.sum(1, keepdims=True) - target) / 7, rtol=1e-12, atol=1e-15)
    # central differences
    num = _numgrad(lambda zz: SoftmaxCrossEntropy(eps).forward(zz, y), z.copy())
    assert _rel_err(num, grad) < 1e-6
    # rows of the gradient sum to 0 (probabilities and targets both sum to 1)
    np.testing.assert_allclose(grad.sum(1), 0, atol=1e-15)


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]])
    loss = SoftmaxCrossEntropy()
    assert loss.forward(z, np.array([0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert loss.forward(z, np.array([2, 0])) == pytest.approx((2000.0 + 2e4) / 2)
    assert np.isfinite(loss.backward()).all()
    np.testing.assert_allclose(softmax(z).sum(1), 1.0)
    assert np.isfinite(log_softmax(z)).all()


def test_cross_entropy_float32_follows_float64():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((16, 10)).astype(np.float32)
    y = rng.integers(0, 10, 16).astype(np.int32)
    l32 = SoftmaxCrossEntropy(0.1)
    v32 = l32.forward(z, y)
    g32 = l32.backward()
    l64 = SoftmaxCrossEntropy(0.1)
    v64 = l64.forward(z.astype(np.float64), y)
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-6)
    np.testing.assert_allclose(g32, l64.backward(), atol=1e-7)
    np.testing.assert_allclose(l32.probabilities, softmax(z.astype(np.float64)), atol=1e-6)


def test_cross_entropy_matches_torch_when_available():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    for eps in (0.0, 0.2):
        zt = torch.tensor(z, requires_grad=True)
        lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y), label_smoothing=eps)
        lt.backward()
        loss = SoftmaxCrossEntropy(eps)
        assert loss.forward(z, y) == pytest.approx(lt.item(), rel=1e-12)
        np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    "z, y, err, match",
    [
        (np.zeros((3,)), np.zeros(3, int), ValueError, r"shape \(N, classes\)"),
        (np.zeros((3, 2)), np.zeros(4, int), ValueError, r"labels must have shape \(3,\)"),
        (np.zeros((3, 2)), np.zeros((3, 1), int), ValueError, r"labels must have shape"),
        (np.zeros((3, 2)), np.zeros(3), TypeError, "integer class indices"),
        (np.zeros((3, 2)), np.array([0, 2, 1]), ValueError, r"label 2 at index 1 is out of range for 2 classes"),
        (np.zeros((3, 2)), np.array([0, -1, 1]), ValueError, r"label -1 at index 1"),
        (np.zeros((3, 2), int), np.zeros(3, int), TypeError, "float array"),
        (np.zeros((0, 2)), np.zeros(0, int), ValueError, "empty batch"),
    ],
)
def test_cross_entropy_input_errors(z, y, err, match):
    with pytest.raises(err, match=match):
        SoftmaxCrossEntropy().forward(z, y)


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "0.1", float("nan")])
def test_label_smoothing_validated(bad):
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftmaxCrossEntropy(bad)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        SoftmaxCrossEntropy().backward()
    with pytest.raises(RuntimeError, match="before forward"):
        MSE().backward()


def test_mse_value_and_gradient():
    rng = np.random.default_rng(4)
    p = rng.standard_normal((4, 3, 2))
    t = rng.standard_normal((4, 3, 2))
    loss = MSE()
    expected = sum((a - b) ** 2 for a, b in zip(p.ravel(), t.ravel())) / p.size
    assert loss.forward(p, t) == pytest.approx(expected, rel=1e-13)
    g = loss.backward()
    np.testing.assert_allclose(g, 2 * (p - t) / p.size, rtol=1e-13)
    num = _numgrad(lambda pp: MSE().forward(pp, t), p.copy())
    assert _rel_err(num, g) < 1e-6
    # integer targets are accepted and cast; inputs are not modified
    p0 = p.copy()
    loss.forward(p, np.zeros(p.shape, dtype=int))
    np.testing.assert_array_equal(p, p0)
    with pytest.raises(ValueError, match=r"target shape \(4, 3\) does not match prediction shape \(4, 3, 2\)"):
        loss.forward(p, t[..., 0])


def test_registry_and_config():
    assert cnnframe.LOSSES.get("softmax_cross_entropy") is SoftmaxCrossEntropy
    assert cnnframe.LOSSES.get("cross_entropy") is SoftmaxCrossEntropy
    assert cnnframe.LOSSES.get("MSE") is MSE
    cfg = SoftmaxCrossEntropy(0.1).get_config()
    assert cfg == {"type": "softmax_cross_entropy", "label_smoothing": 0.1}
    again = cnnframe.LOSSES.get(cfg["type"]).from_config(cfg)
    assert again.label_smoothing == 0.1
    assert MSE.from_config(MSE().get_config()).get_config() == {"type": "mse"}
    with pytest.raises(KeyError, match="did you mean 'mse'"):
        cnnframe.LOSSES.get("mes")


def test_losses_declare_their_targets_and_scores():
    """What the trainer and predict used to decide by the loss's name is declared by the loss."""
    y = np.array([2, 0])
    assert SoftmaxCrossEntropy().targets(y, 3, np.float32) is y
    t = MSE().targets(y, 3, np.float32)
    assert t.dtype == np.float32 and t.tolist() == [[0, 0, 1], [1, 0, 0]]
    z = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], np.float32)
    np.testing.assert_array_equal(SoftmaxCrossEntropy().class_scores(z), softmax(z.astype(np.float64)))
    scores = MSE().class_scores(z)
    assert scores.dtype == np.float64 and np.array_equal(scores, z)
