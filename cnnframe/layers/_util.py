"""Helpers the built-in layers share: input checks, hyper-parameter normalisation, seeded init."""
import numbers

import numpy as np


def check_input(layer, x, ndim=None, min_ndim=None, layout=None, hint=""):
    """Return ``x`` as a C-contiguous array of the layer's dtype, or raise naming the layer and shapes.

    Any floating dtype is cast to the layer's dtype (a float32 layer fed float64 data computes in
    float32); integer, bool, complex and object arrays are rejected, so raw uint8 images fail
    loudly instead of being silently rescaled.  ``layout`` (e.g. "(N, C, H, W)") names the expected axes.
    """
    name = type(layer).__name__
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: input must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(
            f"{name}: input must be a floating-point array, got dtype {x.dtype} (shape {x.shape}); "
            f"convert it first, e.g. x.astype(np.{layer.dtype.name})"
        )
    if ndim is not None and x.ndim != ndim:
        want = f"{ndim} dimensions {layout}" if layout else f"{ndim} dimensions"
        raise ValueError(f"{name}: expected input with {want}, got shape {x.shape}{hint}")
    if min_ndim is not None and x.ndim < min_ndim:
        want = f"at least {min_ndim} dimensions {layout}" if layout else f"at least {min_ndim} dimensions"
        raise ValueError(f"{name}: expected input with {want}, got shape {x.shape}{hint}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: input has an empty batch (shape {x.shape})")
    return np.ascontiguousarray(x, dtype=layer.dtype)


def check_size(layer, x, axis, expected, what):
    """Raise when ``x.shape[axis]`` differs from the size the layer was built for."""
    if x.shape[axis] != expected:
        name = type(layer).__name__
        raise ValueError(
            f"{name}: input has {x.shape[axis]} {what} (shape {x.shape}) but the layer was built for "
            f"{expected} {what}"
        )


def check_grad(layer, grad_out, expected_shape):
    """Return ``grad_out`` as a contiguous array of the layer's dtype after checking its shape."""
    name = type(layer).__name__
    if expected_shape is None:
        raise RuntimeError(f"{name}: backward() called before forward()")
    if not isinstance(grad_out, np.ndarray):
        raise TypeError(f"{name}: grad_out must be a numpy array, got {type(grad_out).__name__}")
    if grad_out.dtype.kind != "f":
        raise TypeError(f"{name}: grad_out must be a floating-point array, got dtype {grad_out.dtype}")
    if grad_out.shape != tuple(expected_shape):
        raise ValueError(
            f"{name}: grad_out has shape {grad_out.shape} but the last forward produced {tuple(expected_shape)}"
        )
    return np.ascontiguousarray(grad_out, dtype=layer.dtype)


def check_per_sample(layer, input_shape, ndim, layout):
    """Check a per-sample shape (no batch axis) has ``ndim`` positive entries; return it as a tuple."""
    name = type(layer).__name__
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"{name}: input_shape must be a tuple of ints, got {input_shape!r}") from None
    if ndim is not None and len(shape) != ndim:
        raise ValueError(
            f"{name}: expects per-sample input shape {layout} ({ndim} dimensions, no batch axis), got {shape}"
        )
    if any(s < 1 for s in shape):
        raise ValueError(f"{name}: input shape {shape} has an empty dimension")
    return shape


def pair_config(items):
    """The config form of a pair: an int when both entries agree, else a list (JSON/YAML friendly)."""
    return items[0] if items[0] == items[1] else [items[0], items[1]]


def make_rng(seed, owner):
    """A numpy Generator from None, an int seed or an existing Generator."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(int(seed))
    raise TypeError(f"{owner}: seed must be None, a non-negative int or a numpy Generator, got {seed!r}")


def config_seed(seed):
    """The seed as stored in a config: ints survive, Generators cannot be serialised and become None."""
    return int(seed) if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) else None


def uniform(rng, shape, bound, dtype):
    """U(-bound, bound) drawn in float64 then cast, so float32 and float64 layers get the same values."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)
