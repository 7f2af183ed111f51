"""Elementwise activations on arrays of any shape: checks, allocation, threads.

    relu:        y = max(x, 0) (NaN stays NaN),     dx = G·[y > 0]
    leaky_relu:  y = x if x > 0 else a·x,           dx = G if x > 0 else a·G
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import activation as _act
from cnnframe.ops._checks import float_array, same_dtype

# Elements per thread below which another thread costs more than it saves.
GRAIN_ELEMS = 65_536


def _flat(x, name):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    return float_array(x, name, x.ndim).reshape(-1)


def _pair(g, other, gname, oname):
    gf, of = _flat(g, gname), _flat(other, oname)
    if g.shape != other.shape:
        raise ValueError(f"{gname} has shape {g.shape} but {oname} has shape {other.shape}")
    same_dtype([(oname, of), (gname, gf)])
    return gf, of


def _threads(n):
    return parallel.threads_for(n, GRAIN_ELEMS)


def relu_forward(x):
    """y = max(x, 0), same shape and dtype; a NaN input gives NaN."""
    xf = _flat(x, "input")
    y = np.empty_like(xf)
    _act.relu(xf, y, _threads(xf.size))
    return y.reshape(x.shape)


def relu_backward(grad_out, y):
    """dx = G·[y > 0] from the forward output ``y`` (y > 0 exactly where x > 0)."""
    gf, yf = _pair(grad_out, y, "grad_out", "output")
    dx = np.empty_like(gf)
    _act.relu_grad(gf, yf, dx, _threads(gf.size))
    return dx.reshape(grad_out.shape)


def leaky_relu_forward(x, negative_slope):
    """y = x where x > 0, negative_slope·x elsewhere (the slope rounded to x's dtype first)."""
    xf = _flat(x, "input")
    y = np.empty_like(xf)
    _act.leaky_relu(xf, y, float(xf.dtype.type(negative_slope)), _threads(xf.size))
    return y.reshape(x.shape)


def leaky_relu_backward(grad_out, x, negative_slope):
    """dx = G where x > 0, negative_slope·G elsewhere, from the forward input ``x``."""
    gf, xf = _pair(grad_out, x, "grad_out", "input")
    dx = np.empty_like(gf)
    _act.leaky_relu_grad(gf, xf, dx, float(gf.dtype.type(negative_slope)), _threads(gf.size))
    return dx.reshape(grad_out.shape)
