"""Max, average and global average pooling on NCHW batches, with PyTorch's semantics (floor output size).

Max pooling: each window's gradient goes to the position of its maximum, the first one on ties;
overlapping windows add.  Average pooling divides by the full window size kh·kw, counting padded
zeros (PyTorch's default ``count_include_pad=True``).  Global average pooling: the mean of each
plane, (N, C, H, W) → (N, C).
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import pool as _pool
from cnnframe.checks import pair
from cnnframe.ops._checks import fits_int32, float_array, out_size

# Window elements per thread below which another thread costs more than it saves.
GRAIN_ELEMS = 50_000


def _threads(out_shape, k):
    return parallel.threads_for(out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3] * k[0] * k[1], GRAIN_ELEMS)


def pool2d_output_shape(input_shape, kernel_size, stride=None, padding=0):
    """(N, C, Ho, Wo) with Ho = floor((H + 2p - kh) / s) + 1; stride defaults to the kernel size.

    Padding may be at most half the kernel (as in PyTorch), so every window holds a real input.
    """
    kh, kw = pair(kernel_size, "kernel_size", 1)
    sh, sw = pair(kernel_size if stride is None else stride, "stride", 1)
    ph, pw = pair(padding, "padding", 0)
    if len(input_shape) != 4:
        raise ValueError(f"input must have 4 dimensions (N, C, H, W), got shape {tuple(input_shape)}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
    n, c, h, w = input_shape
    ho, wo = out_size(h, kh, sh, ph, 1), out_size(w, kw, sw, pw, 1)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"pooling output size would be {ho}x{wo} (< 1): input {h}x{w}, kernel {(kh, kw)}, "
            f"stride {(sh, sw)}, padding {(ph, pw)}"
        )
    return (n, c, ho, wo)


def _params(input_shape, kernel_size, stride, padding):
    k = pair(kernel_size, "kernel_size", 1)
    s = pair(kernel_size if stride is None else stride, "stride", 1)
    p = pair(padding, "padding", 0)
    return k, s, p, pool2d_output_shape(input_shape, k, s, p)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Y[n,c,i,j] = max over the window of Xp (padding is -inf). Returns (Y, argmax).

    ``argmax`` (int32, shape of Y) holds the flat index h·W + w into the input plane of each maximum.
    """
    x = float_array(x, "input", 4)
    k, s, p, shape = _params(x.shape, kernel_size, stride, padding)
    fits_int32("max pooling (one input plane)", x.shape[2] * x.shape[3])
    y = np.empty(shape, dtype=x.dtype)
    arg = np.empty(shape, dtype=np.int32)
    _pool.max_forward(x, y, arg, k[0], k[1], s[0], s[1], p[0], p[1], _threads(shape, k))
    return y, arg


def max_pool2d_backward(grad_out, argmax, input_shape):
    """dX[n,c,argmax] += G[n,c,i,j] for every output position (first maximum of each window)."""
    grad_out = float_array(grad_out, "grad_out", 4)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32 or argmax.shape != grad_out.shape:
        raise ValueError(
            f"argmax must be the int32 array returned by max_pool2d_forward with the shape of grad_out "
            f"{grad_out.shape}"
        )
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or input_shape[:2] != grad_out.shape[:2] or min(input_shape) < 1:
        raise ValueError(f"input_shape {input_shape} does not match grad_out {grad_out.shape} in (N, C)")
    fits_int32("max pooling (one input plane)", input_shape[2] * input_shape[3])
    dx = np.empty(input_shape, dtype=grad_out.dtype)  # the kernel writes every element
    # The kernel checks each index against the plane as it scatters (no separate pass over argmax).
    bad = _pool.max_backward(grad_out, np.ascontiguousarray(argmax), dx,
                             parallel.threads_for(dx.size + grad_out.size, GRAIN_ELEMS))
    if bad:
        plane = input_shape[2] * input_shape[3]
        raise ValueError(f"argmax holds {bad} indices outside the input plane of {plane} elements")
    return dx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Y[n,c,i,j] = (1 / (kh·kw)) Σ over the window of Xp (padded zeros count)."""
    x = float_array(x, "input", 4)
    k, s, p, shape = _params(x.shape, kernel_size, stride, padding)
    y = np.empty(shape, dtype=x.dtype)
    _pool.avg_forward(x, y, k[0], k[1], s[0], s[1], p[0], p[1], _threads(shape, k))
    return y


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0):
    """dX[n,c,h,w] = Σ over the windows covering (h, w) of G[n,c,i,j] / (kh·kw)."""
    grad_out = float_array(grad_out, "grad_out", 4)
    input_shape = tuple(int(v) for v in input_shape)
    k = pair(kernel_size, "kernel_size", 1)
    s = pair(kernel_size if stride is None else stride, "stride", 1)
    p = pair(padding, "padding", 0)
    expected = pool2d_output_shape(input_shape, k, s, p)
    if grad_out.shape != expected:
        raise ValueError(f"grad_out has shape {grad_out.shape}, but pooling input {input_shape} gives {expected}")
    dx = np.empty(input_shape, dtype=grad_out.dtype)  # the kernel writes every element
    _pool.avg_backward(grad_out, dx, k[0], k[1], s[0], s[1], p[0], p[1], _threads(expected, k))
    return dx


def global_avg_pool2d_forward(x):
    """y[n, c] = (1/(H·W)) Σ_h Σ_w x[n, c, h, w]: (N, C, H, W) → (N, C)."""
    x = float_array(x, "input", 4)
    if x.size == 0:
        raise ValueError(f"input is empty (shape {x.shape})")
    n, c, h, w = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    _pool.global_avg_forward(x.reshape(n, c, h * w), y, parallel.threads_for(x.size, GRAIN_ELEMS))
    return y


def global_avg_pool2d_backward(grad_out, input_shape):
    """dX[n, c, h, w] = G[n, c] / (H·W)."""
    grad_out = float_array(grad_out, "grad_out", 2)
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or input_shape[:2] != grad_out.shape or min(input_shape) < 1:
        raise ValueError(f"input_shape {input_shape} does not match grad_out {grad_out.shape} in (N, C)")
    n, c, h, w = input_shape
    dx = np.empty((n, c, h * w), dtype=grad_out.dtype)
    _pool.global_avg_backward(grad_out, dx, parallel.threads_for(dx.size, GRAIN_ELEMS))
    return dx.reshape(input_shape)
