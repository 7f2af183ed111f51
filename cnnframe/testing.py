"""The standard test battery for any layer, built-in or your own.

    from cnnframe.testing import check_layer_contract
    check_layer_contract(lambda dtype: Swish(dtype=dtype), input_shape=(3, 8, 8))

``layer_factory(dtype)`` must return a *fresh* layer of that dtype ("float32" or "float64");
``input_shape`` is per sample (no batch axis).  Every check raises ``AssertionError`` naming the
layer and what went wrong.  The checks (names usable in ``skip``):

- ``registered``: the layer's type name (``type_name``: its registered name, or ``module:QualName``
  for a class that is not registered) resolves back to its class, as a checkpoint load would with the
  class's module named as a plugin;
- ``output_shape``: ``output_shape(input_shape)`` equals the shape forward returns, and the output
  dtype is the layer's;
- ``input_unchanged``: forward and backward do not modify their arguments;
- ``accumulate``: a second forward/backward adds into ``.grad`` (grads double), ``zero_grad`` clears;
- ``gradcheck``: float64 central differences for the input and every parameter (cnnframe.gradcheck), at
  the layer's initial parameters and again at randomised ones (each value scaled by U(0.5, 1.5) and
  shifted by N(0, 0.1²)), so a gradient that is right only while a parameter is 1, 0 or equal on every
  channel fails;
- ``dtypes``: float32 and float64 layers with the same parameters agree (forward, input and
  parameter gradients) to float32 precision;
- ``batch1``: in eval mode, a batch of one gives the same output as that sample inside a batch, and
  backward works with N = 1;
- ``noncontiguous``: a strided input view gives the same output and gradients as a contiguous copy;
- ``config``: ``get_config()`` is JSON-serialisable, carries the type name, rebuilds an equivalent
  layer with ``from_config`` and is reproduced by the rebuilt layer;
- ``state``: ``state_dict()`` saved to an .npz and loaded (``allow_pickle=False``) into a layer
  rebuilt from the config gives identical outputs.

Before every forward the layer is ``reseed``-ed, so Dropout-like layers give repeatable outputs.
"""
import json
import os
import tempfile

import numpy as np

from cnnframe.gradcheck import check_layer, kink_free_input
from cnnframe.layers.base import Layer, type_name
from cnnframe.plugins import Plugins
from cnnframe.registry import LAYERS

__all__ = ["check_layer_contract", "CHECKS"]

CHECKS = (
    "registered",
    "output_shape",
    "input_unchanged",
    "accumulate",
    "gradcheck",
    "dtypes",
    "batch1",
    "noncontiguous",
    "config",
    "state",
)


def check_layer_contract(
    layer_factory,
    input_shape,
    batch_size=3,
    seed=0,
    skip=(),
    gradcheck_kwargs=None,
    rtol32=1e-4,
    atol32=1e-5,
):
    """Run the battery on ``layer_factory`` with per-sample ``input_shape``; raise AssertionError on failure.

    ``skip``: names from ``CHECKS`` to leave out.  ``gradcheck_kwargs`` go to ``check_layer`` (e.g.
    ``tol``, ``max_checks``).  ``rtol32``/``atol32``: float32 vs float64 agreement, required as
    |a32 − a64| <= atol32 + rtol32·max|a64| for each compared array.  Returns the gradient-check report (or None if skipped).
    """
    unknown = set(skip) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}")
    input_shape = tuple(int(s) for s in input_shape)
    battery = _Battery(layer_factory, input_shape, batch_size, seed)
    report = None
    for name in CHECKS:
        if name in skip:
            continue
        if name == "gradcheck":
            report = battery.gradcheck(gradcheck_kwargs or {})
        elif name == "dtypes":
            battery.dtypes(rtol32, atol32)
        else:
            getattr(battery, name)()
    return report


class _Battery:
    def __init__(self, factory, input_shape, batch_size, seed):
        self.factory = factory
        self.input_shape = input_shape
        self.batch_size = batch_size
        self.seed = seed
        self.x = kink_free_input((batch_size,) + input_shape, seed)
        probe = self.make("float64")
        self.name = type(probe).__name__

    # -- helpers ---------------------------------------------------------------------------
    def make(self, dtype):
        layer = self.factory(dtype)
        if not isinstance(layer, Layer):
            raise AssertionError(f"layer_factory({dtype!r}) returned {type(layer).__name__}, not a cnnframe Layer")
        if layer.dtype != np.dtype(dtype):
            raise AssertionError(
                f"{type(layer).__name__}: layer_factory({dtype!r}) made a layer of dtype {layer.dtype}"
            )
        return layer

    def fail(self, check, msg):
        raise AssertionError(f"{self.name} [{check}]: {msg}")

    def forward(self, layer, x):
        layer.reseed(self.seed)
        return layer.forward(x)

    def upstream(self, y, salt=1):
        return np.random.default_rng(self.seed + salt).standard_normal(y.shape)

    def run(self, layer, x, g=None):
        """Forward then backward; returns copies of (y, dx, {name: grad})."""
        y = np.array(self.forward(layer, x), copy=True)
        if g is None:
            g = self.upstream(y).astype(layer.dtype)
        dx = layer.backward(g)
        dx = None if dx is None else np.array(dx, copy=True)
        return y, dx, {n: p.grad.copy() for n, p in layer.parameters().items()}

    def built_pair(self):
        """A float64 layer and a float32 layer holding the same (rounded) parameters and buffers."""
        l64 = self.make("float64")
        self.forward(l64, self.x)  # builds it
        l64.zero_grad()
        l32 = self.make("float32")
        self.forward(l32, self.x.astype(np.float32))
        l32.zero_grad()
        state = {k: np.asarray(v, dtype=np.float32) for k, v in l64.state_dict().items()}
        l32.load_state_dict(state)
        l64.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
        return l64, l32

    def close(self, check, what, a, b, rtol, atol):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            self.fail(check, f"{what}: shapes differ, {a.shape} vs {b.shape}")
        allowed = atol + rtol * float(np.max(np.abs(b), initial=0.0))
        err = float(np.max(np.abs(a - b), initial=0.0))
        if not err <= allowed:  # also catches NaN
            idx = np.unravel_index(int(np.argmax(np.abs(a - b))), a.shape)
            self.fail(
                check,
                f"{what} differ by up to {err:.3e} at {list(map(int, idx))} ({float(a[idx])!r} vs {float(b[idx])!r}; "
                f"allowed {allowed:.3e})",
            )

    # -- the checks ------------------------------------------------------------------------
    def resolve(self, check, name, cls):
        """The class ``name`` resolves to, with ``cls``'s module named as a plugin (as a load would)."""
        try:
            return Plugins.for_classes([cls]).resolve(LAYERS, name, Layer)
        except (KeyError, TypeError) as e:
            hint = ("register it with @cnnframe.register_layer('name') or define it at module level"
                    if "<locals>" in name else "register it with @cnnframe.register_layer('name')")
            self.fail(check, f"its type {name!r} does not resolve to the class ({e.args[0] if e.args else e}); "
                             f"the class is not registered and a saved model could not be reloaded: {hint}")

    def registered(self):
        cls = type(self.make("float64"))
        name = type_name(cls)
        found = self.resolve("registered", name, cls)
        if found is not cls:
            self.fail("registered", f"type {name!r} resolves to {found}, not {cls}")

    def output_shape(self):
        for dtype in ("float64", "float32"):
            layer = self.make(dtype)
            declared = tuple(layer.output_shape(self.input_shape))
            y = self.forward(layer, self.x.astype(dtype))
            if not isinstance(y, np.ndarray):
                self.fail("output_shape", f"forward returned {type(y).__name__}, not a numpy array")
            if y.shape != (self.batch_size,) + declared:
                self.fail(
                    "output_shape",
                    f"output_shape({self.input_shape}) declares {declared} per sample but forward on "
                    f"{self.x.shape} returned {y.shape}",
                )
            if y.dtype != layer.dtype:
                self.fail("output_shape", f"a {dtype} layer returned a {y.dtype} output")
            dx = layer.backward(self.upstream(y).astype(dtype))
            if dx is None or dx.shape != self.x.shape or dx.dtype != layer.dtype:
                got = None if dx is None else (dx.shape, str(dx.dtype))
                self.fail("output_shape", f"backward returned {got}, expected {(self.x.shape, dtype)}")
            for n, p in layer.parameters().items():
                if p.grad.shape != p.data.shape or p.grad.dtype != layer.dtype or p.data.dtype != layer.dtype:
                    self.fail(
                        "output_shape",
                        f"parameter {n!r}: data {p.data.shape} {p.data.dtype}, grad {p.grad.shape} {p.grad.dtype} "
                        f"(both should have the data's shape and the layer's dtype {layer.dtype})",
                    )

    def gradcheck(self, kwargs):
        kwargs = {"seed": self.seed, "batch_size": self.batch_size, **kwargs}
        report = check_layer(self.make("float64"), self.input_shape, **kwargs)
        if not report.passed:
            self.fail("gradcheck", "\n" + str(report))
        moved = check_layer(self.randomised("float64"), self.input_shape, **kwargs)
        if not moved.passed:
            self.fail("gradcheck", "at randomised parameter values (right at the initial values only: is a parameter "
                                   "that starts at 1, 0 or equal on every channel left out of a gradient?)\n"
                      + str(moved))
        return report

    def randomised(self, dtype):
        """A built layer whose parameters are moved off their initial values: w·U(0.5, 1.5) + N(0, 0.1²)."""
        layer = self.make(dtype)
        self.forward(layer, self.x.astype(dtype))  # builds it
        layer.zero_grad()
        rng = np.random.default_rng(self.seed + 2)
        for p in layer.parameters().values():
            p.data[...] = p.data * rng.uniform(0.5, 1.5, p.data.shape) + rng.normal(0.0, 0.1, p.data.shape)
        return layer

    def dtypes(self, rtol, atol):
        l64, l32 = self.built_pair()
        g = self.upstream(self.forward(l64, self.x))
        y64, dx64, gr64 = self.run(l64, self.x, g)
        y32, dx32, gr32 = self.run(l32, self.x.astype(np.float32), g.astype(np.float32))
        self.close("dtypes", "float32 and float64 outputs", y32, y64, rtol, atol)
        self.close("dtypes", "float32 and float64 input gradients", dx32, dx64, rtol, atol)
        for n in gr64:
            self.close("dtypes", f"float32 and float64 gradients of {n!r}", gr32[n], gr64[n], rtol, atol)

    def batch1(self):
        layer = self.make("float64")
        self.forward(layer, self.x)  # train-mode pass so stateful layers have non-trivial state
        layer.eval()
        y_all = np.array(self.forward(layer, self.x), copy=True)
        for i in (0, self.batch_size - 1):
            y_i, dx_i, grads = self.run(layer, self.x[i : i + 1])
            if y_i.shape != (1,) + y_all.shape[1:]:
                self.fail("batch1", f"a batch of one gave output shape {y_i.shape}, expected {(1,) + y_all.shape[1:]}")
            what = f"eval-mode outputs of sample {i} alone and inside the batch"
            self.close("batch1", what, y_i, y_all[i : i + 1], 1e-12, 1e-12)
            if dx_i is None or dx_i.shape != (1,) + self.input_shape:
                self.fail("batch1", f"backward with N=1 returned {None if dx_i is None else dx_i.shape}")

    def noncontiguous(self):
        layer = self.make("float64")
        g = self.upstream(self.forward(layer, self.x))
        # Every other element of a wider buffer along the last axis: same values, strided memory.
        wide = np.zeros(self.x.shape[:-1] + (2 * self.x.shape[-1],))
        wide[..., ::2] = self.x
        x_nc = wide[..., ::2]
        g_wide = np.zeros(g.shape[:-1] + (2 * g.shape[-1],))
        g_wide[..., ::2] = g
        layer.zero_grad()
        ref = self.run(layer, self.x, g)
        layer.zero_grad()
        got = self.run(layer, x_nc, g_wide[..., ::2])
        self.close("noncontiguous", "outputs for strided and contiguous inputs", got[0], ref[0], 1e-12, 1e-12)
        self.close("noncontiguous", "input gradients for strided and contiguous inputs", got[1], ref[1], 1e-12, 1e-12)
        for n in ref[2]:
            self.close("noncontiguous", f"gradients of {n!r}", got[2][n], ref[2][n], 1e-12, 1e-12)

    def _rebuild(self, check, layer):
        cfg = layer.get_config()
        try:
            text = json.dumps(cfg)
        except TypeError as e:
            self.fail(check, f"get_config() is not JSON-serialisable ({e}): {cfg!r}")
        cfg = json.loads(text)
        expected = type_name(type(layer))
        if cfg.get("type") != expected:
            self.fail(check, f"get_config()['type'] is {cfg.get('type')!r}, expected {expected!r}")
        cls = self.resolve(check, expected, type(layer))
        try:
            new = cls.from_config(cfg)
        except Exception as e:
            self.fail(check, f"from_config({cfg!r}) raised {type(e).__name__}: {e}")
        return cfg, new

    def config(self):
        layer = self.make("float64")
        self.forward(layer, self.x)
        cfg, new = self._rebuild("config", layer)
        if type(new) is not type(layer):
            self.fail("config", f"from_config built a {type(new).__name__}")
        again = json.loads(json.dumps(new.get_config()))
        if again != cfg:
            self.fail("config", f"config does not round-trip: {cfg!r} -> {again!r}")
        a, b = tuple(layer.output_shape(self.input_shape)), tuple(new.output_shape(self.input_shape))
        if a != b:
            self.fail(
                "config",
                f"the layer rebuilt from {cfg!r} declares output shape {b}, the original {a}; "
                f"does get_config() return every hyper-parameter?",
            )
        self.forward(new, self.x)
        a = {n: p.data.shape for n, p in layer.parameters().items()}
        b = {n: p.data.shape for n, p in new.parameters().items()}
        if a != b:
            self.fail("config", f"the rebuilt layer has parameters {b}, the original {a}")

    def state(self):
        layer = self.make("float64")
        self.run(layer, self.x)  # a training step's worth of state (e.g. running statistics)
        state = layer.state_dict()
        _, new = self._rebuild("state", layer)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "state.npz")
            np.savez(path, **state)
            with np.load(path, allow_pickle=False) as data:
                loaded = {k: data[k] for k in data.files}
        if set(loaded) != set(state):
            self.fail("state", f"state_dict keys changed on save: {sorted(state)} -> {sorted(loaded)}")
        if not new.built:
            new.build(self.input_shape)
        if set(new.state_dict()) != set(state):
            self.fail("state", f"rebuilt layer has state keys {sorted(new.state_dict())}, expected {sorted(state)}")
        new.load_state_dict(loaded)
        for k, v in new.state_dict().items():
            if not np.array_equal(v, state[k]):
                self.fail("state", f"{k!r} differs after load_state_dict")
        for mode in ("eval", "train"):
            getattr(layer, mode)()
            getattr(new, mode)()
            a = self.forward(layer, self.x)
            b = self.forward(new, self.x)
            if not np.array_equal(a, b):
                self.fail(
                    "state",
                    f"{mode}-mode outputs differ after a save/load round trip (rebuilt from "
                    f"{new.get_config()!r}); does get_config() return every hyper-parameter, and "
                    f"state_dict() every array forward uses?",
                )

    def input_unchanged(self):
        layer = self.make("float64")
        x = self.x.copy()
        y = self.forward(layer, x)
        g = self.upstream(y)
        g_copy = g.copy()
        if not np.array_equal(x, self.x):
            self.fail("input_unchanged", "forward modified its input")
        layer.backward(g)
        if not np.array_equal(x, self.x):
            self.fail("input_unchanged", "backward modified the forward input")
        if not np.array_equal(g, g_copy):
            self.fail("input_unchanged", "backward modified grad_out")

    def accumulate(self):
        layer = self.make("float64")
        self.forward(layer, self.x)
        layer.zero_grad()
        _, dx1, g1 = self.run(layer, self.x)
        _, dx2, g2 = self.run(layer, self.x)
        self.close("accumulate", "input gradients of two identical passes", dx2, dx1, 1e-12, 1e-12)
        for n in g1:
            what = f"{n!r}.grad after two forward/backward passes and twice that of one pass"
            self.close("accumulate", what, g2[n], 2 * g1[n], 1e-12, 1e-12)
        layer.zero_grad()
        for n, p in layer.parameters().items():
            if np.any(p.grad != 0):
                self.fail("accumulate", f"zero_grad() left {n!r}.grad non-zero")
