"""Max, average and global average pooling over NCHW batches."""
from cnnframe import ops
from cnnframe.checks import pair
from cnnframe.layers._util import check_grad, check_input, check_per_sample, pair_config
from cnnframe.layers.base import Layer
from cnnframe.registry import register_layer


class _Pool2D(Layer):
    """Shared hyper-parameters and shape logic of MaxPool2D and AvgPool2D (PyTorch semantics;
    docs/math.md, Pooling).

    Ho = ⌊(H + 2p − kh)/s⌋ + 1 (same for Wo); ``stride`` defaults to ``kernel_size``; padding may be at
    most half the kernel, as in PyTorch, so every window holds at least one real input.  The window
    is normalised to (h, w) pairs once, here; the ops check the input against it on every call.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dtype="float32"):
        super().__init__(dtype)
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", 1, name)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", 1, name)
        self.padding = pair(padding, "padding", 0, name)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(
                f"{name}: padding {self.padding} must be at most half the kernel size {self.kernel_size}"
            )
        self._in_shape = None
        self._y_shape = None

    def build(self, input_shape):
        super().build(check_per_sample(self, input_shape, 3, "(C, H, W)"))

    def output_shape(self, input_shape):
        c, h, w = check_per_sample(self, input_shape, 3, "(C, H, W)")
        try:
            out = ops.pool2d_output_shape((1, c, h, w), self.kernel_size, self.stride, self.padding)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None
        return tuple(out[1:])

    def _check(self, x):
        x = check_input(self, x, ndim=4, layout="(N, C, H, W)")
        self._ensure_built(x)
        return x

    def _pool(self, op, *args):
        """Run a pooling op with this layer's (already normalised) window; its errors name the layer."""
        try:
            return op(*args, self.kernel_size, self.stride, self.padding)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: {e}") from None

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_size": pair_config(self.kernel_size),
            "stride": pair_config(self.stride),
            "padding": pair_config(self.padding),
        }


@register_layer("maxpool2d")
class MaxPool2D(_Pool2D):
    """Y[n,c,i,j] = max over the window (kh × kw at (i·s − p, j·s − p)) of X; padding never wins
    (docs/math.md, Pooling: max pool).

    x: (N, C, H, W) → y: (N, C, Ho, Wo).  Backward (math.md, Pooling): each window's gradient goes to
    the position of its maximum (the first one on ties, as in PyTorch); overlapping windows add.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dtype="float32"):
        super().__init__(kernel_size, stride, padding, dtype)
        self._argmax = None

    def tiles(self):
        """True when the windows tile the input (stride = kernel size, no padding): each input element
        is in at most one window."""
        return self.stride == self.kernel_size and self.padding == (0, 0)

    def output_size(self):
        """The (N, C, Ho, Wo) shape of the last forward's output (None before any)."""
        return self._y_shape

    def keep_result(self, argmax, input_shape, output_shape):
        """Take the maxima positions of a forward pass another layer computed for this one (a BatchNorm
        fused with it), so that ``backward`` works as after ``forward``."""
        self._argmax, self._in_shape, self._y_shape = argmax, tuple(input_shape), tuple(output_shape)

    def forward(self, x):
        x = self._check(x)
        y, self._argmax = self._pool(ops.max_pool2d_forward, x)
        self._in_shape, self._y_shape = x.shape, y.shape
        return y

    def backward(self, grad_out):
        g = check_grad(self, grad_out, self._y_shape)
        return ops.max_pool2d_backward(g, self._argmax, self._in_shape)


@register_layer("avgpool2d")
class AvgPool2D(_Pool2D):
    """Y[n,c,i,j] = (1/(kh·kw)) Σ over the window of Xp, padded zeros included (PyTorch's default;
    docs/math.md, Pooling: average pool).

    x: (N, C, H, W) → y: (N, C, Ho, Wo).  Backward (math.md, Pooling): every input of a window receives
    G[n,c,i,j] / (kh·kw); overlapping windows add.
    """

    def forward(self, x):
        x = self._check(x)
        y = self._pool(ops.avg_pool2d_forward, x)
        self._in_shape, self._y_shape = x.shape, y.shape
        return y

    def backward(self, grad_out):
        g = check_grad(self, grad_out, self._y_shape)
        return self._pool(ops.avg_pool2d_backward, g, self._in_shape)


@register_layer("globalavgpool2d")
class GlobalAvgPool2D(Layer):
    """y[n,c] = (1/(H·W)) Σ_h Σ_w x[n,c,h,w]: (N, C, H, W) → (N, C), ready for Dense without Flatten.

    Backward: dx[n,c,h,w] = G[n,c] / (H·W) (docs/math.md, Pooling: global average pool).  Any H × W
    works, including sizes that vary between batches.
    """

    def __init__(self, dtype="float32"):
        super().__init__(dtype)
        self._in_shape = None

    def build(self, input_shape):
        super().build(check_per_sample(self, input_shape, 3, "(C, H, W)"))

    def output_shape(self, input_shape):
        c, _, _ = check_per_sample(self, input_shape, 3, "(C, H, W)")
        return (c,)

    def forward(self, x):
        x = check_input(self, x, ndim=4, layout="(N, C, H, W)")
        self._ensure_built(x)
        self._in_shape = x.shape
        return ops.global_avg_pool2d_forward(x)

    def backward(self, grad_out):
        shape = self._in_shape
        g = check_grad(self, grad_out, None if shape is None else shape[:2])
        return ops.global_avg_pool2d_backward(g, shape)
