"""2-D convolution layer over the compiled kernels in :mod:`cnnframe.ops`."""
import math

import numpy as np

from cnnframe import ops, shards
from cnnframe.checks import check_int, pair
from cnnframe.layers._util import (
    check_grad,
    check_input,
    check_per_sample,
    check_size,
    config_seed,
    make_rng,
    pair_config,
    uniform,
)
from cnnframe.layers.base import Layer
from cnnframe.registry import register_layer


@register_layer("conv2d")
class Conv2D(Layer):
    """2-D convolution (a cross-correlation, as in PyTorch's ``Conv2d``), math.md eq. (1)–(5).

    Forward, eq. (1):  Y[n,k,i,j] = b[k] + Σ_c Σ_m Σ_l Xp[n, c, i·s + m·d, j·s + l·d] · W[k,c,m,l]
    x: (N, C, H, W) → y: (N, K, Ho, Wo), Ho = ⌊(H + 2p − d(kh−1) − 1)/s⌋ + 1 (same for Wo);
    weight: (K, C/groups, kh, kw) = (out_channels, in_channels/groups, kernel_size); bias: (K,).
    ``groups`` = g, eq. (5): the channels split into g groups and output channel k sees only the
    C/g input channels of its group (PyTorch's semantics; g = in_channels = out_channels is a
    depthwise convolution).  in_channels and out_channels must be multiples of g.

    Backward (``ops.conv2d_backward``): dW by eq. (2) (input correlated with G), db by eq. (3)
    (G summed over n, i, j), dX by eq. (4) (full convolution of G with the 180°-rotated kernel,
    computed as written or in its col2im form, see ``ops.conv2d_backward``).  Set ``need_input_grad = False`` on a first layer to skip dX
    (``backward`` then returns None).

    ``kernel_size``, ``stride``, ``padding``, ``dilation``: an int or an (h, w) pair, normalised
    once here (``checks.pair``), so each forward passes them on as they are.  ``in_channels``
    may be omitted (inferred by ``build``); it and everything after ``kernel_size`` are keyword-only so
    PyTorch's positional order ``Conv2d(in, out, k)`` cannot be misread.
    Init (PyTorch's default, kaiming-uniform with a=√5): W, b ~ U(-1/√fan_in, 1/√fan_in) with
    fan_in = (in_channels/groups)·kh·kw, from ``seed`` (int, numpy Generator or None); ``reset_parameters(rng)``
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
        groups=1,
        bias=True,
        seed=None,
        dtype="float32",
    ):
        super().__init__(dtype)
        self.out_channels = check_int("out_channels", out_channels, "Conv2D", ge=1)
        self.in_channels = check_int("in_channels", in_channels, "Conv2D", ge=1, nullable=True)
        self.kernel_size = pair(kernel_size, "kernel_size", 1, "Conv2D")
        self.stride = pair(stride, "stride", 1, "Conv2D")
        self.padding = pair(padding, "padding", 0, "Conv2D")
        self.dilation = pair(dilation, "dilation", 1, "Conv2D")
        self.groups = check_int("groups", groups, "Conv2D", ge=1)
        if self.out_channels % self.groups:
            raise ValueError(f"Conv2D: out_channels ({self.out_channels}) must be a multiple of groups ({self.groups})")
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
        if in_channels % self.groups:
            raise ValueError(f"Conv2D: in_channels ({in_channels}) must be a multiple of groups ({self.groups})")
        self.in_channels = in_channels
        self.add_parameter("weight", np.zeros((self.out_channels, in_channels // self.groups) + self.kernel_size))
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
        fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
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
            if c % self.groups:
                raise ValueError(f"input has {c} channels, not a multiple of groups ({self.groups})")
            out = ops.conv2d_output_shape(
                (1, c, h, w), (self.out_channels, c // self.groups) + self.kernel_size, self.stride, self.padding,
                self.dilation, self.groups,
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
        try:  # chunk by chunk in data-parallel training (cnnframe.shards); one call otherwise
            y = shards.concat(shards.map_chunks(
                lambda i, j: ops.conv2d_forward(x[i:j], w, b, self.stride, self.padding, self.dilation, self.groups),
                len(x)))
        except ValueError as e:
            raise ValueError(f"Conv2D: {e}") from None
        self._x = x
        self._y_shape = y.shape
        return y

    def backward(self, grad_out):
        g = check_grad(self, grad_out, self._y_shape)
        w = self._params["weight"]
        parts = shards.map_chunks(lambda i, j: ops.conv2d_backward(
            self._x[i:j], w.data, g[i:j], self.stride, self.padding, self.dilation, self.groups,
            need_input_grad=self.need_input_grad), len(g))
        w.grad += shards.tree_sum([dw for _, dw, _ in parts])
        if self.use_bias:
            self._params["bias"].grad += shards.tree_sum([db for _, _, db in parts])
        return shards.concat([dx for dx, _, _ in parts]) if self.need_input_grad else None

    def get_config(self):
        return {
            **super().get_config(),
            "out_channels": self.out_channels,
            "kernel_size": pair_config(self.kernel_size),
            "in_channels": self.in_channels,
            "stride": pair_config(self.stride),
            "padding": pair_config(self.padding),
            "dilation": pair_config(self.dilation),
            "groups": self.groups,
            "bias": self.use_bias,
            "seed": self.seed,
        }

