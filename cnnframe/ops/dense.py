"""Fully connected products (PyTorch's ``Linear``): checks, allocation, threads.

    forward:   y = x·Wᵀ + b                 x: (N, I), W: (O, I), b: (O,) → y: (N, O)
    backward:  dW += Gᵀ·x,  db += Σ_n G[n],  dx = G·W

The products run on SciPy's BLAS pinned to one thread per call, over fixed spans of rows spread
across cnnframe's threads: NumPy's own BLAS (and its thread pool) is never woken by a training step.
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import dense as _dense
from cnnframe.ops._checks import fits_int32, float_array, same_dtype

# Multiply-adds per thread below which another thread costs more than it saves.
GRAIN_FLOPS = 500_000


def _threads(n, i, o):
    return parallel.threads_for(2 * n * i * o, GRAIN_FLOPS)


def _check_weight(x, weight, bias):
    x = float_array(x, "input", 2)
    weight = float_array(weight, "weight", 2)
    if bias is not None:
        bias = float_array(bias, "bias", 1)
    same_dtype([("input", x), ("weight", weight), ("bias", bias)])
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[1]} features (shape {x.shape}) but weight {weight.shape} expects "
                         f"{weight.shape[1]}")
    if min(weight.shape) < 1:
        raise ValueError(f"weight shape {weight.shape} has an empty dimension")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight {weight.shape}, got {bias.shape}")
    fits_int32("dense", x.shape[0], *weight.shape)
    return x, weight, bias


def _accumulator(arr, name, shape, dtype):
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
        raise ValueError(f"{name} must be a {dtype} array of shape {shape}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous and writeable (gradients are added into it in place)")
    return arr


def dense_forward(x, weight, bias=None):
    """y = x·Wᵀ + b: (N, I) → (N, O), dtype of x."""
    x, weight, bias = _check_weight(x, weight, bias)
    n, o = x.shape[0], weight.shape[0]
    y = np.empty((n, o), dtype=x.dtype)
    b = bias if bias is not None else np.zeros(1, dtype=x.dtype)
    parallel.pin_kernel_blas()
    _dense.forward(x, weight, b, bias is not None, y, _threads(n, x.shape[1], o))
    return y


def dense_backward(x, weight, grad_out, weight_grad, bias_grad=None, need_input_grad=True):
    """Adds Gᵀ·x into ``weight_grad`` and Σ_n G[n] into ``bias_grad`` (when given, in place);
    returns dx = G·W, or None when ``need_input_grad`` is false."""
    x, weight, _ = _check_weight(x, weight, None)
    grad_out = float_array(grad_out, "grad_out", 2)
    same_dtype([("input", x), ("grad_out", grad_out)])
    n, o = x.shape[0], weight.shape[0]
    if grad_out.shape != (n, o):
        raise ValueError(f"grad_out has shape {grad_out.shape} but the layer's output has shape {(n, o)}")
    _accumulator(weight_grad, "weight_grad", weight.shape, x.dtype)
    has_bias = bias_grad is not None
    db = _accumulator(bias_grad, "bias_grad", (o,), x.dtype) if has_bias else np.zeros(1, dtype=x.dtype)
    dx = np.empty(x.shape, dtype=x.dtype) if need_input_grad else np.empty((1, 1), dtype=x.dtype)
    parallel.pin_kernel_blas()
    _dense.backward(x, weight, grad_out, weight_grad, db, has_bias, dx, bool(need_input_grad),
                    _threads(n, x.shape[1], o))
    return dx if need_input_grad else None
