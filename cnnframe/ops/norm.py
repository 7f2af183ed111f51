"""Batch normalisation over the channel axis (axis 1) of (N, C, ...) batches: checks, allocation, threads.

With m = N·(product of the axes after C) values per channel, x̂ = (x − μ)·inv and inv = 1/√(σ² + eps):

    forward:   y = γ·x̂ + β
    backward:  dγ = Σ G·x̂,  dβ = Σ G,
               dx = γ·inv·(G − mean(G) − x̂·mean(G·x̂))   with batch statistics (training),
               dx = γ·inv·G                              with fixed statistics (evaluation).

``relu=True`` fuses a ReLU after the normalisation: forward gives max(y, 0), and backward takes
the gradient of that output, G = g·[y > 0] with y recomputed from x (no pass over y or the mask).

The kernels (``cnnframe._ext.norm``) give one thread a whole channel, so every sum is added in the
same order for any thread count.
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import norm as _norm
from cnnframe.ops._checks import float_array, same_dtype

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
    c = x3.shape[1]
    weight = _per_channel(weight, "weight", c, x3.dtype)
    bias = _per_channel(bias, "bias", c, x3.dtype)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    training = mean is None
    if training != (inv_std is None):
        raise ValueError("give both mean and inv_std (evaluation) or neither (training)")
    if training:
        mean = np.empty(c, x3.dtype)
        inv_std = np.empty(c, x3.dtype)
        var = np.empty(c, x3.dtype)
    else:
        mean = _per_channel(mean, "mean", c, x3.dtype)
        inv_std = _per_channel(inv_std, "inv_std", c, x3.dtype)
        var = np.empty(c, x3.dtype)
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
    c = x3.shape[1]
    mean = _per_channel(mean, "mean", c, x3.dtype)
    inv_std = _per_channel(inv_std, "inv_std", c, x3.dtype)
    weight = _per_channel(weight, "weight", c, x3.dtype)
    bias = _per_channel(bias, "bias", c, x3.dtype)
    dx = np.empty_like(x3)
    dgamma = np.empty(c, x3.dtype)
    dbeta = np.empty(c, x3.dtype)
    _norm.backward(g3, x3, mean, inv_std, weight, bias, bool(training), bool(relu), dgamma, dbeta, dx, _threads(x3))
    return dx.reshape(np.shape(x)), dgamma, dbeta
