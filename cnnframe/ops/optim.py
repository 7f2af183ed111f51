"""Optimizer updates in one pass over each parameter, and the global gradient norm: checks and threads.

With g = scale·grad (+ wd·w when the parameter decays), in the parameter's dtype:

    SGD:   v ← μ·v + g;   w ← w − lr·(g + μ·v) with Nesterov, w − lr·v without, w − lr·g when μ = 0
    Adam:  m ← β1·m + (1 − β1)·g;   v ← β2·v + (1 − β2)·g²;   w ← w − lr_t·m / (√v / c2 + eps)

The arithmetic is the NumPy form of ``cnnframe.optim`` operation by operation, so the kernels give
the same bits as that form would.
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import optim as _optim

# Elements per thread below which another thread costs more than it saves.
GRAIN_ELEMS = 65_536
_RUN = 16384  # optim.pyx's run length: one partial sum per run


def _flat(arr, name, like=None, writeable=False):
    """The 1-d view of a C-contiguous float32/float64 array (of ``like``'s shape and dtype)."""
    if not isinstance(arr, np.ndarray) or arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be a float32 or float64 numpy array, got "
                        f"{getattr(arr, 'dtype', type(arr).__name__)}")
    if like is not None and (arr.shape != like.shape or arr.dtype != like.dtype):
        raise ValueError(f"{name} has shape {arr.shape} and dtype {arr.dtype}; expected {like.shape}, {like.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is updated in place)")
    if writeable and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only, but the optimizer updates it in place")
    return arr.reshape(-1)


def _threads(n):
    return parallel.threads_for(n, GRAIN_ELEMS)


def sum_squares(x):
    """Σ x² of a float array, accumulated in float64 in a fixed order."""
    xf = _flat(np.ascontiguousarray(x), "array")
    partials = np.empty(max(1, -(-xf.size // _RUN)), dtype=np.float64)
    return float(_optim.sum_squares(xf, partials, _threads(xf.size)))


def sgd_step(data, grad, momentum_buffer, lr, momentum=0.0, nesterov=False, scale=1.0, weight_decay=0.0):
    """One SGD step on ``data`` (and ``momentum_buffer``, None when momentum is 0), in place."""
    w = _flat(data, "data", writeable=True)
    g = _flat(grad, "grad", like=data)
    if momentum:
        buf = _flat(momentum_buffer, "momentum_buffer", like=data, writeable=True)
    else:
        buf = np.zeros(1, dtype=w.dtype)
    _optim.sgd(w, g, buf, float(lr), float(momentum), bool(nesterov), float(scale), float(weight_decay),
               _threads(w.size))


def adam_step(data, grad, exp_avg, exp_avg_sq, lr, betas, eps, step, scale=1.0, weight_decay=0.0):
    """One Adam step (``step`` = t, counted from 1) on ``data``, ``exp_avg`` and ``exp_avg_sq``, in place."""
    w = _flat(data, "data", writeable=True)
    g = _flat(grad, "grad", like=data)
    m = _flat(exp_avg, "exp_avg", like=data, writeable=True)
    v = _flat(exp_avg_sq, "exp_avg_sq", like=data, writeable=True)
    b1, b2 = betas
    lr_t = lr / (1.0 - b1**step)
    c2 = (1.0 - b2**step) ** 0.5
    _optim.adam(w, g, m, v, float(lr_t), float(b1), float(b2), float(c2), float(eps), float(scale),
                float(weight_decay), _threads(w.size))
