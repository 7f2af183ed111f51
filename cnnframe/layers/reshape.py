"""Shape-only layers."""
import math

from cnnframe.layers._util import check_grad, check_input, check_per_sample
from cnnframe.layers.base import Layer
from cnnframe.registry import register_layer


@register_layer("flatten")
class Flatten(Layer):
    """(N, d1, d2, ...) → (N, d1·d2·...), in C order (as PyTorch's ``Flatten``); backward reshapes back."""

    def __init__(self, dtype="float32"):
        super().__init__(dtype)
        self._in_shape = None

    def output_shape(self, input_shape):
        shape = check_per_sample(self, input_shape, None, "(d1, d2, ...)")
        if not shape:
            raise ValueError("Flatten: per-sample input shape must have at least one dimension, got ()")
        return (math.prod(shape),)

    def forward(self, x):
        x = check_input(self, x, min_ndim=2, layout="(N, d1, ...)")
        self._ensure_built(x)
        self._in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        shape = self._in_shape
        g = check_grad(self, grad_out, None if shape is None else (shape[0], math.prod(shape[1:])))
        return g.reshape(shape)
