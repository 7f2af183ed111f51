"""Batch normalisation over the channel axis (axis 1) of (N, C, ...) batches: checks, allocation, threads.

With m = N·(product of the axes after C) values per channel, x̂ = (x − μ)·inv and inv = 1/√(σ² + eps):

    forward:   y = γ·x̂ + β
    backward:  dγ = Σ G·x̂,  dβ = Σ G,
               dx = γ·inv·(G − mean(G) − x̂·mean(G·x̂))   with batch statistics (training),
               dx = γ·inv·G                              with fixed statistics (evaluation).

``relu=True`` fuses a ReLU after the normalisation: forward gives max(y, 0), and backward takes
the gradient of that output, G = g·[y > 0] with y recomputed from x (no pass over y or the mask).
``batch_norm_relu_maxpool_*`` also fuse a max pooling with non-overlapping windows after the ReLU:
only the pooled output and its argmax are written, never the full-size activations.

The kernels (``cnnframe._ext.norm``) give one thread a whole channel, so every sum is added in the
same order for any thread count.
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import norm as _norm
from cnnframe.checks import pair
from cnnframe.ops._checks import fits_int32, float_array, same_dtype
from cnnframe.ops.pool import pool2d_output_shape

# Elements per thread below which another thread costs more than it saves.
GRAIN_ELEMS = 32_768


def _as3d(x, name):
    """(N, C, ...) → a C-contiguous (N, C, L) view, L = product of the trailing axes (1 for (N, C))."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have a batch and a channel axis (N, C, ...), got shape {x.shape}")
    x = float_array(x, name, x.ndim)
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    return x.reshape(x.shape[0], x.shape[1], -1)


def _per_channel(arr, name, c, dtype):
    arr = float_array(arr, name, 1)
    if arr.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},) for {c} channels, got {arr.shape}")
    if arr.dtype != dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but the input has dtype {dtype}; they must match")
    return arr


def _threads(x3):
    return parallel.threads_for(x3.size, GRAIN_ELEMS)


def batch_norm_forward(x, weight, bias, eps, mean=None, inv_std=None, relu=False):
    """y = γ·(x − μ)·inv + β per channel (max(y, 0) with ``relu``); returns (y, mean, var, inv_std),
    the last three per-channel arrays (C,).

    Without ``mean``/``inv_std`` the batch statistics are used (training: μ and the biased σ² over
    the m values of each channel); with them (evaluation: from the running statistics), ``var`` is None.
    """
    x3 = _as3d(x, "input")
    weight, bias, training, mean, var, inv_std = _statistics(x3, weight, bias, eps, mean, inv_std)
    y = np.empty_like(x3)
    _norm.forward(x3, weight, bias, mean, var, inv_std, float(eps), training, bool(relu), y, _threads(x3))
    return y.reshape(np.shape(x)), mean, (var if training else None), inv_std


def batch_norm_backward(grad_out, x, mean, inv_std, weight, bias, training=True, relu=False):
    """Returns (dx, dγ, dβ) for G = ``grad_out`` and the statistics the forward pass used; with ``relu``,
    ``grad_out`` is the gradient of max(y, 0)."""
    x3 = _as3d(x, "input")
    g3 = _as3d(grad_out, "grad_out")
    if g3.shape != x3.shape:
        raise ValueError(f"grad_out has shape {np.shape(grad_out)} but the input has shape {np.shape(x)}")
    same_dtype([("input", x3), ("grad_out", g3)])
    mean, inv_std, weight, bias, dx, dgamma, dbeta = _backward_arrays(x3, mean, inv_std, weight, bias)
    _norm.backward(g3, x3, mean, inv_std, weight, bias, bool(training), bool(relu), dgamma, dbeta, dx, _threads(x3))
    return dx.reshape(np.shape(x)), dgamma, dbeta


def _backward_arrays(x, mean, inv_std, weight, bias):
    """The checked per-channel inputs of a backward pass, and its outputs dx (like x), dγ and dβ."""
    c, dt = x.shape[1], x.dtype
    checked = [_per_channel(a, name, c, dt) for a, name in
               ((mean, "mean"), (inv_std, "inv_std"), (weight, "weight"), (bias, "bias"))]
    return (*checked, np.empty_like(x), np.empty(c, dt), np.empty(c, dt))


def _statistics(x3, weight, bias, eps, mean, inv_std):
    c = x3.shape[1]
    weight = _per_channel(weight, "weight", c, x3.dtype)
    bias = _per_channel(bias, "bias", c, x3.dtype)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    training = mean is None
    if training != (inv_std is None):
        raise ValueError("give both mean and inv_std (evaluation) or neither (training)")
    if training:
        return weight, bias, True, np.empty(c, x3.dtype), np.empty(c, x3.dtype), np.empty(c, x3.dtype)
    return (weight, bias, False, _per_channel(mean, "mean", c, x3.dtype), np.empty(c, x3.dtype),
            _per_channel(inv_std, "inv_std", c, x3.dtype))


def batch_norm_relu_maxpool_forward(x, weight, bias, eps, kernel_size, mean=None, inv_std=None):
    """Max pooling (kernel_size windows, stride kernel_size, no padding) of max(γ·(x − μ)·inv + β, 0),
    for x (N, C, H, W).  Returns (y, argmax, mean, var, inv_std): y and argmax as ``max_pool2d_forward``
    gives them for the ReLU's output, the statistics as ``batch_norm_forward``."""
    x = float_array(x, "input", 4)
    x3 = _as3d(x, "input")
    k = pair(kernel_size, "kernel_size", 1)
    shape = pool2d_output_shape(x.shape, k, k, 0)
    fits_int32("max pooling (one input plane)", x.shape[2] * x.shape[3])
    weight, bias, training, mean, var, inv_std = _statistics(x3, weight, bias, eps, mean, inv_std)
    y = np.empty(shape, dtype=x.dtype)
    arg = np.empty(shape, dtype=np.int32)
    if not _norm.forward_relu_maxpool(x, weight, bias, mean, var, inv_std, float(eps), training, k[0], k[1], y, arg,
                                      _threads(x3)):
        raise MemoryError("batch_norm_relu_maxpool_forward: no memory for a scratch plane")
    return y, arg, mean, (var if training else None), inv_std


def batch_norm_relu_maxpool_backward(grad_out, argmax, x, mean, inv_std, weight, bias, kernel_size, training=True):
    """(dx, dγ, dβ) of ``batch_norm_relu_maxpool_forward`` for the pooled output's gradient ``grad_out``."""
    x = float_array(x, "input", 4)
    x3 = _as3d(x, "input")
    grad_out = float_array(grad_out, "grad_out", 4)
    same_dtype([("input", x), ("grad_out", grad_out)])
    k = pair(kernel_size, "kernel_size", 1)
    if grad_out.shape != pool2d_output_shape(x.shape, k, k, 0):
        raise ValueError(f"grad_out has shape {grad_out.shape}, but {k[0]}x{k[1]} pooling of the input {x.shape} "
                         f"gives {pool2d_output_shape(x.shape, k, k, 0)}")
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int32 or argmax.shape != grad_out.shape:
        raise ValueError(f"argmax must be the int32 array of the forward pass, with the shape of grad_out "
                         f"{grad_out.shape}")
    fits_int32("max pooling (one input plane)", x.shape[2] * x.shape[3])
    mean, inv_std, weight, bias, dx, dgamma, dbeta = _backward_arrays(x, mean, inv_std, weight, bias)
    bad = _norm.backward_relu_maxpool(grad_out, np.ascontiguousarray(argmax), x, mean, inv_std, weight, bias,
                                      bool(training), dgamma, dbeta, dx, _threads(x3))
    if bad:
        raise ValueError(f"argmax holds {bad} indices outside the input plane of {x.shape[2] * x.shape[3]} elements")
    return dx, dgamma, dbeta
