"""The layer contract every built-in and user layer follows.

Shapes given to ``build`` and ``output_shape`` are *per sample* (no batch axis): ``(C, H, W)`` for
images, ``(F,)`` for features.  Arrays given to ``forward``/``backward`` carry the batch axis first.

``allocation_limit(nbytes)`` bounds what layers allocate through ``add_parameter``/``add_buffer``
inside a block: checking a config or loading a checkpoint stops at a layer that would need more,
before the memory is touched.
"""
import contextlib
import contextvars
from collections import OrderedDict

import numpy as np

from cnnframe.errors import MemoryLimitError

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype):
    """Normalise a dtype spec ('float32', np.float64, ...) and reject anything but float32/float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class AllocationBudget:
    """Bytes that layers may still allocate for parameters and buffers (see ``allocation_limit``)."""

    def __init__(self, limit, what):
        self.limit, self.used, self.what = int(limit), 0, what

    def charge(self, nbytes, owner, name, shape):
        if self.used + nbytes > self.limit:
            raise MemoryLimitError(
                f"{owner}: {name!r} of shape {tuple(shape)} needs {format_bytes(nbytes)}, which with the "
                f"{format_bytes(self.used)} allocated before it passes {self.what} ({format_bytes(self.limit)})")
        self.used += nbytes


_BUDGET = contextvars.ContextVar("cnnframe_allocation_budget", default=None)


@contextlib.contextmanager
def allocation_limit(nbytes, what="the memory limit"):
    """Within the block, parameters and buffers layers allocate may total at most ``nbytes``; past it
    ``add_parameter``/``add_buffer`` raise MemoryLimitError naming the layer, before allocating.
    Yields the budget (``.used`` bytes so far; ``.limit`` may be lowered inside the block)."""
    budget = AllocationBudget(nbytes, what)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def format_bytes(n):
    """1536 → '1.5 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _allocate(layer, name, data, dtype):
    """``data`` as a contiguous array of ``dtype``, after charging its size to the active budget."""
    budget = _BUDGET.get()
    if budget is not None:
        shape = np.shape(data)
        budget.charge(int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize, type(layer).__name__,
                      name, shape)
    return np.ascontiguousarray(data, dtype=dtype)


class Parameter:
    """A trainable array and its gradient (same shape and dtype).

    ``weight_decay`` says whether optimizers apply weight decay to it (False for biases and
    normalisation parameters by default).
    """

    __slots__ = ("data", "grad", "weight_decay")

    def __init__(self, data, weight_decay=True):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)
        self.weight_decay = bool(weight_decay)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class. Subclasses implement ``forward``/``backward`` and, if needed, ``build``,
    ``output_shape`` and ``get_config``; register with ``@cnnframe.register_layer("name")``.

    Contract:
    - ``forward(x)`` does not modify ``x`` and keeps only what ``backward`` needs;
    - ``backward(grad_out)`` returns dL/dx and *adds* into every ``Parameter.grad``;
    - ``parameters()`` is an ordered name → Parameter dict; ``buffers()`` the non-trainable arrays
      saved with the model (e.g. BatchNorm running statistics).
    """

    registered_name = None
    #: set to False on a first layer when dL/dx is not needed (training never uses it); ``backward`` may
    #: then return None.  ``Sequential.backward(g, input_grad=False)`` sets it around the call.
    need_input_grad = True

    def __init__(self, dtype="float32"):
        self.dtype = as_dtype(dtype)
        self.training = True
        self.built = False
        self.input_shape = None
        self._params = OrderedDict()
        self._buffers = OrderedDict()

    # -- construction --------------------------------------------------------------------------
    def build(self, input_shape):
        """Allocate parameters for a per-sample ``input_shape``. Layers without parameters keep this."""
        self.input_shape = tuple(int(s) for s in input_shape)
        self.built = True

    def output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape; pure (no allocation). Default: same."""
        return tuple(input_shape)

    def add_parameter(self, name, data, weight_decay=True):
        p = Parameter(_allocate(self, name, data, self.dtype), weight_decay=weight_decay)
        self._params[name] = p
        return p

    def add_buffer(self, name, data):
        self._buffers[name] = _allocate(self, name, data, self.dtype)
        return self._buffers[name]

    # -- computation ---------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")

    def backward(self, grad_out):
        raise NotImplementedError(f"{type(self).__name__} must implement backward(grad_out)")

    def __call__(self, x):
        return self.forward(x)

    def fuses(self, following):
        """How many of the layers that follow (a tuple) this layer can run in its own passes; ``Sequential``
        then calls ``forward_fused(x, absorbed)`` and ``backward_fused(grad_out, absorbed)`` instead of
        those layers' methods (see ``cnnframe/layers/fusion.py``).  Default: 0."""
        return 0

    def _ensure_built(self, x):
        """Build from the first batch when input sizes were omitted."""
        if not self.built:
            self.build(x.shape[1:])

    # -- state ---------------------------------------------------------------------------------
    def parameters(self):
        return self._params

    def buffers(self):
        return self._buffers

    def zero_grad(self):
        for p in self._params.values():
            p.zero_grad()

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def reseed(self, seed):
        """Reset any random state (e.g. Dropout's mask generator) from an int seed. Default: none."""

    def state_dict(self):
        """Parameters and buffers by name (views, not copies)."""
        state = OrderedDict((k, p.data) for k, p in self._params.items())
        state.update(self._buffers)
        return state

    def load_state_dict(self, state):
        for name, p in self._params.items():
            arr = _take(state, name, p.data.shape, type(self).__name__)
            p.data[...] = arr
        for name, buf in self._buffers.items():
            buf[...] = _take(state, name, buf.shape, type(self).__name__)

    def get_config(self):
        """The plain dict that rebuilds this layer: ``{"type": name, **hyper_parameters}``.

        ``name`` is the class's registered name, or ``"module:QualName"`` for a class that is not registered
        itself (a subclass does not inherit its parent's name); loading resolves that only from a module the
        user names as a plugin (``cnnframe.plugins``).
        """
        return {"type": type_name(type(self)), "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config):
        kwargs = {k: v for k, v in config.items() if k != "type"}
        return cls(**kwargs)

    def num_parameters(self):
        return int(sum(p.data.size for p in self._params.values()))

    def __repr__(self):
        cfg = {k: v for k, v in self.get_config().items() if k not in ("type",)}
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        return f"{type(self).__name__}({args})"


def type_name(cls):
    """The ``type`` that rebuilds instances of ``cls``: its registered name, else ``"module:QualName"``."""
    return cls.__dict__.get("registered_name") or f"{cls.__module__}:{cls.__qualname__}"


def _take(state, name, shape, owner):
    if name not in state:
        raise KeyError(f"{owner}: state has no entry {name!r}")
    arr = np.asarray(state[name])
    if arr.shape != tuple(shape):
        raise ValueError(f"{owner}: {name!r} has shape {arr.shape}, expected {tuple(shape)}")
    return arr
