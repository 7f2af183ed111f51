"""``Sequential``: a chain of layers with shape inference, a summary, seeding, a forward/backward
self-check and one-file checkpoints (the file format is ``cnnframe/checkpoint.py``).

``load_checkpoint(path, plugins=[...])`` rebuilds a model from a checkpoint's stored config alone.
The stored layer types resolve from the registry and the plugins named for the load, never from
modules the file asks for (see ``cnnframe/plugins.py``).
"""
from collections import OrderedDict

import numpy as np

from cnnframe import checkpoint
from cnnframe.checks import check_int
from cnnframe.data import Preprocessing, check_class_names, store_inputs, stored_class_names
from cnnframe.errors import CheckpointError
from cnnframe.export import export_onnx
from cnnframe.io import atomic_write, json_text
from cnnframe.layers.base import allocation_limit
from cnnframe.layers.blocks import check_distinct
from cnnframe.layers.fusion import backward_step, forward_step, fusion_plan, plan_for
from cnnframe.layers.spec import at, build_layer
from cnnframe.locate import code_location, where
from cnnframe.plugins import Plugins
from cnnframe.seeds import derive_seed

__all__ = ["Sequential", "load_checkpoint", "load"]

# Purposes of the seeds handed to layer i (seeds.derive_seed): initial weights and random masks never
# share a stream.
_INIT, _RESEED = 0, 1


def _fmt_shape(shape):
    return "?" if shape is None else "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _located(e, index, shape, reason):
    """Tag an exception about layer ``index`` at per-sample input ``shape`` (the config reports it by key)."""
    e.layer_index, e.layer_input_shape, e.reason = index, shape, reason
    return e


class Sequential:
    """Layers applied in order: ``y = layer_{n-1}(... layer_0(x))``; backward runs them in reverse.

    ``input_shape`` is per sample (e.g. ``(1, 8, 8)``); when given the model is built at once, so
    every layer has its parameters and ``shapes`` lists each layer's per-sample output shape.
    ``seed`` (optional) calls ``initialize(seed)`` and ``reseed(seed)``.
    Parameters and buffers are named ``"<layer index>.<name>"``, e.g. ``"0.weight"``.

    ``preprocessing`` (a ``cnnframe.data.Preprocessing``, or None: not known) says what raw inputs go through
    before ``forward``, and ``class_names`` names the outputs; the trainer sets both from its data, ``save``
    stores them and ``load_checkpoint`` restores them, so ``predict`` and ONNX export know what the model expects.
    """

    def __init__(self, layers, input_shape=None, *, seed=None):
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not all(callable(getattr(layer, m, None)) for m in ("forward", "backward", "output_shape")):
                raise TypeError(f"Sequential: layers[{i}] is not a layer (got {type(layer).__name__})")
        check_distinct([(f"layers[{i}]", layer) for i, layer in enumerate(layers)], "Sequential")
        self.layers = layers
        self.input_shape = None
        self.shapes = None
        self.training = True
        self.preprocessing = None
        self.class_names = None
        self._plan = []  # how the last forward grouped the layers: [(i, number of layers i ran with it)]
        if seed is not None:
            self.initialize(seed)
            self.reseed(seed)
        if input_shape is not None:
            self.build(input_shape)

    # -- shapes --------------------------------------------------------------------------------
    def _walk(self, input_shape, build):
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise TypeError(f"Sequential: input_shape must be a sequence of ints, got {input_shape!r}") from None
        shapes = []
        for i, layer in enumerate(self.layers):
            where_ = f"layer {i} ({type(layer).__name__}) with input shape {_fmt_shape(shape)}"
            try:
                out = layer.output_shape(shape)
                if build and not layer.built:
                    layer.build(shape)
            except Exception as e:
                reason = (f"{e}{code_location(e, user_only=True)}" if isinstance(e, (TypeError, ValueError))
                          else f"{type(e).__name__}: {e}{code_location(e)}")
                at(_located(e, i, shape, reason), where_, key_prefix=f"layers[{i}]")
            try:
                out = tuple(int(s) for s in out)
                ok = len(out) >= 1 and all(s >= 1 for s in out)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise _located(TypeError(f"{where_}: output_shape returned {out!r}; expected a tuple of positive "
                                         f"ints ({where(type(layer))})"), i, shape, None)
            shapes.append(out)
            shape = out
        return shapes

    def output_shapes(self, input_shape):
        """Every layer's per-sample output shape for a per-sample input shape (pure: nothing is built).

        A layer that rejects its input raises (same type) with ``"layer i (Type) with input shape ..."``
        in front of its message and ``layer_index`` set; a layer whose ``output_shape`` returns something
        other than a tuple of positive ints raises TypeError."""
        return self._walk(input_shape, build=False)

    def output_shape(self, input_shape):
        """Per-sample output shape for a per-sample input shape (pure: nothing is built).

        A layer that rejects its input raises (same type) with ``"layer i (Type) with input shape ..."``
        in front of its message and the index in the exception's ``layer_index`` attribute."""
        shapes = self._walk(input_shape, build=False)
        return shapes[-1] if shapes else tuple(int(s) for s in input_shape)

    def build(self, input_shape):
        """Infer every layer's input size from the per-sample ``input_shape`` and allocate parameters."""
        self.shapes = self._walk(input_shape, build=True)
        self.input_shape = tuple(int(s) for s in input_shape)
        return self

    @property
    def num_outputs(self):
        """Values per sample the model gives (the classes of a classifier); the model must be built."""
        return int(np.prod(self.shapes[-1] if self.layers else self.input_shape))

    @property
    def built(self):
        return self.input_shape is not None

    # -- computation ---------------------------------------------------------------------------
    def forward(self, x):
        """x: (N, *input_shape) → (N, *output_shape). Builds from the first batch if needed."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Sequential: input must be a numpy array, got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError("Sequential: input must have a batch axis first, got a 0-d array")
        if self.input_shape is None:
            self.build(x.shape[1:])
        elif x.shape[1:] != self.input_shape:
            raise ValueError(
                f"Sequential: expected input of shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}"
            )
        layers = self.layers
        self._plan = fusion_plan(layers)
        for i, k in self._plan:
            # k > 0: e.g. BatchNorm then ReLU (then max pooling), one pass for all of them
            x = forward_step(layers, i, k, x)
        return x

    __call__ = forward

    def backward(self, grad_out, input_grad=True):
        """Run every layer's backward in reverse order; returns dL/dx (N, *input_shape).

        ``input_grad=False`` sets the first layer's ``need_input_grad`` to False for the call, so a
        layer that supports it skips dL/dx, which training never uses; the return value is then None.
        """
        first = self.layers[0] if self.layers else None
        skip = not input_grad and first is not None
        if skip:
            old = first.need_input_grad
            first.need_input_grad = False
        try:
            g = grad_out
            layers, after = self.layers, len(self.layers)
            plan = plan_for(layers, self._plan)
            for i, k in reversed(plan):
                if g is None:
                    raise RuntimeError(
                        f"Sequential: layer {after} ({type(layers[after]).__name__}) returned no input "
                        "gradient, but earlier layers need one (need_input_grad=False only suits the first layer)"
                    )
                g = backward_step(layers, i, k, g)
                after = i
        finally:
            if skip:
                first.need_input_grad = old
        return None if skip else g

    # -- parameters and state ------------------------------------------------------------------
    def parameters(self):
        """OrderedDict ``"<i>.<name>"`` → Parameter, in layer order."""
        return OrderedDict(
            (f"{i}.{name}", p) for i, layer in enumerate(self.layers) for name, p in layer.parameters().items()
        )

    def buffers(self):
        """OrderedDict ``"<i>.<name>"`` → array of the non-trainable state (e.g. BatchNorm running statistics)."""
        return OrderedDict(
            (f"{i}.{name}", b) for i, layer in enumerate(self.layers) for name, b in layer.buffers().items()
        )

    def state_dict(self):
        """Parameters and buffers by ``"<i>.<name>"`` (views, not copies)."""
        return OrderedDict(
            (f"{i}.{name}", a) for i, layer in enumerate(self.layers) for name, a in layer.state_dict().items()
        )

    def load_state_dict(self, state):
        """Copy ``state`` (as from ``state_dict``) into the model; every entry must be present with the right shape."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if unexpected:
                parts.append(f"unexpected {unexpected}")
            raise KeyError("Sequential.load_state_dict: state does not match the model: " + "; ".join(parts))
        for key, arr in own.items():
            src = np.asarray(state[key])
            if src.shape != arr.shape:
                i = int(key.split(".", 1)[0])
                raise ValueError(
                    f"Sequential.load_state_dict: {key!r} (layer {i}, {type(self.layers[i]).__name__}) has shape "
                    f"{src.shape}, expected {arr.shape}"
                )
        for i, layer in enumerate(self.layers):
            prefix = f"{i}."
            layer.load_state_dict(
                OrderedDict((k[len(prefix):], state[k]) for k in own if k.startswith(prefix))
            )

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def initialize(self, seed):
        """Re-draw every layer's parameters with ``reset_parameters(rng)``, layer i using a numpy Generator
        seeded from (seed, i): the same seed gives the same weights. Layers without that method are left as is."""
        seed = check_int("seed", seed, "Sequential.initialize", ge=0)
        for i, layer in enumerate(self.layers):
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset(np.random.default_rng(derive_seed(_INIT, seed, i)))
        return self

    def reseed(self, seed):
        """Reset every layer's random state (e.g. Dropout masks), giving layer i its own seed derived from (seed, i)."""
        seed = check_int("seed", seed, "Sequential.reseed", ge=0)
        for i, layer in enumerate(self.layers):
            layer.reseed(derive_seed(_RESEED, seed, i))
        return self

    def num_parameters(self):
        return int(sum(p.data.size for p in self.parameters().values()))

    # -- description ---------------------------------------------------------------------------
    def summary(self):
        """A table of each layer's index, type, per-sample output shape and parameter count, with totals.
        A block's children follow its row, indented and labelled by path (``layers.0: Conv2D``)."""
        if self.input_shape is not None:
            shapes = self.shapes
        else:
            shapes = [None] * len(self.layers)
        rows = [("#", "Layer", "Output shape", "Params")]
        if self.input_shape is not None:
            rows.append(("", "input", _fmt_shape(self.input_shape), ""))
        for i, (layer, shape) in enumerate(zip(self.layers, shapes)):
            built = getattr(layer, "built", True) or bool(layer.parameters())
            count = sum(p.data.size for p in layer.parameters().values())
            rows.append((str(i), type(layer).__name__, _fmt_shape(shape), f"{count:,}" if built else "?"))
            # a block's children, indented under it: "layers.0: Conv2D" (their parameters count in the block's row)
            nested = getattr(layer, "summary_rows", None)
            if callable(nested):
                given = None if self.input_shape is None else (shapes[i - 1] if i else self.input_shape)
                for depth, label, kind, out, n in nested(given):
                    count = "?" if n is None else f"{n:,}"
                    rows.append(("", "  " * depth + f"{label}: {kind}", _fmt_shape(out), count))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        align = ("{:>%d}", "{:<%d}", "{:<%d}", "{:>%d}")
        fmt = "  ".join(a % w for a, w in zip(align, widths))
        lines = [fmt.format(*rows[0]), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*r).rstrip() for r in rows[1:]]
        params = self.parameters().values()
        total = sum(p.data.size for p in params)
        decayed = sum(p.data.size for p in params if getattr(p, "weight_decay", True))
        nbytes = sum(p.data.nbytes for p in params) + sum(b.nbytes for b in self.buffers().values())
        n_buf = sum(b.size for b in self.buffers().values())
        lines.append("  ".join("-" * w for w in widths))
        lines.append(f"Total parameters: {total:,} ({decayed:,} with weight decay)")
        lines.append(f"Buffers: {n_buf:,} values; parameters + buffers: {nbytes / 1024:.1f} KiB")
        if self.input_shape is None:
            lines.append("(not built: give input_shape or call build() to see shapes and all parameter counts)")
        return "\n".join(lines)

    def get_config(self):
        """``{"input_shape": [...] or None, "layers": [layer.get_config(), ...]}`` (plain, JSON-ready)."""
        return {
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "layers": [layer.get_config() for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config, plugins=()):
        """Build from ``get_config()`` output.  Each layer's ``"type"`` is a registered name, or a
        ``"package.module:ClassName"`` from a module in ``plugins`` (files or module names, imported
        here; nothing else is imported: see ``cnnframe/plugins.py``)."""
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("Sequential.from_config: config must be a dict with a 'layers' list")
        extra = set(config) - {"input_shape", "layers"}
        if extra:
            raise ValueError(f"Sequential.from_config: unknown keys {sorted(extra)} (expected 'input_shape', 'layers')")
        plugins = Plugins.of(plugins)
        layers = []
        for i, spec in enumerate(config["layers"]):
            try:
                layers.append(build_layer(spec, plugins))
            except Exception as e:
                e.layer_index = i
                at(e, f"Sequential.from_config: layers[{i}]", key_prefix=f"layers[{i}]")
        return cls(layers, input_shape=config.get("input_shape"))

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(input_shape={self.input_shape}){inner}"

    # -- self-check ------------------------------------------------------------------------------
    def check(self, input_shape=None, dtype=None):
        """Run two zero samples forward and backward through each layer (eval mode; gradients cleared
        after): a layer whose ``forward`` disagrees with its ``output_shape``, whose ``backward`` returns
        the wrong shape, or that fails to run raises ValueError naming it (``layer_index`` set).
        Builds the model for ``input_shape`` if needed."""
        if input_shape is not None and not self.built:
            self.build(input_shape)
        if not self.built:
            raise RuntimeError("Sequential.check: the model is not built; give input_shape")
        dtype = dtype or getattr(self.layers[0], "dtype", np.float32)
        was = self.training
        self.eval()
        x = np.zeros((2,) + self.input_shape, dtype=dtype)
        shape = self.input_shape
        try:
            for i, layer in enumerate(self.layers):
                name, declared = type(layer).__name__, tuple(self.shapes[i])
                try:
                    y = layer.forward(x)
                    g = layer.backward(np.ones_like(y))
                except Exception as e:
                    reason = f"{type(e).__name__}: {e}{code_location(e)}"
                    raise _located(ValueError(f"layer {i} ({name}) failed on a batch of shape {x.shape}: {reason}"),
                                   i, shape, reason) from e
                if tuple(y.shape[1:]) != declared:
                    raise _located(ValueError(f"layer {i} ({name}): output_shape({shape}) declares {declared} but "
                                              f"forward() returned samples of shape {tuple(y.shape[1:])} "
                                              f"({where(type(layer))})"), i, shape, None)
                if g is not None and tuple(np.shape(g)) != tuple(x.shape):
                    raise _located(ValueError(f"layer {i} ({name}): backward() returned a gradient of shape "
                                              f"{np.shape(g)} for an input of shape {x.shape} "
                                              f"({where(type(layer))})"), i, shape, None)
                x, shape = y, declared
        finally:
            self.zero_grad()
            self.train(was)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path, arrays=None, meta=None, *, preprocessing=None, class_names=None):
        """Write the model (config, parameters, buffers), ``arrays`` (name → array, e.g. optimizer state)
        and ``meta`` (a JSON-serialisable dict) to one ``.npz`` at ``path``, atomically.

        ``preprocessing`` (a ``Preprocessing`` or its dict; default ``self.preprocessing``) and ``class_names``
        (default ``self.class_names``) are recorded in ``meta["data"]`` (``cnnframe.data.store_inputs``); a model
        saved without preprocessing is fed inputs as they are, and ``predict`` says so."""
        atomic_write(path, self.checkpoint_writer(arrays, meta, preprocessing=preprocessing, class_names=class_names))

    def checkpoint_writer(self, arrays=None, meta=None, *, preprocessing=None, class_names=None, state=None):
        """What ``save`` writes, as a function ``write(f)`` filling a binary file (a run directory stages
        several files and commits them together).  Everything is checked here; the function writes the
        arrays the model holds when it is called, or those of ``state`` (as ``state_dict`` names them, e.g. a
        weight average) in their place."""
        if self.input_shape is None:
            raise RuntimeError("Sequential.save: the model is not built; give input_shape or call build() first")
        pre = self.preprocessing if preprocessing is None else Preprocessing.of(preprocessing)
        names = self.class_names if class_names is None else class_names
        if names is not None:
            names = check_class_names(names, self.num_outputs)
        meta = store_inputs(meta, pre, names)
        config = self.get_config()
        for i, lc in enumerate(config["layers"]):
            try:
                json_text(lc)
            except (TypeError, ValueError) as e:
                raise TypeError(f"Sequential.save: layer {i} ({type(self.layers[i]).__name__}) get_config() is not "
                                f"JSON-serialisable: {e}") from None
        params = {k: p.data for k, p in self.parameters().items()}
        buffers = self.buffers()
        if state is not None:
            params, buffers = ({k: state[k] for k in part} for part in (params, buffers))
        return checkpoint.writer(config, params, buffers, arrays=arrays, meta=meta)

    @classmethod
    def load(cls, path, plugins=()):
        """The model stored in checkpoint ``path`` (see ``load_checkpoint``)."""
        return load_checkpoint(path, plugins)[0]

    def to_onnx(self, path, **options):
        """Export to ONNX at ``path``; returns the ModelProto (``cnnframe.export.export_onnx`` lists the options)."""
        return export_onnx(self, path, **options)


def load_checkpoint(path, plugins=()):
    """Load a checkpoint written by ``Sequential.save`` → ``(model, arrays, meta)``.

    The model is rebuilt from the stored config and gets the stored parameters and buffers bit for
    bit, and the preprocessing and class names the checkpoint records (``model.preprocessing``,
    ``model.class_names``: None when not recorded); it is in training mode (call ``.eval()`` for inference).  Layer types resolve from the
    registry and from ``plugins`` (the ``.py`` files and modules that define your layers, imported
    here): a checkpoint never makes cnnframe import a module you did not name.  Building may
    allocate no more than the stored arrays need (with some slack), so a crafted config cannot
    exhaust memory.  ``arrays`` are the caller's arrays, ``meta`` the dict.
    """
    ckpt = checkpoint.read(path)
    plugins = Plugins.of(plugins)
    run_config = ckpt.meta.get("config")
    if not plugins.recorded and isinstance(run_config, dict) and isinstance(run_config.get("plugins"), list):
        plugins.recorded = [str(p) for p in run_config["plugins"]]  # named in messages, never imported
    try:
        with allocation_limit(ckpt.build_budget, "what the checkpoint's arrays need"):
            model = Sequential.from_config(ckpt.config, plugins)
        if not model.built:
            raise ValueError("the stored config has no input_shape")
        model.load_state_dict(ckpt.state)
        model.preprocessing = Preprocessing.from_meta(ckpt.meta)
        model.class_names = stored_class_names(ckpt.meta, model.num_outputs)
    except Exception as e:  # a stored config that does not build, or state that does not fit, or bad preprocessing
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise CheckpointError(f"checkpoint {ckpt.path!r}: {message}") from e
    return model, ckpt.arrays, ckpt.meta


def load(path, plugins=()):
    """The model stored in checkpoint ``path`` (``load_checkpoint(path, plugins)[0]``)."""
    return load_checkpoint(path, plugins)[0]
