"""Inverted dropout with its own seeded mask generator."""
from cnnframe.checks import check_number
from cnnframe.layers._util import check_grad, check_input, config_seed, make_rng
from cnnframe.layers.base import Layer
from cnnframe.registry import register_layer
from cnnframe.shards import global_rows


@register_layer("dropout")
class Dropout(Layer):
    """Training: y = x · m / (1 − p) with m[i] ~ Bernoulli(1 − p) drawn afresh each forward;
    dx = G · m / (1 − p).  Evaluation: the identity.  Any shape; p = 1 zeroes everything.

    The mask comes from the layer's own numpy Generator, seeded by ``seed`` and reset by
    ``reseed(seed)``, so a run (and a gradient check) is reproducible.  Uniforms are drawn in float64
    for every dtype, so float32 and float64 layers with the same seed drop the same elements.
    """

    def __init__(self, p=0.5, seed=None, dtype="float32"):
        super().__init__(dtype)
        self.p = check_number("p", p, "Dropout", ge=0, le=1, what="a probability in [0, 1]")
        self.seed = config_seed(seed)
        self._rng = make_rng(seed, "Dropout")
        self._mask = None
        self._y_shape = None

    def reseed(self, seed):
        """Restart the mask generator from ``seed`` (int, numpy Generator or None)."""
        self._rng = make_rng(seed, "Dropout")

    def forward(self, x):
        x = check_input(self, x, min_ndim=1)
        self._ensure_built(x)
        self._y_shape = x.shape
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        # Masks are drawn for the whole global batch, so every process of a data-parallel run keeps the
        # rows of its own samples and the masks do not depend on how the batch is split.
        total, start, stop = global_rows(len(x))
        keep = self._rng.random((total,) + x.shape[1:])[start:stop] >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._mask = keep.astype(self.dtype) * self.dtype.type(scale)
        return x * self._mask

    def backward(self, grad_out):
        g = check_grad(self, grad_out, self._y_shape)
        return g if self._mask is None else g * self._mask

    def get_config(self):
        return {**super().get_config(), "p": self.p, "seed": self.seed}
