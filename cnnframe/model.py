"""``Sequential``: a chain of layers with shape inference, a summary, seeding and one-file checkpoints.

A checkpoint is one ``.npz`` (written atomically, read with ``allow_pickle=False``) holding
``param/<i>.<name>`` and ``buffer/<i>.<name>`` arrays, the caller's ``extra/<key>`` arrays, and three
strings stored as 0-d unicode arrays: ``__format__`` (``CHECKPOINT_FORMAT``), and the JSON of
``__config__`` (``Sequential.get_config()``) and ``__meta__`` (the caller's dict).
``load_checkpoint`` rebuilds the model from the config alone.
"""
import json
import numbers
import os
import zipfile
from collections import OrderedDict

import numpy as np

from cnnframe.io import atomic_save_npz
from cnnframe.layers.fusion import fusion_plan

__all__ = ["Sequential", "load_checkpoint", "load", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "cnnframe-checkpoint/1"
_FORMAT_KEY, _CONFIG_KEY, _META_KEY = "__format__", "__config__", "__meta__"
_PARAM, _BUFFER, _EXTRA = "param/", "buffer/", "extra/"

# Seeds handed to layer i are derived from (purpose, seed, i) so that initialisation and random
# masks never share a stream and adding a layer does not change the seeds of the others.
_INIT, _RESEED = 0, 1


def _derived_seed(seed, index, purpose):
    return int(np.random.SeedSequence([purpose, seed, index]).generate_state(1, np.uint64)[0])


def _check_seed(seed, owner):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"{owner}: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _message(e):
    """An exception's message without the quotes KeyError adds."""
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)


def _reraise_at(e, prefix):
    """Re-raise ``e`` (same type when possible) with ``prefix`` prepended to its message."""
    try:
        new = type(e)(f"{prefix}: {_message(e)}")
    except Exception:
        raise e from None
    new.__dict__.update(getattr(e, "__dict__", {}))
    raise new from e


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} is not JSON-serializable")


def _fmt_shape(shape):
    return "?" if shape is None else "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


class Sequential:
    """Layers applied in order: ``y = layer_{n-1}(... layer_0(x))``; backward runs them in reverse.

    ``input_shape`` is per sample (e.g. ``(1, 8, 8)``); when given the model is built at once, so
    every layer has its parameters and ``shapes`` lists each layer's per-sample output shape.
    ``seed`` (optional) calls ``initialize(seed)`` and ``reseed(seed)``.
    Parameters and buffers are named ``"<layer index>.<name>"``, e.g. ``"0.weight"``.
    """

    def __init__(self, layers, input_shape=None, *, seed=None):
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not all(callable(getattr(layer, m, None)) for m in ("forward", "backward", "output_shape")):
                raise TypeError(f"Sequential: layers[{i}] is not a layer (got {type(layer).__name__})")
        self.layers = layers
        self.input_shape = None
        self.shapes = None
        self.training = True
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
            try:
                out = tuple(int(s) for s in layer.output_shape(shape))
                if build and not getattr(layer, "built", True):
                    layer.build(shape)
            except Exception as e:
                e.layer_index = i
                _reraise_at(e, f"layer {i} ({type(layer).__name__}) with input shape {_fmt_shape(shape)}")
            shapes.append(out)
            shape = out
        return shapes

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
            x = layers[i].forward_fused(x, tuple(layers[i + 1:i + 1 + k])) if k else layers[i].forward(x)
        return x

    __call__ = forward

    def backward(self, grad_out, input_grad=True):
        """Run every layer's backward in reverse order; returns dL/dx (N, *input_shape).

        ``input_grad=False`` lets a first layer that supports it (``need_input_grad``) skip computing
        dL/dx, which training never uses; the return value is then None.
        """
        first = self.layers[0] if self.layers else None
        skip = not input_grad and first is not None and hasattr(first, "need_input_grad")
        if skip:
            old = first.need_input_grad
            first.need_input_grad = False
        try:
            g = grad_out
            layers, after = self.layers, len(self.layers)
            plan = self._plan if sum(1 + k for _, k in self._plan) == len(layers) else fusion_plan(layers)
            for i, k in reversed(plan):
                if g is None:
                    raise RuntimeError(
                        f"Sequential: layer {after} ({type(layers[after]).__name__}) returned no input "
                        "gradient, but earlier layers need one (need_input_grad=False only suits the first layer)"
                    )
                g = layers[i].backward_fused(g, tuple(layers[i + 1:i + 1 + k])) if k else layers[i].backward(g)
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
        seed = _check_seed(seed, "Sequential.initialize")
        for i, layer in enumerate(self.layers):
            reset = getattr(layer, "reset_parameters", None)
            if callable(reset):
                reset(np.random.default_rng(_derived_seed(seed, i, _INIT)))
        return self

    def reseed(self, seed):
        """Reset every layer's random state (e.g. Dropout masks), giving layer i its own seed derived from (seed, i)."""
        seed = _check_seed(seed, "Sequential.reseed")
        for i, layer in enumerate(self.layers):
            layer.reseed(_derived_seed(seed, i, _RESEED))
        return self

    def num_parameters(self):
        return int(sum(p.data.size for p in self.parameters().values()))

    # -- description ---------------------------------------------------------------------------
    def summary(self):
        """A table of each layer's index, type, per-sample output shape and parameter count, with totals."""
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
    def from_config(cls, config):
        """Build from ``get_config()`` output: each layer dict's ``"type"`` is looked up in ``cnnframe.LAYERS``
        (a registered name or ``"package.module:ClassName"``)."""
        import cnnframe.layers  # noqa: F401  (registers the built-in layers)
        from cnnframe.registry import LAYERS

        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("Sequential.from_config: config must be a dict with a 'layers' list")
        extra = set(config) - {"input_shape", "layers"}
        if extra:
            raise ValueError(f"Sequential.from_config: unknown keys {sorted(extra)} (expected 'input_shape', 'layers')")
        layers = []
        for i, lc in enumerate(config["layers"]):
            where = f"Sequential.from_config: layers[{i}]"
            if not isinstance(lc, dict) or "type" not in lc:
                raise ValueError(f"{where}: each layer config must be a dict with a 'type' key, got {lc!r}")
            try:
                layer_cls = LAYERS.get(lc["type"])
            except KeyError as e:
                raise KeyError(f"{where}: {_message(e)}") from None
            try:
                make = getattr(layer_cls, "from_config", None)
                if callable(make):
                    layers.append(make(dict(lc)))
                else:
                    layers.append(layer_cls(**{k: v for k, v in lc.items() if k != "type"}))
            except Exception as e:
                e.layer_index = i
                _reraise_at(e, where)
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

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self, path, arrays=None, meta=None):
        """Write the model (config, parameters, buffers), ``arrays`` (name → array, e.g. optimizer state)
        and ``meta`` (a JSON-serialisable dict) to one ``.npz`` at ``path``, atomically."""
        if self.input_shape is None:
            raise RuntimeError("Sequential.save: the model is not built; give input_shape or call build() first")
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise TypeError(f"Sequential.save: meta must be a dict, got {type(meta).__name__}")
        entries = OrderedDict()
        entries[_FORMAT_KEY] = np.array(CHECKPOINT_FORMAT)
        entries[_CONFIG_KEY] = np.array(self._config_json())
        try:
            entries[_META_KEY] = np.array(json.dumps(meta, default=_json_default))
        except (TypeError, ValueError) as e:
            raise TypeError(f"Sequential.save: meta is not JSON-serialisable: {e}") from None
        for name, p in self.parameters().items():
            entries[_PARAM + name] = p.data
        for name, b in self.buffers().items():
            entries[_BUFFER + name] = b
        for key, value in (arrays or {}).items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"Sequential.save: array names must be non-empty strings, got {key!r}")
            entries[_EXTRA + key] = value
        atomic_save_npz(path, entries)

    def _config_json(self):
        cfg = self.get_config()
        try:
            return json.dumps(cfg, default=_json_default)
        except (TypeError, ValueError):
            for i, lc in enumerate(cfg["layers"]):
                try:
                    json.dumps(lc, default=_json_default)
                except (TypeError, ValueError) as e:
                    raise TypeError(
                        f"Sequential.save: layer {i} ({type(self.layers[i]).__name__}) get_config() is not "
                        f"JSON-serialisable: {e}"
                    ) from None
            raise

    @classmethod
    def load(cls, path):
        """The model stored in checkpoint ``path`` (see ``load_checkpoint``)."""
        return load_checkpoint(path)[0]


def _read_npz(path):
    """All entries of the npz at ``path`` as a dict, or a clear error."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a file")
    try:
        obj = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a cnnframe checkpoint: cannot read it as an .npz file ({e})") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is not a cnnframe checkpoint: it holds a single array, not an .npz archive")
    try:
        with obj:
            return {k: obj[k] for k in obj.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a cnnframe checkpoint: a stored array is unreadable ({e})") from None


def _str_entry(data, key, path):
    try:
        arr = data[key]
    except KeyError:
        raise ValueError(f"{path!r} is not a cnnframe checkpoint: it has no {key!r} entry") from None
    if arr.shape != () or arr.dtype.kind != "U":
        raise ValueError(f"{path!r}: entry {key!r} must be a string, got a {arr.dtype} array of shape {arr.shape}")
    return str(arr)


def _json_entry(data, key, path):
    try:
        return json.loads(_str_entry(data, key, path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r}: entry {key!r} is not valid JSON ({e})") from None


def load_checkpoint(path):
    """Load a checkpoint written by ``Sequential.save`` → ``(model, arrays, meta)``.

    The model is rebuilt from the stored config (custom layer types must be registered or named as
    ``"package.module:ClassName"``) and gets the stored parameters and buffers bit for bit; it is in
    training mode (call ``.eval()`` for inference).  ``arrays`` are the caller's arrays, ``meta`` the dict.
    """
    path = os.fspath(path)
    data = _read_npz(path)
    fmt = _str_entry(data, _FORMAT_KEY, path)
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path!r}: unsupported checkpoint format {fmt!r} (this cnnframe reads {CHECKPOINT_FORMAT!r})")
    config = _json_entry(data, _CONFIG_KEY, path)
    meta = _json_entry(data, _META_KEY, path) if _META_KEY in data else {}
    try:
        model = Sequential.from_config(config)
        if not model.built:
            raise ValueError("the stored config has no input_shape")
        state = {}
        for key, arr in data.items():
            if key.startswith(_PARAM):
                state[key[len(_PARAM):]] = arr
            elif key.startswith(_BUFFER):
                state[key[len(_BUFFER):]] = arr
        model.load_state_dict(state)
    except Exception as e:
        raise ValueError(f"checkpoint {path!r}: {_message(e)}") from e
    arrays = {key[len(_EXTRA):]: arr for key, arr in data.items() if key.startswith(_EXTRA)}
    return model, arrays, meta


def load(path):
    """The model stored in checkpoint ``path`` (``load_checkpoint(path)[0]``)."""
    return load_checkpoint(path)[0]
