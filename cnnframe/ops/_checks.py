"""Argument checks shared by the ops: everything is validated here, before any unchecked kernel runs."""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INT32_MAX = 2**31 - 1


def positive_int(value, name):
    """Check ``value`` is an int >= 1 (not a bool) and return it as an int."""
    if type(value) is int and value >= 1:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def float_array(x, name, ndim):
    """Return ``x`` as a C-contiguous float32/float64 array with ``ndim`` axes, or raise."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return np.ascontiguousarray(x)


def same_dtype(arrays):
    """Check every (name, array) pair shares the first one's dtype."""
    (name0, a0), rest = arrays[0], arrays[1:]
    for name, a in rest:
        if a is not None and a.dtype != a0.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but {name0} has dtype {a0.dtype}; they must match")


def out_size(size, k, s, p, d):
    """Output length along one axis: floor((size + 2p - d(k-1) - 1) / s) + 1 (math.md)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def fits_int32(name, *values):
    for v in values:
        if v > INT32_MAX:
            raise ValueError(f"{name} is too large for the BLAS kernels ({v} > 2**31 - 1)")
