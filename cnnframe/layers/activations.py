"""Elementwise activations and softmax (any input shape with the batch axis first).

ReLU and LeakyReLU run compiled kernels (``cnnframe.ops.activation``); the others are NumPy."""
import numbers

import numpy as np
from scipy.special import expit

from cnnframe import ops
from cnnframe.layers._util import check_grad, check_input
from cnnframe.layers.base import Layer
from cnnframe.registry import register_layer


class _Activation(Layer):
    """Shape-preserving layer: output_shape(s) = s; forward caches what backward needs in ``_cache``.

    Some activations keep their output as that cache, so callers must not modify it in place
    (the layer contract: nobody writes into arrays they were handed).
    """

    _min_ndim = 1
    _layout = None

    def __init__(self, dtype="float32"):
        super().__init__(dtype)
        self._cache = None

    def _check(self, x):
        x = check_input(self, x, min_ndim=self._min_ndim, layout=self._layout)
        self._ensure_built(x)
        return x

    def _grad(self, grad_out):
        return check_grad(self, grad_out, None if self._cache is None else self._cache.shape)


@register_layer("relu")
class ReLU(_Activation):
    """y = max(x, 0);  dx = G · [x > 0]  (the derivative at 0 is taken as 0, as in PyTorch)."""

    def forward(self, x):
        x = self._check(x)
        y = ops.relu_forward(x)
        self._cache = y  # y > 0 exactly where x > 0
        return y

    def backward(self, grad_out):
        g = self._grad(grad_out)
        return ops.relu_backward(g, self._cache)

    def keep_output(self, y):
        """Take ``y`` as the output of a forward pass another layer computed for this one (a BatchNorm
        fused with it, see ``BatchNorm2D.fuses``), so that ``backward`` works as after ``forward``; None
        when that output was pooled at once and never formed (``backward`` then refuses to run)."""
        self._cache = y


@register_layer("leakyrelu")
class LeakyReLU(_Activation):
    """y = x for x > 0, a·x otherwise (a = ``negative_slope``);  dx = G · (1 if x > 0 else a)."""

    def __init__(self, negative_slope=0.01, dtype="float32"):
        super().__init__(dtype)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
            raise TypeError(f"LeakyReLU: negative_slope must be a number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        x = self._check(x)
        self._cache = x  # the layer contract: nobody writes into x, so it can tell backward where x > 0
        return ops.leaky_relu_forward(x, self.negative_slope)

    def backward(self, grad_out):
        g = self._grad(grad_out)
        return ops.leaky_relu_backward(g, self._cache, self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


@register_layer("sigmoid")
class Sigmoid(_Activation):
    """y = 1 / (1 + e^(−x)) (overflow-free);  dx = G · y · (1 − y)."""

    def forward(self, x):
        x = self._check(x)
        self._cache = expit(x)
        return self._cache

    def backward(self, grad_out):
        g = self._grad(grad_out)
        y = self._cache
        return g * y * (1 - y)


@register_layer("tanh")
class Tanh(_Activation):
    """y = tanh(x);  dx = G · (1 − y²)."""

    def forward(self, x):
        x = self._check(x)
        self._cache = np.tanh(x)
        return self._cache

    def backward(self, grad_out):
        g = self._grad(grad_out)
        y = self._cache
        return g * (1 - y * y)


@register_layer("softmax")
class Softmax(_Activation):
    """Softmax along axis 1 (classes / channels): y = e^(x − max) / Σ_axis1 e^(x − max).

    x: (N, C, ...) → same shape.  Backward (Jacobian diag(y) − y yᵀ per position):
    dx = y · (G − Σ_axis1 G·y).  For training on logits prefer the loss ``softmax_cross_entropy``,
    which fuses the two and is numerically safer.
    """

    _min_ndim = 2
    _layout = "(N, C, ...)"

    def forward(self, x):
        x = self._check(x)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        self._cache = e
        return e

    def backward(self, grad_out):
        g = self._grad(grad_out)
        y = self._cache
        return y * (g - (g * y).sum(axis=1, keepdims=True))
