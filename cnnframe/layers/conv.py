"""2-D convolution layer over the compiled kernels in :mod:`cnnframe.ops`."""
import math

import numpy as np

from cnnframe import ops
from cnnframe.checks import check_int
from cnnframe.layers._util import (
    check_grad,
    check_input,
    check_per_sample,
    check_size,
    config_seed,
    make_rng,
    pair,
    pair_config,
    uniform,
)
from cnnframe.layers.base import Layer
from cnnframe.registry import register_layer


@register_layer("conv2d")
class Conv2D(Layer):
    """2-D convolution (a cross-correlation, as in PyTorch's ``Conv2d``), math.md eq. (1)–(4).

    Forward, eq. (1):  Y[n,k,i,j] = b[k] + Σ_c Σ_m Σ_l Xp[n, c, i·s + m·d, j·s + l·d] · W[k,c,m,l]
    x: (N, C, H, W) → y: (N, K, Ho, Wo), Ho = ⌊(H + 2p − d(kh−1) − 1)/s⌋ + 1 (same for Wo);
    weight: (K, C, kh, kw) = (out_channels, in_channels, kernel_size); bias: (K,).

    Backward (``ops.conv2d_backward``): dW by eq. (2) (input correlated with G), db by eq. (3)
    (G summed over n, i, j), dX by eq. (4) (full convolution of G with the 180°-rotated kernel,
    computed in its col2im form).  Set ``need_input_grad = False`` on a first layer to skip dX
    (``backward`` then returns None).

    ``kernel_size``, ``stride``, ``padding``, ``dilation``: an int or an (h, w) pair.  ``in_channels``
    may be omitted (inferred by ``build``); it and everything after ``kernel_size`` are keyword-only so
    PyTorch's positional order ``Conv2d(in, out, k)`` cannot be misread.
    Init (PyTorch's default, kaiming-uniform with a=√5): W, b ~ U(-1/√fan_in, 1/√fan_in) with
    fan_in = in_channels·kh·kw, from ``seed`` (int, numpy Generator or None); ``reset_parameters(rng)``
    re-draws them.
    """

    def __init__(
        self,
        out_channels,
        kernel_size,
        *,
        in_channels=None,
        stride=1,
        padding=0,
        dilation=1,
        bias=True,
        seed=None,
        dtype="float32",
    ):
        super().__init__(dtype)
        self.out_channels = check_int("out_channels", out_channels, "Conv2D", ge=1)
        self.in_channels = check_int("in_channels", in_channels, "Conv2D", ge=1, nullable=True)
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2D", 1)
        self.stride = pair(stride, "stride", "Conv2D", 1)
        self.padding = pair(padding, "padding", "Conv2D", 0)
        self.dilation = pair(dilation, "dilation", "Conv2D", 1)
        self.use_bias = bool(bias)
        self.seed = config_seed(seed)
        self.need_input_grad = True
        self._rng = make_rng(seed, "Conv2D")
        self._x = None
        self._y_shape = None
        if self.in_channels is not None:
            self._params_alloc(self.in_channels)

    # -- construction --------------------------------------------------------------------------
    def _params_alloc(self, in_channels):
        self.in_channels = in_channels
        self.add_parameter("weight", np.zeros((self.out_channels, in_channels) + self.kernel_size))
        if self.use_bias:
            self.add_parameter("bias", np.zeros(self.out_channels), weight_decay=False)
        self._draw()

    def build(self, input_shape):
        shape = check_per_sample(self, input_shape, 3, "(C, H, W)")
        self.output_shape(shape)
        if not self._params:
            self._params_alloc(shape[0])
        super().build(shape)

    def reset_parameters(self, rng=None):
        """Draw W and b from U(-1/√fan_in, 1/√fan_in) with ``rng`` (kept for ``build`` if sizes are unknown)."""
        if rng is not None:
            self._rng = make_rng(rng, "Conv2D")
        if self._params:
            self._draw()

    def _draw(self):
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        w = self._params["weight"]
        w.data[...] = uniform(self._rng, w.data.shape, bound, self.dtype)
        if self.use_bias:
            self._params["bias"].data[...] = uniform(self._rng, (self.out_channels,), bound, self.dtype)

    def output_shape(self, input_shape):
        c, h, w = check_per_sample(self, input_shape, 3, "(C, H, W)")
        if self.in_channels is not None and c != self.in_channels:
            raise ValueError(
                f"Conv2D: input has {c} channels (per-sample shape {(c, h, w)}) but in_channels is {self.in_channels}"
            )
        try:
            out = ops.conv2d_output_shape(
                (1, c, h, w), (self.out_channels, c) + self.kernel_size, self.stride, self.padding, self.dilation
            )
        except ValueError as e:
            raise ValueError(f"Conv2D: {e}") from None
        return tuple(out[1:])

    # -- computation ---------------------------------------------------------------------------
    def forward(self, x):
        x = check_input(self, x, ndim=4, layout="(N, C, H, W)")
        if self.in_channels is not None:
            check_size(self, x, 1, self.in_channels, "channels")
        if not self.built:
            self.build(x.shape[1:])
        w = self._params["weight"].data
        b = self._params["bias"].data if self.use_bias else None
        try:
            y = ops.conv2d_forward(x, w, b, self.stride, self.padding, self.dilation)
        except ValueError as e:
            raise ValueError(f"Conv2D: {e}") from None
        self._x = x
        self._y_shape = y.shape
        return y

    def backward(self, grad_out):
        g = check_grad(self, grad_out, self._y_shape)
        w = self._params["weight"]
        dx, dw, db = ops.conv2d_backward(
            self._x, w.data, g, self.stride, self.padding, self.dilation, need_input_grad=self.need_input_grad
        )
        w.grad += dw
        if self.use_bias:
            self._params["bias"].grad += db
        return dx

    def get_config(self):
        return {
            **super().get_config(),
            "out_channels": self.out_channels,
            "kernel_size": pair_config(self.kernel_size),
            "in_channels": self.in_channels,
            "stride": pair_config(self.stride),
            "padding": pair_config(self.padding),
            "dilation": pair_config(self.dilation),
            "bias": self.use_bias,
            "seed": self.seed,
        }
