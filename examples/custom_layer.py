"""Two layers of your own in one file: Swish (no parameters) and ChannelAffine (learnable parameters).

Use them from YAML by listing this file as a plugin (see custom_layer.yaml next to it):

    plugins: [custom_layer.py]
    model:
      layers:
        - {type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
        - {type: channel_affine}
        - {type: swish}

Run this file to put both layers through the standard test battery (shapes, float64 gradient check,
float32/float64 agreement, batch of one, strided input, config and save/load round trips):

    python examples/custom_layer.py

The layer contract in four lines (docs/extending.md has the rest): shapes given to ``build`` and
``output_shape`` are per sample (no batch axis); ``forward(x)`` gets (N, ...) and must not modify
``x``; ``backward(G)`` gets G = dL/dy and returns dL/dx; it *adds* dL/dθ into each ``Parameter.grad``.
"""
import numpy as np
from scipy.special import expit

import cnnframe
from cnnframe import Layer


# -- Swish: an activation without parameters ---------------------------------------------------------
@cnnframe.register_layer("swish")
class Swish(Layer):
    """y = x·σ(x), σ(x) = 1 / (1 + e^(−x))  (also called SiLU).  Any shape (N, ...) → the same shape.

    dy/dx = σ(x) + x·σ(x)(1 − σ(x)) = σ(x)·(1 + x·(1 − σ(x))), so with G = dL/dy:
    dL/dx = G·σ(x)·(1 + x·(1 − σ(x))).
    """

    def __init__(self, dtype="float32"):
        super().__init__(dtype)
        self._x = self._s = None

    # No parameters and the output shape equals the input shape: the base class's build() and
    # output_shape() already say so.

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)  # a float32 layer computes in float32 whatever it is fed
        s = expit(x)  # σ(x) without overflow for large |x|
        self._x, self._s = x, s  # what backward needs; x itself is never written to
        return x * s

    def backward(self, grad_out):
        x, s = self._x, self._s
        return grad_out * s * (1 + x * (1 - s))


# -- ChannelAffine: a layer with parameters --------------------------------------------------------
@cnnframe.register_layer("channel_affine")
class ChannelAffine(Layer):
    """A learnable scale and shift per channel: y[n,c,...] = γ[c]·x[n,c,...] + β[c].

    x: (N, C, ...) (images (N, C, H, W) or features (N, C)) → y: same shape;  γ ("weight"), β ("bias"): (C,).
    Each parameter touches every position of its channel, so its gradient sums over them (G = dL/dy):

        dL/dγ[c] = Σ_{n,h,w} G[n,c,h,w]·x[n,c,h,w],   dL/dβ[c] = Σ_{n,h,w} G[n,c,h,w],   dL/dx = γ[c]·G.

    ``num_features`` (C) may be omitted: ``build`` takes it from the input shape.  Starts as the identity
    (γ = 1, β = 0), like BatchNorm's affine part; neither parameter gets weight decay.
    """

    def __init__(self, num_features=None, dtype="float32"):
        super().__init__(dtype)
        self.num_features = num_features
        self._x = None
        if num_features is not None:
            self.build((num_features,))

    def build(self, input_shape):
        if self.built:
            return
        c = int(input_shape[0])
        self.num_features = c
        self.add_parameter("weight", np.ones(c), weight_decay=False)
        self.add_parameter("bias", np.zeros(c), weight_decay=False)
        super().build(input_shape)

    def output_shape(self, input_shape):
        if self.num_features is not None and input_shape[0] != self.num_features:
            raise ValueError(f"ChannelAffine: input has {input_shape[0]} channels, expected {self.num_features}")
        return tuple(input_shape)

    def _per_channel(self, v, ndim):
        """(C,) → (C, 1, ..., 1) so it broadcasts over the spatial axes of an (N, C, ...) array."""
        return v.reshape((-1,) + (1,) * (ndim - 2))

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        self._ensure_built(x)
        self._x = x
        w, b = self._params["weight"].data, self._params["bias"].data
        return self._per_channel(w, x.ndim) * x + self._per_channel(b, x.ndim)

    def backward(self, grad_out):
        x = self._x
        sum_axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channel axis
        w, b = self._params["weight"], self._params["bias"]
        w.grad += (grad_out * x).sum(axis=sum_axes)  # += : gradients accumulate until zero_grad()
        b.grad += grad_out.sum(axis=sum_axes)
        return self._per_channel(w.data, x.ndim) * grad_out

    def get_config(self):
        # super() supplies "type" (the registered name) and "dtype"; add every constructor argument.
        return {**super().get_config(), "num_features": self.num_features}


if __name__ == "__main__":
    from cnnframe.testing import check_layer_contract

    for factory, shape in ((lambda dtype: Swish(dtype=dtype), (3, 5, 5)),
                           (lambda dtype: ChannelAffine(dtype=dtype), (3, 5, 5)),
                           (lambda dtype: ChannelAffine(num_features=4, dtype=dtype), (4,))):
        report = check_layer_contract(factory, shape)  # raises AssertionError naming the failed check
        print(f"{type(factory('float64')).__name__} on input {shape}: contract passed")
        print(report)
