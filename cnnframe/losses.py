"""Loss functions: ``loss.forward(pred, target)`` returns the mean loss as a float, then
``loss.backward()`` returns dL/dpred (same shape and dtype as ``pred``).

A loss also declares how it meets class labels: ``targets(labels, num_classes, dtype)`` gives what
``forward`` takes as targets (the labels themselves, or one-hot rows), and ``score_activation`` what
turns a model's outputs into class scores (``"softmax"`` for cross-entropy, whose outputs are
logits; None: the outputs as they are) -- what ``predict`` reports (``class_scores``) and what an
ONNX export appends.

Registered names: ``"softmax_cross_entropy"`` (alias ``"cross_entropy"``) and ``"mse"``.
"""
import numpy as np

from cnnframe import ops
from cnnframe.checks import check_number
from cnnframe.registry import register_loss

__all__ = ["Loss", "SoftmaxCrossEntropy", "MSE", "softmax", "log_softmax"]


def log_softmax(logits):
    """Row-wise log softmax of (N, classes) logits: ``z - max(z) - log(sum(exp(z - max(z))))``."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits):
    """Row-wise softmax of (N, classes) logits, computed with the row maximum subtracted."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class Loss:
    """Base class: ``forward(pred, target) -> float`` (the mean), ``backward() -> dL/dpred``."""

    registered_name = None
    #: "softmax" when class scores are the softmax of the model's outputs, None when they are the outputs
    score_activation = None

    def forward(self, pred, target):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(pred, target)")

    def backward(self):
        raise NotImplementedError(f"{type(self).__name__} must implement backward()")

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def targets(self, labels, num_classes, dtype):
        """What ``forward`` takes as targets for integer class ``labels`` (N,): the labels themselves."""
        return labels

    def class_scores(self, outputs):
        """The class scores ``predict`` reports for a batch of outputs (float64), by ``score_activation``."""
        outputs = np.asarray(outputs, dtype=np.float64)
        return softmax(outputs) if self.score_activation == "softmax" else outputs

    def get_config(self):
        return {"type": self.registered_name or type(self).__name__}

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k != "type"})

    def _saved(self):
        if getattr(self, "_grad", None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward()")
        return self._grad

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _float_pred(pred, owner):
    pred = np.asarray(pred)
    if pred.dtype.kind != "f":
        raise TypeError(f"{owner}: predictions must be a float array, got dtype {pred.dtype}")
    return pred


@register_loss("softmax_cross_entropy", aliases=("cross_entropy",))
class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy on raw logits z (N, classes) with integer labels y (N,) (docs/math.md,
    Softmax cross-entropy).

    With label smoothing ε the target row is ``t = (1-ε)·onehot(y) + ε/classes`` (as in PyTorch):
    ``L = -1/N Σ_n Σ_c t[n,c] log softmax(z_n)[c]``,  ``dL/dz = (softmax(z) - t) / N``, both from one
    pass over the logits (``ops.softmax_cross_entropy``).  After ``forward``, ``probabilities`` holds
    softmax(z); class scores are softmax(z) too.
    """

    score_activation = "softmax"

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = check_number("label_smoothing", label_smoothing, "SoftmaxCrossEntropy", ge=0, lt=1)
        self.probabilities = None
        self._grad = None

    def forward(self, pred, target):
        z = _float_pred(pred, "SoftmaxCrossEntropy")
        try:
            loss, self.probabilities, self._grad = ops.softmax_cross_entropy(z, target, self.label_smoothing)
        except (TypeError, ValueError) as e:
            raise type(e)(f"SoftmaxCrossEntropy: {e}") from None
        return loss

    def backward(self):
        """dL/dz = (softmax(z) - t) / N, shape (N, classes), dtype of the logits."""
        return self._saved()

    def get_config(self):
        return {"type": self.registered_name, "label_smoothing": self.label_smoothing}


@register_loss("mse")
class MSE(Loss):
    """Mean squared error over all elements: ``L = mean((pred - target)²)``, ``dL/dpred = 2 (pred - target) / size``."""

    def __init__(self):
        self._grad = None

    def targets(self, labels, num_classes, dtype):
        """One-hot rows (N, num_classes) of ``dtype``: the outputs are regressed onto them."""
        t = np.zeros((len(labels), num_classes), dtype=dtype)
        t[np.arange(len(labels)), labels] = 1
        return t

    def forward(self, pred, target):
        pred = _float_pred(pred, "MSE")
        target = np.asarray(target)
        if target.shape != pred.shape:
            raise ValueError(f"MSE: target shape {target.shape} does not match prediction shape {pred.shape}")
        if target.dtype.kind not in "fiub":
            raise TypeError(f"MSE: target must be numeric, got dtype {target.dtype}")
        if pred.size == 0:
            raise ValueError("MSE: empty prediction array")
        diff = pred - target.astype(pred.dtype, copy=False)
        loss = float(np.mean(np.square(diff), dtype=np.float64))
        diff *= pred.dtype.type(2.0 / pred.size)
        self._grad = diff
        return loss

    def backward(self):
        """dL/dpred = 2 (pred - target) / pred.size, shape and dtype of ``pred``."""
        return self._saved()

    def get_config(self):
        return {"type": self.registered_name}
