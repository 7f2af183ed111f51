"""The gradient checker itself: it passes correct layers, catches wrong ones and says where."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
from cnnframe.gradcheck import GradcheckError, check_layer, check_model, kink_free_input
from cnnframe.layers import BatchNorm2D, Conv2D, Dense, Dropout, MaxPool2D, ReLU
from cnnframe.losses import SoftmaxCrossEntropy


@pytest.fixture(autouse=True)
def one_thread():
    """Hundreds of tiny forwards: keep OpenMP fork/join out of them (see tests/layers/test_conv.py)."""
    with cnnframe.num_threads(1):
        yield


# -- deliberately wrong layers: the checker must fail them -------------------------------------------
class UnflippedConv(Conv2D):
    """dX computed by correlating G with the kernel *without* the 180° rotation of eq. (4)."""

    def backward(self, grad_out):
        w = self.parameters()["weight"]
        _, dw, db = ops.conv2d_backward(self._x, w.data, grad_out, self.stride, self.padding, self.dilation)
        w.grad += dw
        self.parameters()["bias"].grad += db
        flipped = np.ascontiguousarray(w.data[:, :, ::-1, ::-1])  # eq. (4) flips this back: no rotation overall
        return ops.conv2d_input_grad_full(grad_out, flipped, self._x.shape, self.stride, self.padding, self.dilation)


class MeanBiasDense(Dense):
    """db = mean over the batch instead of the sum (eq. (3) analogue): only the bias is wrong."""

    def backward(self, grad_out):
        dx = super().backward(grad_out)
        b = self.parameters()["bias"]
        b.grad += grad_out.mean(axis=0) - grad_out.sum(axis=0)
        return dx


class ConstantStatsBatchNorm(BatchNorm2D):
    """Backward that treats the batch mean as a constant (drops the −mean(G) term)."""

    def backward(self, grad_out):
        dx = super().backward(grad_out)
        gamma = self.parameters()["weight"].data
        inv_std = self._cache[2]  # (x, mean, inv_std, training, fused, argmax, window)
        return dx + (gamma * inv_std)[None, :, None, None] * grad_out.mean(axis=(0, 2, 3), keepdims=True)


class SpreadMaxPool(MaxPool2D):
    """Spreads each window's gradient over the whole window (average-pool backward) instead of the max."""

    def backward(self, grad_out):
        return ops.avg_pool2d_backward(grad_out, self._in_shape, self.kernel_size, self.stride, self.padding)


@pytest.mark.parametrize(
    "layer, shape, bad_tensor",
    [
        (UnflippedConv(3, (3, 2), padding=1, seed=0, dtype="float64"), (2, 5, 6), "input"),
        (MeanBiasDense(4, seed=0, dtype="float64"), (6,), "bias"),
        (ConstantStatsBatchNorm(dtype="float64"), (2, 3, 3), "input"),
        (SpreadMaxPool(2, dtype="float64"), (2, 4, 4), "input"),
    ],
    ids=["conv-no-rotation", "dense-bias-mean", "batchnorm-constant-mean", "maxpool-spread"],
)
def test_wrong_backward_is_caught(layer, shape, bad_tensor):
    report = check_layer(layer, shape, batch_size=3)
    assert not report.passed
    assert report.worst_tensor == bad_tensor
    assert report.tensors[bad_tensor].failures > 0
    assert report.worst_error > 1e-3
    assert "FAILED" in str(report) and bad_tensor in str(report)
    with pytest.raises(GradcheckError, match=f"(?s)FAILED.*{bad_tensor}"):
        check_layer(layer, shape, batch_size=3, raise_on_failure=True)
    if bad_tensor == "bias":  # the other tensors are right and reported as such
        assert report.tensors["input"].passed and report.tensors["weight"].passed


def test_report_of_a_correct_layer():
    report = check_layer(Conv2D(2, 3, seed=0, dtype="float64"), (2, 5, 5), batch_size=2)
    assert report.passed and bool(report)
    assert list(report.tensors) == ["input", "weight", "bias"]
    t = report.tensors["weight"]
    assert t.shape == (2, 2, 3, 3) and t.checked == t.total == 36 and t.max_rel < 1e-6
    assert len(report.worst_index) == len(report.tensors[report.worst_tensor].shape)
    assert report.worst_error == max(t.max_rel for t in report.tensors.values())
    text = str(report)
    assert text.startswith("gradcheck PASSED for Conv2D") and "weight" in text and "36/36" in text
    assert report.raise_if_failed() is report
    assert issubclass(GradcheckError, AssertionError)


def test_large_tensors_are_sampled_reproducibly():
    layer = Dense(30, in_features=40, seed=0, dtype="float64")
    r1 = check_layer(layer, (40,), batch_size=8, max_checks=25, seed=3)
    r2 = check_layer(layer, (40,), batch_size=8, max_checks=25, seed=3)
    assert r1.tensors["weight"].checked == 25 and r1.tensors["weight"].total == 1200
    assert r1.tensors["bias"].checked == 25 and r1.tensors["bias"].total == 30
    assert r1.tensors["weight"].max_rel == r2.tensors["weight"].max_rel
    assert r1.passed


def test_float32_layer_is_checked_as_float64_copy_and_left_untouched():
    layer = BatchNorm2D(dtype="float32")
    layer.build((2, 3, 3))
    before = {k: v.copy() for k, v in layer.state_dict().items()}
    report = check_layer(layer, (2, 3, 3), batch_size=4)
    assert report.passed, str(report)
    assert report.tensors["input"].max_rel < 1e-6  # float32 arithmetic could not get there
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # running statistics unchanged
    assert all(not p.grad.any() for p in layer.parameters().values())


def test_user_input_with_a_kink_is_reported_not_hidden():
    x = np.array([[0.0, 1.0, -1.0]])
    report = check_layer(ReLU(dtype="float64"), x)
    assert not report.passed and report.worst_index == (0, 0)
    # at 0 the central difference sees half the slope; backward says 0
    assert report.worst_analytical == 0 and report.worst_numerical != 0
    assert check_layer(ReLU(dtype="float64"), (3,)).passed  # drawn inputs avoid the kink


def test_kink_free_input():
    x = kink_free_input((4, 3, 5, 5), seed=1)
    assert x.shape == (4, 3, 5, 5) and x.dtype == np.float64
    assert np.abs(x).min() >= 0.1 and np.abs(x).max() <= 1.0
    assert len(np.unique(x)) == x.size
    np.testing.assert_array_equal(x, kink_free_input((4, 3, 5, 5), seed=1))
    assert (x > 0).mean() == pytest.approx(0.5, abs=0.1)


def test_dropout_is_checked_with_a_fixed_mask():
    report = check_layer(Dropout(0.5, seed=0, dtype="float64"), (20,), batch_size=3)
    assert report.passed, str(report)


def test_layer_that_ignores_dtype_is_rejected():
    class Stubborn(ReLU):
        def forward(self, x):
            return super().forward(x).astype(np.float32)

    with pytest.raises(TypeError, match="float32 after conversion to float64"):
        check_layer(Stubborn(dtype="float64"), (3,))


def _model(dtype="float32", broken=False):
    conv = (UnflippedConv if broken else Conv2D)(3, 3, padding=1, seed=0, dtype=dtype)
    return cnnframe.Sequential(
        [conv, BatchNorm2D(dtype=dtype), ReLU(dtype=dtype), MaxPool2D(2, dtype=dtype),
         cnnframe.Flatten(dtype=dtype), Dropout(0.3, seed=1, dtype=dtype), Dense(4, seed=2, dtype=dtype)],
        input_shape=(2, 6, 6),
    )


def test_check_model_through_the_loss():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 6, 6))
    y = rng.integers(0, 4, 5)
    model = _model("float32")
    report = check_model(model, SoftmaxCrossEntropy(), x, y, max_checks=15)
    assert report.passed, str(report)
    assert list(report.tensors) == ["input"] + list(model.parameters())
    assert all(not p.grad.any() for p in model.parameters().values())  # the original is untouched


def test_check_model_catches_a_broken_layer():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 6, 6))
    report = check_model(_model("float64", broken=True), SoftmaxCrossEntropy(), x, rng.integers(0, 4, 3), max_checks=15)
    assert not report.passed
    assert report.tensors["input"].failures > 0
    assert report.tensors["6.weight"].passed  # everything after the broken layer is still right


def test_check_model_covers_blocks():
    """A float32 model with nested blocks is rebuilt in float64 through its config and checked end to end."""
    from cnnframe.layers import Concat, GlobalAvgPool2D, Residual

    f32 = "float32"
    model = cnnframe.Sequential(
        [Conv2D(3, 3, padding=1, seed=0, dtype=f32),
         Residual([Conv2D(3, 3, padding=1, seed=1, dtype=f32), BatchNorm2D(dtype=f32), ReLU(dtype=f32),
                   Conv2D(4, 3, stride=2, padding=1, seed=2, dtype=f32)],
                  shortcut=[Conv2D(4, 1, stride=2, seed=3, dtype=f32), BatchNorm2D(dtype=f32)], activation="relu"),
         Concat([[Conv2D(2, 1, seed=4, dtype=f32)], [], [Residual([Conv2D(4, 3, padding=1, seed=5, dtype=f32)])]]),
         GlobalAvgPool2D(dtype=f32), Dense(4, seed=6, dtype=f32)],
        input_shape=(2, 6, 6),
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 6, 6))
    report = check_model(model, SoftmaxCrossEntropy(), x, rng.integers(0, 4, 4), max_checks=12)
    assert report.passed, str(report)
    assert list(report.tensors) == ["input"] + list(model.parameters())
    assert "2.branches.2.0.layers.0.weight" in report.tensors and "1.shortcut.1.bias" in report.tensors


class _BigOffsetMix(ReLU):
    """y = 300 + 1e-3·(x + mean(x)) per sample: every output moves with every input, by a tiny amount next
    to the 300 it sits on, so each output difference carries rounding noise of up to ulp(300)/(2·eps) ≈ 3e-8
    at eps -- more than atol -- and a tenth of that at 10 eps."""

    def forward(self, x):
        return 300.0 + 1e-3 * (x + x.mean(axis=1, keepdims=True))

    def backward(self, g):
        return 1e-3 * (g + g.mean(axis=1, keepdims=True))


def test_rounding_noise_at_eps_is_told_from_a_wrong_gradient(monkeypatch):
    import cnnframe.gradcheck as gc

    monkeypatch.setattr(gc, "_RETRY", 1.0)  # no second look: the noise at eps fails a right gradient
    noisy = check_layer(_BigOffsetMix(dtype="float64"), (4,), batch_size=2)
    assert noisy.tensors["input"].failures >= 2 and 1e-8 < noisy.tensors["input"].max_abs < 1e-7
    monkeypatch.undo()
    report = check_layer(_BigOffsetMix(dtype="float64"), (4,), batch_size=2)
    assert report.passed, str(report)  # at 10 eps the same gradient agrees


class _SlightlyOffTanh(ReLU):
    """tanh with a backward 1e-4 too large: a wrong gradient is off by the same amount at any eps."""

    def forward(self, x):
        self._cache = np.tanh(x)
        return self._cache

    def backward(self, g):
        return g * (1 - self._cache ** 2) * (1 + 1e-4)


def test_a_slightly_wrong_gradient_still_fails():
    report = check_layer(_SlightlyOffTanh(dtype="float64"), (5,))
    assert not report.passed and report.tensors["input"].failures == report.tensors["input"].checked
    assert 3e-5 < report.worst_error < 1e-4
