"""Numerical gradient checking: compare a layer's (or model's) backward with central differences.

For a layer, the scalar checked is L = Σ y·G with a random upstream gradient G, so dL/dx is exactly
what ``backward(G)`` returns and dL/dθ what it adds into each ``Parameter.grad``.  Each checked
element e of the input or of a parameter gets the central difference (math.md, "How each piece is
checked")

    num = Σ (y(e + ε) − y(e − ε))·G / (2ε)

(the output difference is taken before summing, so outputs the element does not touch cancel
exactly), compared with the analytic value by the relative error

    rel = |num − ana| / max(1e-8, |num| + |ana|).

An element passes when rel <= ``tol`` or |num − ana| <= ``atol``: ``atol`` absorbs the rounding noise
of the finite difference itself (about 1e-16·|y|/ε per touched output), which would otherwise fail
correct gradients that happen to be close to zero.  That noise adds up over every output the element
moves, and in a layer that couples the whole batch (BatchNorm in training, a residual block around it)
that is every output; so an element that fails at ε is checked once more at 10ε, where rounding noise
is ten times smaller, and passes if it agrees there.  A wrong gradient is off by the same amount at any ε.

Everything runs in float64 on a *copy* of the layer (the layer you pass is not modified): a float64
layer is deep-copied; any other layer is rebuilt from ``get_config()`` with ``dtype="float64"`` and its
state cast, so layers of your own must accept ``dtype`` and round-trip through their config.
Before every forward the copy is ``reseed``-ed with ``seed``, so Dropout draws the same mask each time.
"""
import copy
import math
from collections import OrderedDict

import numpy as np

from cnnframe.plugins import Plugins

__all__ = ["check_layer", "check_model", "kink_free_input", "GradcheckReport", "GradcheckError"]

_F64 = np.dtype(np.float64)
_RETRY = 10.0  # an element failing at eps is checked again at _RETRY * eps (rounding noise, see _compare)


class GradcheckError(AssertionError):
    """Raised by ``check_layer``/``check_model`` with ``raise_on_failure=True`` when a gradient is wrong."""


class TensorResult:
    """The comparison for one tensor: how many elements were checked and the worst of them."""

    def __init__(self, name, shape, total):
        self.name = name
        self.shape = tuple(shape)
        self.total = int(total)
        self.checked = 0
        self.failures = 0
        self.max_rel = 0.0
        self.max_abs = 0.0
        # the element with the largest relative error: index, numerical, analytical
        self.worst_index = None
        self.worst_numerical = None
        self.worst_analytical = None
        self.worst_rel = -1.0

    @property
    def passed(self):
        return self.failures == 0

    def __repr__(self):
        return f"TensorResult({self.name!r}, max_rel={self.max_rel:.3g}, failures={self.failures})"


class GradcheckReport:
    """The outcome of a gradient check.

    ``passed``; ``worst_error`` (largest relative error among failing elements, or among all checked
    elements if none failed), ``worst_tensor`` and ``worst_index`` where it occurred, with
    ``worst_numerical``/``worst_analytical``; ``tensors``: name → TensorResult (per-tensor maxima).
    ``str(report)`` is a readable summary; ``bool(report)`` is ``passed``.
    """

    def __init__(self, subject, tensors, eps, tol, atol):
        self.subject = subject
        self.tensors = OrderedDict((t.name, t) for t in tensors)
        self.eps, self.tol, self.atol = eps, tol, atol
        self.passed = all(t.passed for t in tensors)
        pool = [t for t in tensors if t.failures] or [t for t in tensors if t.checked]
        worst = max(pool, key=lambda t: t.worst_rel, default=None)
        self.worst_tensor = worst.name if worst else None
        self.worst_index = worst.worst_index if worst else None
        self.worst_error = worst.worst_rel if worst else 0.0
        self.worst_numerical = worst.worst_numerical if worst else None
        self.worst_analytical = worst.worst_analytical if worst else None

    def __bool__(self):
        return self.passed

    def raise_if_failed(self):
        if not self.passed:
            raise GradcheckError(str(self))
        return self

    def __str__(self):
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"gradcheck {status} for {self.subject} (eps={self.eps:g}, tol={self.tol:g}, atol={self.atol:g})"]
        if self.worst_tensor is not None:
            lines.append(
                f"  worst relative error {self.worst_error:.3e} at {self.worst_tensor}{list(self.worst_index)}: "
                f"numerical {self.worst_numerical:.10g}, analytical {self.worst_analytical:.10g}"
            )
        width = max((len(n) for n in self.tensors), default=5)
        for t in self.tensors.values():
            mark = "ok" if t.passed else f"{t.failures} FAILED"
            lines.append(
                f"  {t.name:<{width}}  shape {str(t.shape):<16} checked {t.checked:>5}/{t.total:<6} "
                f"max rel {t.max_rel:.2e}  max abs {t.max_abs:.2e}  {mark}"
            )
        return "\n".join(lines)

    def __repr__(self):
        return f"<GradcheckReport {self.subject}: passed={self.passed}, worst_error={self.worst_error:.3g}>"


def kink_free_input(shape, seed=0):
    """A float64 array whose entries are all distinct with |x| in [0.1, 1] and random signs.

    The magnitudes are a shuffled grid, so no two entries are closer than 0.9/size (max-pool windows
    have a clear winner a tiny ε cannot change) and none is near 0 (ReLU's kink).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    size = math.prod(shape)
    mags = 0.1 + 0.9 * (rng.permutation(size) + 0.5) / size
    signs = rng.choice(np.array([-1.0, 1.0]), size=size)
    return (mags * signs).reshape(shape)


def _indices(size, max_checks, rng):
    if max_checks is None or size <= max_checks:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_checks, replace=False))


def _compare(name, arr, ana, evaluate, weights, eps, tol, atol, max_checks, rng):
    """Central differences w.r.t. elements of ``arr`` (perturbed in place, then restored).

    ``evaluate()`` returns the output array (a fresh copy); the scalar differentiated is Σ output·weights.
    """
    res = TensorResult(name, arr.shape, arr.size)
    if ana is None:
        raise GradcheckError(f"{name}: backward returned None instead of a gradient")
    ana = np.asarray(ana)
    if ana.shape != arr.shape:
        raise GradcheckError(f"{name}: analytical gradient has shape {ana.shape}, expected {arr.shape}")
    flat = arr.reshape(-1)
    if not np.shares_memory(flat, arr):
        raise TypeError(f"{name}: the array must be C-contiguous so it can be perturbed in place")
    ana_flat = ana.reshape(-1)

    def central(i, step):
        old = flat[i]
        hi, lo = old + step, old - step
        flat[i] = hi
        out_hi = evaluate()
        flat[i] = lo
        out_lo = evaluate()
        flat[i] = old
        return float(np.sum((out_hi - out_lo) * weights)) / float(hi - lo)

    def compare(num, a):
        err = abs(num - a)
        rel = err / max(1e-8, abs(num) + abs(a))
        return err, rel, rel > tol and err > atol

    for i in _indices(arr.size, max_checks, rng):
        a = float(ana_flat[i])
        num = central(i, eps)
        err, rel, failed = compare(num, a)
        if failed:
            # The rounding noise of a central difference grows as 1/ε, its truncation error as ε²; a wrong
            # gradient is off by the same amount at any ε.  Where every output moves with the element
            # (BatchNorm in training, deep blocks) the noise at ε can pass atol, so retry at 10ε.
            num = central(i, _RETRY * eps)
            err, rel, failed = compare(num, a)
        res.checked += 1
        res.max_rel = max(res.max_rel, rel)
        res.max_abs = max(res.max_abs, err)
        # The reported element is the worst failing one if any failed, else the worst overall.
        if failed and res.failures == 0:
            res.worst_rel = -1.0
        res.failures += failed
        if (failed or res.failures == 0) and rel > res.worst_rel:
            res.worst_rel = rel
            res.worst_index = tuple(int(v) for v in np.unravel_index(i, arr.shape))
            res.worst_numerical, res.worst_analytical = num, a
    return res


def _float64_layer(layer):
    if layer.dtype == _F64:
        return copy.deepcopy(layer)
    cfg = dict(layer.get_config())
    cfg["dtype"] = "float64"
    new = _rebuilt(layer, lambda: type(layer).from_config(cfg), "check_layer", type(layer).__name__,
                   "a layer built with dtype='float64'")
    new.train(layer.training)
    return new


def _rebuilt(obj, rebuild, owner, name, instead):
    """``rebuild()`` (``from_config`` with dtype float64), built like ``obj`` and holding its state in float64."""
    try:
        new = rebuild()
        if obj.built and not new.built:
            new.build(obj.input_shape)
        new.load_state_dict({k: np.asarray(v, dtype=_F64) for k, v in obj.state_dict().items()})
    except Exception as e:
        raise TypeError(f"{owner} works in float64: could not rebuild {name} with dtype='float64' from its "
                        f"get_config() ({type(e).__name__}: {e}); pass {instead} instead") from e
    return new


def _require_float64(owner, arrays):
    for name, a in arrays:
        if np.asarray(a).dtype != _F64:
            raise TypeError(
                f"{owner}: {name} is {np.asarray(a).dtype} after conversion to float64; the layer must honour "
                f"its dtype argument for a meaningful gradient check"
            )


def check_layer(
    layer,
    x_or_input_shape,
    eps=1e-6,
    tol=1e-6,
    atol=1e-8,
    seed=0,
    max_checks=200,
    batch_size=2,
    raise_on_failure=False,
):
    """Compare ``layer.backward`` with central differences, in float64, for the input and every parameter.

    ``x_or_input_shape``: an input batch (cast to float64; keep it away from kinks such as ReLU at 0
    and max-pool ties), or a per-sample shape (no batch axis, like ``build``) for which a batch of
    ``batch_size`` kink-free inputs is drawn (see ``kink_free_input``).
    Up to ``max_checks`` elements per tensor are checked (all of them when the tensor is smaller or
    ``max_checks`` is None; otherwise a sample seeded by ``seed``).  The layer's train/eval mode is
    kept; the upstream gradient G ~ N(0, 1) is drawn with ``seed`` too.
    Returns a ``GradcheckReport``; with ``raise_on_failure=True`` a failure raises ``GradcheckError``.
    """
    rng = np.random.default_rng(seed)
    work = _float64_layer(layer)
    work.need_input_grad = True  # the input gradient is part of the check
    if isinstance(x_or_input_shape, np.ndarray):
        x = np.array(x_or_input_shape, dtype=_F64, order="C", copy=True)
    else:
        shape = tuple(int(s) for s in x_or_input_shape)
        x = kink_free_input((batch_size,) + shape, rng)

    def run():
        work.reseed(seed)
        return work.forward(x)

    work.zero_grad()
    y = run()
    g = rng.standard_normal(np.shape(y))
    dx = work.backward(g.copy())
    params = work.parameters()
    _require_float64(type(layer).__name__, [("output", y)] + [(n, p.data) for n, p in params.items()])
    analytic = [("input", x, dx)] + [(n, p.data, p.grad.copy()) for n, p in params.items()]

    def evaluate():
        return np.array(run(), dtype=_F64, copy=True)

    results = [_compare(n, arr, ana, evaluate, g, eps, tol, atol, max_checks, rng) for n, arr, ana in analytic]
    report = GradcheckReport(type(layer).__name__, results, eps, tol, atol)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def _float64_model(model):
    arrays = list(model.state_dict().values())
    if all(np.asarray(a).dtype == _F64 for a in arrays):
        return copy.deepcopy(model)
    cfg = copy.deepcopy(model.get_config())
    for layer_cfg in cfg["layers"]:
        layer_cfg["dtype"] = "float64"
    # the model's own layer classes are already running: their modules may rebuild it
    plugins = Plugins.for_classes(type(layer) for layer in model.layers)
    new = _rebuilt(model, lambda: type(model).from_config(cfg, plugins), "check_model", "the model",
                   "a float64 model")
    for a, b in zip(model.layers, new.layers):
        b.train(a.training)
    return new


def check_model(
    model,
    loss,
    x,
    target,
    eps=1e-6,
    tol=1e-6,
    atol=1e-8,
    seed=0,
    max_checks=50,
    check_input=True,
    raise_on_failure=False,
):
    """Gradient check of a whole model through its loss: L = loss.forward(model.forward(x), target).

    The analytic gradients come from ``model.backward(loss.backward())``; every parameter (names from
    ``model.parameters()``) and, with ``check_input``, the input are compared with central differences
    of L in float64 (the model is copied and converted as in ``check_layer``; ``x`` is cast to float64).
    Up to ``max_checks`` elements per tensor, sampled with ``seed``; the model is ``reseed``-ed with
    ``seed`` before every forward.  An unbuilt model is built from ``x`` first.  ReLU/max-pool kinks
    inside the model are not avoided, but a central difference only crosses one with probability ~ε,
    so a seeded check is reliable in practice.
    """
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype=_F64, order="C", copy=True)
    if getattr(model, "built", True) is False and hasattr(model, "build"):
        model.build(x.shape[1:])  # what its first forward would do; the copy then gets the same weights
    work = _float64_model(model)

    def run():
        if hasattr(work, "reseed"):
            work.reseed(seed)
        return float(loss.forward(work.forward(x), target))

    work.zero_grad()
    run()
    dx = work.backward(loss.backward())
    params = work.parameters()
    _require_float64("check_model", [(n, p.data) for n, p in params.items()])
    analytic = [(n, p.data, p.grad.copy()) for n, p in params.items()]
    if check_input:
        analytic.insert(0, ("input", x, dx))

    def evaluate():
        return np.array(run())

    results = [_compare(n, arr, ana, evaluate, 1.0, eps, tol, atol, max_checks, rng) for n, arr, ana in analytic]
    report = GradcheckReport(f"{type(model).__name__} + {type(loss).__name__}", results, eps, tol, atol)
    if raise_on_failure:
        report.raise_if_failed()
    return report
