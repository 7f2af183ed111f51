"""Blocks: layers made of lists of layers, for skip connections (``Residual``) and parallel branches (``Concat``).

A block is a layer under the full contract; its children are ordinary layers (blocks included) held in
named lists, and everything a model does with a layer reaches every child:

- parameters, buffers and ``state_dict`` entries are named by path: ``layers.0.weight``,
  ``shortcut.1.running_mean``, ``branches.1.0.bias`` (in a model ``3.layers.0.weight``);
- ``train``/``eval``, ``zero_grad``, ``reset_parameters(rng)`` and ``reseed(seed)`` recurse; each child
  gets its own generator or seed derived from (the block's, the child's path), so adding a child never
  changes what the others draw;
- the block's dtype is every child's: children given as layers must have it, children given as
  config dicts are built with it, and ``get_config`` stores the children without a dtype of their own.

Children are given as layer instances or as config dicts ``{"type": registered_name, ...}``, both turned
into layers by ``build_children``.
"""
import numbers
from collections import OrderedDict

import numpy as np

from cnnframe.layers._util import check_grad, check_input, check_per_sample, make_rng
from cnnframe.layers.base import Layer, as_dtype
from cnnframe.layers.fusion import backward_step, forward_step, fusion_plan, plan_for
from cnnframe.layers.spec import build_layer, join_key, prefixed
from cnnframe.registry import LAYERS, register_layer
from cnnframe.seeds import seed_for_path

__all__ = ["Residual", "Concat", "build_children", "check_distinct"]


def build_children(specs, dtype, where="layers"):
    """The layers of one child list: each item a ``Layer`` (kept, and it must have ``dtype``) or a config
    dict ``{"type": registered_name, **hyper_parameters}`` without a dtype (built with ``dtype``).

    ``where`` names the list in messages (``"Residual: layers"``); its last part is the list's key in the
    block's config, which a child's error carries (``key``: ``"layers[1].kernel_size"``) so a config reports
    ``model.layers[3].layers[1].kernel_size``.  Types resolve by registered name only: a block rebuilt from a
    checkpoint imports nothing the user did not name.
    """
    if isinstance(specs, (Layer, dict, str)) or not isinstance(specs, (list, tuple)):
        raise TypeError(f"{where} must be a list of layers or layer configs, got {type(specs).__name__}")
    layers = []
    for i, spec in enumerate(specs):
        at, key = f"{where}[{i}]", f"{where.rpartition(': ')[2]}[{i}]"
        layer = _layer_from_spec(spec, dtype, at, key) if isinstance(spec, dict) else spec
        if not isinstance(layer, Layer):
            raise TypeError(f"{at} must be a cnnframe Layer or a config dict with a 'type', got {type(layer).__name__}")
        if not type(layer).__dict__.get("registered_name"):
            raise ValueError(
                f"{at}: {type(layer).__name__} is not a registered layer; a block stores its children by "
                f"registered name, so register the class with @cnnframe.register_layer('name')"
            )
        if layer.dtype != dtype:
            raise ValueError(
                f"{at} ({type(layer).__name__}) has dtype {layer.dtype} but the block's dtype is {dtype}; "
                f"give every child the block's dtype"
            )
        layers.append(layer)
    return layers


def check_distinct(named, owner):
    """ValueError when one layer object appears twice among ``named`` ((path, layer) pairs), its blocks' children
    included at any depth: a layer keeps what its backward needs from its last forward, so a second use would
    overwrite it (wrong gradients), and the optimizer would update its parameters twice per step."""
    seen = {}

    def visit(path, layer):
        if id(layer) in seen:
            raise ValueError(f"{owner}: {path} is the same layer object as {seen[id(layer)]}; each use needs its own "
                             f"layer (a layer keeps what its backward needs from its last forward): make another, "
                             f"e.g. {type(layer).__name__}(...) with the same arguments")
        seen[id(layer)] = path
        children = getattr(layer, "named_children", None)
        for child_path, child in (children() if callable(children) else ()):
            visit(f"{path}.{child_path}", child)

    for path, layer in named:
        visit(path, layer)


def _spec_error(message, key):
    e = ValueError(message)
    e.key = key
    return e


def _layer_from_spec(spec, dtype, at, key):
    name = spec.get("type")
    if not isinstance(name, str) or not name:
        raise _spec_error(f"{at}: a layer config needs a 'type' naming a registered layer, got {spec!r}", key)
    if ":" in name:
        raise _spec_error(
            f"{at}: type {name!r}: a layer inside a block must be given by its registered name, not as "
            f"'module:Class' (register the class with @cnnframe.register_layer and use that name)", f"{key}.type")
    if "dtype" in spec:
        raise _spec_error(f"{at}: a child takes its block's dtype; set the dtype on the block (or the model), "
                          f"not per child", f"{key}.dtype")
    try:
        return build_layer(spec, dtype=dtype.name)  # resolved like the block itself (spec.py)
    except KeyError as e:
        raise _spec_error(f"{at}: {e.args[0]}", join_key(key, getattr(e, "key", None))) from None
    except (TypeError, ValueError) as e:
        raise prefixed(e, f"{at} ({name})", key) from None


def _infer_dtype(dtype, child_lists):
    """The block's dtype: ``dtype`` if given, else that of the first child given as a layer, else float32."""
    if dtype is not None:
        return as_dtype(dtype)
    for children in child_lists:
        for c in children if isinstance(children, (list, tuple)) else ():
            if isinstance(c, Layer):
                return c.dtype
    return as_dtype("float32")


def _fmt(shape):
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class Block(Layer):
    """What Residual and Concat share: child lists, their shapes, and state/mode/seed plumbing.

    Subclasses set ``self._paths``: an ordered list of (name, list of layers), and may set
    ``self._extra`` (name → a single child layer, e.g. the activation).
    """

    def __init__(self, dtype):
        super().__init__(dtype)
        self.need_input_grad = True
        self._paths = []
        self._extra = OrderedDict()
        self._y_shape = None
        self._plans = {}  # path name → fusion plan of its last forward

    # -- children ------------------------------------------------------------------------------
    def named_children(self):
        """(path, layer) for every direct child, in order: ``("layers.0", conv)``, ..., ``("activation", relu)``."""
        out = [(f"{name}.{i}", layer) for name, layers in self._paths for i, layer in enumerate(layers)]
        out += list(self._extra.items())
        return out

    def _check_unique(self):
        check_distinct(self.named_children(), type(self).__name__)

    def _walk(self, path_name, layers, shape, build):
        """Per-sample output shape of one child list for input ``shape``; builds unbuilt children if asked."""
        for i, layer in enumerate(layers):
            try:
                out = tuple(int(s) for s in layer.output_shape(shape))
                if build and not layer.built:
                    layer.build(shape)
            except (TypeError, ValueError, KeyError, RuntimeError) as e:
                new = prefixed(e, f"{type(self).__name__}: {path_name}[{i}] ({type(layer).__name__}) with input "
                                   f"shape {_fmt(shape)}")
                raise new from (None if new is e else e)
            shape = out
        return shape

    def build(self, input_shape):
        shape = tuple(int(s) for s in input_shape)
        self.output_shape(shape)  # every misfit is reported before anything is allocated
        self._shapes(shape, build=True)
        super().build(shape)

    def output_shape(self, input_shape):
        return self._shapes(tuple(int(s) for s in input_shape), build=False)

    def _shapes(self, input_shape, build):
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------
    def _gather(self, method):
        return OrderedDict((f"{path}.{name}", v) for path, child in self.named_children()
                           for name, v in getattr(child, method)().items())

    def parameters(self):
        """OrderedDict ``"<path>.<name>"`` → Parameter over every child, e.g. ``"layers.0.weight"``."""
        return self._gather("parameters")

    def buffers(self):
        return self._gather("buffers")

    def state_dict(self):
        return self._gather("state_dict")

    def load_state_dict(self, state):
        own = self.state_dict()
        unexpected = [k for k in state if k not in own]
        if unexpected:
            raise KeyError(f"{type(self).__name__}: state has entries the block does not have: {unexpected}")
        for path, child in self.named_children():
            prefix = path + "."
            try:
                child.load_state_dict(OrderedDict((k[len(prefix):], v) for k, v in state.items()
                                                  if k.startswith(prefix)))
            except (KeyError, ValueError) as e:
                raise prefixed(e, f"{type(self).__name__}: {path}") from e

    def num_parameters(self):
        return int(sum(p.data.size for p in self.parameters().values()))

    def zero_grad(self):
        for _, child in self.named_children():
            child.zero_grad()

    def train(self, mode=True):
        super().train(mode)
        for _, child in self.named_children():
            child.train(mode)
        return self

    def reset_parameters(self, rng=None):
        """Re-draw every child's parameters, the child at path p with a Generator seeded from (a draw of
        ``rng``, p); ``rng=None`` lets each child use its own generator."""
        base = None if rng is None else make_rng(rng, type(self).__name__).integers(2**63)
        for path, child in self.named_children():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset):
                reset(None if base is None else np.random.default_rng(seed_for_path(base, path)))

    def reseed(self, seed):
        """Reseed every child, the child at path p with a seed derived from (``seed``, p)."""
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(2**63))
        elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise TypeError(f"{type(self).__name__}: seed must be None, a non-negative int or a numpy Generator, "
                            f"got {seed!r}")
        for path, child in self.named_children():
            child.reseed(None if seed is None else seed_for_path(seed, path))

    # -- description ---------------------------------------------------------------------------
    def summary_rows(self, input_shape=None):
        """Rows ``(depth, label, type name, per-sample output shape or None, parameter count or None)`` for every
        child, depth-first (depth 1 for direct children); what ``Sequential.summary`` indents under the block.
        ``input_shape`` is the block's per-sample input shape (None: shapes unknown)."""
        rows = []
        groups = [(name, layers, input_shape) for name, layers in self._paths]
        for name, child in self._extra.items():
            groups.append((None, [(name, child)], self._extra_input(input_shape)))
        for name, layers, shape in groups:
            if not layers:
                rows.append((1, name, "identity", shape, 0))
                continue
            labelled = [(f"{name}.{i}", c) for i, c in enumerate(layers)] if name is not None else layers
            for label, layer in labelled:
                out = None if shape is None else tuple(layer.output_shape(shape))
                counted = layer.built or bool(layer.parameters())
                count = sum(p.data.size for p in layer.parameters().values()) if counted else None
                rows.append((1, label, type(layer).__name__, out, count))
                if isinstance(layer, Block):
                    rows += [(depth + 1, *rest) for depth, *rest in layer.summary_rows(shape)]
                shape = out
        return rows

    def _extra_input(self, input_shape):
        """Per-sample input shape of the extra children (None when unknown)."""
        return None

    def _list_config(self, layers):
        """The configs of one child list, without the dtype the block gives them."""
        return [{k: v for k, v in layer.get_config().items() if k != "dtype"} for layer in layers]

    def _list_repr(self, layers):
        return "[" + ", ".join(repr(c) for c in layers) + "]"

    # -- computation helpers -------------------------------------------------------------------
    def _forward_path(self, path_name, layers, x):
        """One child list's output.  Layers that can run as one pass (BatchNorm then ReLU, say) run fused,
        as in ``Sequential`` (``layers/fusion.py``); the plan is kept for the backward pass."""
        plan = self._plans[path_name] = fusion_plan(layers)
        for i, k in plan:
            x = forward_step(layers, i, k, x)
        return x

    def _backward_path(self, path_name, layers, g, need_input_grad):
        """dL/d(input) of one child list, children in reverse; with ``need_input_grad=False`` the first child
        is asked to skip its input gradient (if it can) and None is returned."""
        for i, k in reversed(plan_for(layers, self._plans.get(path_name))):
            layer = layers[i]
            if i == 0 and not need_input_grad:
                skip = hasattr(layer, "need_input_grad")
                old = layer.need_input_grad if skip else None
                if skip:
                    layer.need_input_grad = False
                try:
                    backward_step(layers, i, k, g)
                finally:
                    if skip:
                        layer.need_input_grad = old
                return None
            g = backward_step(layers, i, k, g)
            if g is None:
                raise RuntimeError(
                    f"{type(self).__name__}: {path_name}[{i}] ({type(layer).__name__}) returned no input gradient, "
                    "but the block needs one (is its need_input_grad set to False?)"
                )
        return g


@register_layer("residual")
class Residual(Block):
    """y = act(F(x) + S(x)): a body F (``layers``), a shortcut S (``shortcut``; the identity when None) and
    an optional activation on the sum; math.md eq. (6)–(8).

    x: (N, *s) → y: (N, *F.output_shape(s)); F(x) and S(x) must have the same shape (a ValueError names
    both).  Backward with G = dL/dy: G_z = act'(z)·G (the activation's backward), then the sum passes G_z
    unchanged to both paths, eq. (7), and the two input gradients add, eq. (8):
    dL/dx = F.backward(G_z) + S.backward(G_z)  (+ G_z itself for the identity shortcut).

    ``layers``, ``shortcut``: lists of layers or layer configs (``build_children``); ``activation``: a
    registered activation name such as ``"relu"``, or None.  ``dtype``: the block's and every child's
    (default: that of the first child given as a layer, else float32).
    """

    def __init__(self, layers, shortcut=None, activation=None, dtype=None):
        dtype = _infer_dtype(dtype, [layers, shortcut])
        super().__init__(dtype)
        self.layers = build_children(layers, self.dtype, "Residual: layers")
        if not self.layers:
            raise ValueError("Residual: layers (the body) must hold at least one layer")
        built = None if shortcut is None else build_children(shortcut, self.dtype, "Residual: shortcut")
        self.shortcut = built or None  # [] is the identity too
        self._paths = [("layers", self.layers), ("shortcut", self.shortcut or [])]
        self.activation = None if activation is None else self._make_activation(activation)
        if self.activation is not None:
            try:
                self._extra["activation"] = LAYERS.get(self.activation)(dtype=self.dtype.name)
            except (TypeError, ValueError) as e:
                raise ValueError(f"Residual: activation {self.activation!r} cannot be built from its name alone: "
                                 f"{e}") from None
        self._check_unique()

    @staticmethod
    def _make_activation(name):
        if not isinstance(name, str) or ":" in name or name not in LAYERS:
            hint = f"; {LAYERS.unknown_message(name)}" if isinstance(name, str) and ":" not in name else ""
            raise ValueError(f"Residual: activation must be a registered activation name such as 'relu', or None, "
                             f"got {name!r}{hint}")
        return LAYERS.get(name).registered_name

    def _shapes(self, input_shape, build):
        body = self._walk("layers", self.layers, input_shape, build)
        short = input_shape if self.shortcut is None else self._walk("shortcut", self.shortcut, input_shape, build)
        if body != short:
            what = "the identity shortcut passes the input" if self.shortcut is None else "the shortcut outputs"
            hint = (" (a change of shape needs a projection shortcut, e.g. a 1x1 conv2d with the body's "
                    "out_channels and stride)") if self.shortcut is None else ""
            raise ValueError(
                f"Residual: cannot add the body and the shortcut for input shape {_fmt(input_shape)}: the body "
                f"(layers) outputs {_fmt(body)} per sample but {what} {_fmt(short)}{hint}"
            )
        act = self._extra.get("activation")
        if act is not None:
            out = self._walk("activation", [act], body, build)
            if out != body:
                raise ValueError(f"Residual: activation {self.activation!r} changes the shape {_fmt(body)} "
                                 f"to {_fmt(out)}")
            if build and act.parameters():
                raise ValueError(f"Residual: activation {self.activation!r} has parameters; put it in layers instead")
        return body

    def _extra_input(self, input_shape):
        return None if input_shape is None else self._walk("layers", self.layers, input_shape, False)

    def forward(self, x):
        x = check_input(self, x, min_ndim=2, layout="(N, ...)")
        self._ensure_built(x)
        f = self._forward_path("layers", self.layers, x)
        s = x if self.shortcut is None else self._forward_path("shortcut", self.shortcut, x)
        if f.shape != s.shape:
            short = "the identity shortcut" if self.shortcut is None else "the shortcut"
            raise ValueError(f"Residual: the body (layers) returned {f.shape} but {short} {s.shape}; "
                             f"they must match to be added")
        y = f + s  # eq. (6); a new array, so neither path's output is written to
        act = self._extra.get("activation")
        if act is not None:
            y = act.forward(y)
        self._y_shape = y.shape
        return y

    def backward(self, grad_out):
        g = check_grad(self, grad_out, self._y_shape)
        act = self._extra.get("activation")
        gz = g if act is None else act.backward(g)
        need = self.need_input_grad
        # eq. (7): the sum hands G_z unchanged to both paths
        df = self._backward_path("layers", self.layers, gz, need)
        ds = gz if self.shortcut is None else self._backward_path("shortcut", self.shortcut, gz, need)
        if not need:
            return None
        return df + ds  # eq. (8): x fed both paths, so their gradients add (a new array: either may alias G)

    def get_config(self):
        return {
            **super().get_config(),
            "layers": self._list_config(self.layers),
            "shortcut": None if self.shortcut is None else self._list_config(self.shortcut),
            "activation": self.activation,
        }

    def __repr__(self):
        short = None if self.shortcut is None else self._list_repr(self.shortcut)
        return (f"Residual(layers={self._list_repr(self.layers)}, shortcut={short}, "
                f"activation={self.activation!r}, dtype={self.dtype.name!r})")


@register_layer("concat")
class Concat(Block):
    """y = [B_1(x), ..., B_k(x)] joined along channels; math.md eq. (9).

    x: (N, C, H, W) → y: (N, C_1 + ... + C_k, H', W'); every branch must output images (N, C_i, H', W')
    with the same H', W' (a ValueError names the branches and their shapes).  An empty branch is the
    identity (DenseNet-style: ``branches=[[], [...]]``).  Backward: G is split along channels into
    G_1, ..., G_k, and since x fed every branch the branches' input gradients add:
    dL/dx = Σ_i B_i.backward(G_i).

    ``branches``: a list of lists of layers or layer configs (``build_children``).  ``dtype`` as for Residual.
    """

    def __init__(self, branches, dtype=None):
        if isinstance(branches, (Layer, dict, str)) or not isinstance(branches, (list, tuple)) or not branches:
            raise TypeError(f"Concat: branches must be a non-empty list of lists of layers, got {branches!r}")
        dtype = _infer_dtype(dtype, branches)
        super().__init__(dtype)
        self.branches = [build_children(b, self.dtype, f"Concat: branches[{i}]") for i, b in enumerate(branches)]
        self._paths = [(f"branches.{i}", b) for i, b in enumerate(self.branches)]
        self._splits = None
        self._check_unique()

    def _shapes(self, input_shape, build):
        input_shape = check_per_sample(self, input_shape, 3, "(C, H, W)")
        outs = [self._walk(f"branches[{i}]", b, input_shape, build) for i, b in enumerate(self.branches)]
        for i, out in enumerate(outs):
            if len(out) != 3:
                raise ValueError(f"Concat: branches[{i}] outputs {_fmt(out)} per sample for input "
                                 f"{_fmt(input_shape)}, but a concat joins images (C, H, W) along channels")
        for i, out in enumerate(outs[1:], 1):
            if out[1:] != outs[0][1:]:
                raise ValueError(
                    f"Concat: branches[0] outputs {_fmt(outs[0])} but branches[{i}] outputs {_fmt(out)} per sample "
                    f"for input {_fmt(input_shape)}; branches must agree in height and width to be joined along "
                    f"channels"
                )
        return (sum(o[0] for o in outs),) + outs[0][1:]

    def forward(self, x):
        x = check_input(self, x, ndim=4, layout="(N, C, H, W)")
        self._ensure_built(x)
        outs = [self._forward_path(f"branches[{i}]", b, x) for i, b in enumerate(self.branches)]
        if any(o.shape[2:] != outs[0].shape[2:] for o in outs):
            raise ValueError(f"Concat: branch outputs {[o.shape for o in outs]} differ in height or width")
        bounds = np.cumsum([0] + [o.shape[1] for o in outs])
        self._splits = list(zip(bounds[:-1], bounds[1:]))
        y = np.concatenate(outs, axis=1)  # eq. (9)
        self._y_shape = y.shape
        return y

    def backward(self, grad_out):
        g = check_grad(self, grad_out, self._y_shape)
        need = self.need_input_grad
        dx, owned = None, False
        for i, (b, (lo, hi)) in enumerate(zip(self.branches, self._splits)):
            # eq. (9): branch i gets its channels of G; x fed every branch, so the input gradients add
            d = self._backward_path(f"branches[{i}]", b, g[:, lo:hi], need)
            if not need:
                continue
            if dx is None:
                dx = d
            elif owned:
                dx += d
            else:
                dx, owned = dx + d, True  # a new array: the first branch's gradient may alias G
        return np.ascontiguousarray(dx) if need else None

    def get_config(self):
        return {**super().get_config(), "branches": [self._list_config(b) for b in self.branches]}

    def __repr__(self):
        return f"Concat(branches=[{', '.join(map(self._list_repr, self.branches))}], dtype={self.dtype.name!r})"
