"""What every optimizer shares: the named parameter list, the learning rate, gradient clipping by
global norm, and a flat, npz-safe state dict (``name -> numpy array``; scalars as 0-d arrays).
"""
import math
from collections import OrderedDict

import numpy as np

from cnnframe import ops
from cnnframe.checks import check_number  # noqa: F401  (the shared argument checks; adam, sgd, schedules use it)

# PyTorch's clip_grad_norm_ adds this to the norm before dividing, so a norm exactly at the limit is
# scaled by a hair; we keep the same rule so clipped runs match it.
_CLIP_EPS = 1e-6


def named_parameters(params, owner):
    """Normalise ``params`` to an OrderedDict name -> Parameter.

    Accepts ``model.parameters()`` (an ordered mapping), an iterable of ``(name, Parameter)`` pairs, or
    an iterable of Parameters (named "0", "1", ...).
    """
    if hasattr(params, "items"):
        items = list(params.items())
    else:
        items = list(params)
        if items and not isinstance(items[0], tuple):
            items = [(str(i), p) for i, p in enumerate(items)]
    if not items:
        raise ValueError(f"{owner}: got an empty parameter list (build the model before creating the optimizer)")
    out = OrderedDict()
    seen = {}
    for name, p in items:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{owner}: parameter names must be non-empty strings, got {name!r}")
        if not (isinstance(getattr(p, "data", None), np.ndarray) and isinstance(getattr(p, "grad", None), np.ndarray)):
            raise TypeError(
                f"{owner}: {name!r} is not a Parameter (needs .data and .grad arrays), got {type(p).__name__}"
            )
        if p.data.dtype.kind != "f" or p.grad.shape != p.data.shape:
            raise ValueError(
                f"{owner}: parameter {name!r} must be a float array with a gradient of the same shape "
                f"(data {p.data.dtype}{p.data.shape}, grad {p.grad.dtype}{p.grad.shape})"
            )
        if name in out:
            raise ValueError(f"{owner}: duplicate parameter name {name!r}")
        if id(p) in seen:
            raise ValueError(f"{owner}: parameter {name!r} is the same object as {seen[id(p)]!r}")
        seen[id(p)] = name
        out[name] = p
    return out


class Optimizer:
    """Base class. Subclasses declare their per-parameter state arrays in ``slots()`` (each starts as
    a zeros_like of the parameter) and implement either ``_update(name, p, g)`` (g: the clipped
    gradient with the weight-decay term added, a fresh array) or, to do the whole update in one pass,
    ``_apply(name, p, scale, weight_decay)`` (the clipping factor and the parameter's decay rate).

    ``opt.lr`` may be reassigned at any time (the trainer sets it from the schedule every step).
    ``opt.step_count`` counts completed steps; ``opt.last_grad_norm`` is the global gradient norm seen
    by the last step (before clipping).
    """

    registered_name = None

    def slots(self):
        """Names of the per-parameter state arrays (``state[slot][param name]``); called once by
        ``__init__``, after the subclass has set its hyper-parameters."""
        return ()

    def __init__(self, params, lr, weight_decay=0.0, clip_norm=None):
        owner = type(self).__name__
        self.params = named_parameters(params, owner)
        self.lr = check_number("lr", lr, owner, gt=0)
        self.weight_decay = check_number("weight_decay", weight_decay, owner, ge=0)
        if clip_norm is not None:
            clip_norm = check_number("clip_norm", clip_norm, owner, gt=0)
        self.clip_norm = clip_norm
        self.step_count = 0
        self.last_grad_norm = None
        self.state = OrderedDict(
            (slot, OrderedDict((name, np.zeros_like(p.data)) for name, p in self.params.items()))
            for slot in self.slots()
        )

    # -- learning rate -----------------------------------------------------------------------------
    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        # 0 is allowed here (a warm-up may start from 0); the constructor insists on lr > 0.
        self._lr = check_number("lr", value, type(self).__name__, ge=0)

    # -- stepping ----------------------------------------------------------------------------------
    def zero_grad(self):
        for p in self.params.values():
            p.grad[...] = 0

    def grad_norm(self):
        """Global L2 norm of all gradients, ``sqrt(Σ_p Σ g²)``, accumulated in float64 in a fixed order."""
        return math.sqrt(sum(ops.sum_squares(p.grad) for p in self.params.values()))

    def _clip_scale(self):
        """Factor applied to every gradient: ``min(1, clip_norm / (norm + 1e-6))`` as in PyTorch."""
        norm = self.grad_norm()
        self.last_grad_norm = norm
        if self.clip_norm is None or not math.isfinite(norm):
            return 1.0
        coef = self.clip_norm / (norm + _CLIP_EPS)
        return coef if coef < 1.0 else 1.0

    def step(self):
        """Apply one update to every parameter from its ``.grad`` (gradients are left unchanged)."""
        scale = self._clip_scale()
        self.step_count += 1
        for name, p in self.params.items():
            self._apply(name, p, scale, self.weight_decay if p.weight_decay else 0.0)

    def _apply(self, name, p, scale, weight_decay):
        """Update one parameter: g = scale·grad + weight_decay·w (the L2 penalty as a gradient term,
        after clipping, in PyTorch's order), then ``_update(name, p, g)``."""
        f = p.grad.dtype.type
        g = p.grad * f(scale) if scale != 1.0 else p.grad.copy()
        if weight_decay:
            g += f(weight_decay) * p.data
        self._update(name, p, g)

    def _update(self, name, p, g):
        raise NotImplementedError(f"{type(self).__name__} must implement _update(name, p, g) or _apply(...)")

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self):
        """Flat dict: ``"step"`` (0-d int64), ``"lr"`` (0-d float64) and ``"<slot>/<param name>"`` arrays (copies)."""
        out = OrderedDict()
        out["step"] = np.array(self.step_count, dtype=np.int64)
        out["lr"] = np.array(self.lr, dtype=np.float64)
        for slot, arrays in self.state.items():
            for name, arr in arrays.items():
                out[f"{slot}/{name}"] = arr.copy()
        return out

    def load_state_dict(self, state):
        """Restore exactly what ``state_dict`` returned; raises naming any missing, extra or misshapen entry."""
        owner = type(self).__name__
        expected = {"step", "lr"} | {f"{slot}/{name}" for slot in self.state for name in self.params}
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if extra:
                parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
            raise KeyError(f"{owner}.load_state_dict: state does not match this optimizer: " + "; ".join(parts))
        step = np.asarray(state["step"])
        if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
            raise ValueError(f"{owner}.load_state_dict: 'step' must be a non-negative 0-d integer array, got {step!r}")
        new = OrderedDict()
        for slot, arrays in self.state.items():
            new[slot] = OrderedDict()
            for name, arr in arrays.items():
                src = np.asarray(state[f"{slot}/{name}"])
                if src.shape != arr.shape:
                    raise ValueError(
                        f"{owner}.load_state_dict: '{slot}/{name}' has shape {src.shape}, expected {arr.shape}"
                    )
                new[slot][name] = src
        self.lr = float(np.asarray(state["lr"]))
        self.step_count = int(step)
        for slot, arrays in new.items():
            for name, src in arrays.items():
                self.state[slot][name][...] = src

    # -- config ------------------------------------------------------------------------------------
    def get_config(self):
        return {"type": self.registered_name or type(self).__name__}

    @classmethod
    def from_config(cls, params, config):
        return cls(params, **{k: v for k, v in config.items() if k != "type"})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"
