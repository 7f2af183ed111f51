"""Fully connected layer."""
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
    uniform,
)
from cnnframe.layers.base import Layer
from cnnframe.registry import register_layer
from cnnframe.shards import chunks, concat, tree_sum

_FLATTEN_HINT = "; Dense takes (N, F) features only: put a Flatten layer before it"


@register_layer("dense")
class Dense(Layer):
    """y = x Wᵀ + b (PyTorch's ``Linear``).

    x: (N, in_features) → y: (N, out_features); weight: (out_features, in_features); bias: (out_features,).
    Backward, with G = dL/dy (N, out):  dW += Gᵀ x,  db += Σ_n G[n],  dx = G W (``ops.dense_forward``
    and ``ops.dense_backward``).  As a first layer, ``need_input_grad = False`` skips dx (``backward``
    then returns None).

    ``in_features`` may be omitted and is then inferred by ``build``.  It and everything after it are
    keyword-only so that PyTorch's positional order ``Linear(in, out)`` cannot be misread.
    Init (PyTorch's default): W, b ~ U(-1/√in_features, 1/√in_features), from ``seed`` (an int, a
    numpy Generator or None); ``reset_parameters(rng)`` re-draws them from a given Generator.
    """

    def __init__(self, out_features, *, in_features=None, bias=True, seed=None, dtype="float32"):
        super().__init__(dtype)
        self.out_features = check_int("out_features", out_features, "Dense", ge=1)
        self.in_features = check_int("in_features", in_features, "Dense", ge=1, nullable=True)
        self.use_bias = bool(bias)
        self.seed = config_seed(seed)
        self._rng = make_rng(seed, "Dense")
        self._x = None
        if self.in_features is not None:
            self.build((self.in_features,))

    def _per_sample(self, input_shape):
        shape = check_per_sample(self, input_shape, None, "(F,)")
        if len(shape) != 1:
            raise ValueError(f"Dense: expects per-sample input shape (F,), got {shape}{_FLATTEN_HINT}")
        if self.in_features is not None and shape[0] != self.in_features:
            raise ValueError(f"Dense: input has {shape[0]} features but in_features is {self.in_features}")
        return shape

    def build(self, input_shape):
        shape = self._per_sample(input_shape)
        if not self.built:
            self.in_features = shape[0]
            self.add_parameter("weight", np.zeros((self.out_features, self.in_features)))
            if self.use_bias:
                self.add_parameter("bias", np.zeros(self.out_features), weight_decay=False)
            super().build(shape)
            self.reset_parameters(self._rng)

    def reset_parameters(self, rng=None):
        """Draw W and b from U(-1/√fan_in, 1/√fan_in) with ``rng`` (kept for ``build`` if not built yet)."""
        if rng is not None:
            self._rng = make_rng(rng, "Dense")
        if not self.built:
            return
        bound = 1.0 / math.sqrt(self.in_features)
        self._params["weight"].data[...] = uniform(self._rng, (self.out_features, self.in_features), bound, self.dtype)
        if self.use_bias:
            self._params["bias"].data[...] = uniform(self._rng, (self.out_features,), bound, self.dtype)

    def output_shape(self, input_shape):
        self._per_sample(input_shape)
        return (self.out_features,)

    def forward(self, x):
        x = check_input(self, x, ndim=2, layout="(N, F)", hint=_FLATTEN_HINT)
        self._ensure_built(x)
        check_size(self, x, 1, self.in_features, "features")
        self._x = x
        w = self._params["weight"].data
        b = self._params["bias"].data if self.use_bias else None
        # chunk by chunk in data-parallel training (a GEMM's rounding may depend on its row count); one call otherwise
        return concat([ops.dense_forward(x[i:j], w, b) for i, j in chunks(len(x))])

    def backward(self, grad_out):
        x = self._x
        g = check_grad(self, grad_out, None if x is None else (x.shape[0], self.out_features))
        w = self._params["weight"]
        db = self._params["bias"].grad if self.use_bias else None
        spans = chunks(len(g))
        if len(spans) == 1:
            return ops.dense_backward(x, w.data, g, w.grad, db, need_input_grad=self.need_input_grad)
        # per chunk into zeroed buffers, added in the fixed tree order (cnnframe.shards)
        dws = [np.zeros_like(w.grad) for _ in spans]
        dbs = [np.zeros_like(db) for _ in spans] if db is not None else [None] * len(spans)
        dxs = [ops.dense_backward(x[i:j], w.data, g[i:j], dw, dbc, need_input_grad=self.need_input_grad)
               for (i, j), dw, dbc in zip(spans, dws, dbs)]
        w.grad += tree_sum(dws)
        if db is not None:
            db += tree_sum(dbs)
        return concat(dxs) if self.need_input_grad else None

    def get_config(self):
        return {
            **super().get_config(),
            "out_features": self.out_features,
            "in_features": self.in_features,
            "bias": self.use_bias,
            "seed": self.seed,
        }
