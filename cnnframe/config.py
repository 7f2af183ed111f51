"""YAML → validated, resolved config, checked completely before any data loads.

``load_config(path, overrides)`` reads the file, applies ``--set key.path=value`` overrides, imports the
``plugins``, then checks every section: unknown keys (with a did-you-mean), types, ranges, registered
names, layer hyper-parameters (by constructing each layer) and the shape of every layer's output (by
running ``output_shape`` down the chain from the data's input shape).  Every problem is one
``ConfigError`` naming the file, the line when known, and the key path (``model.layers[2].kernel_size``).

The resolved config is a plain dict with every default filled in; it is what a run saves and what
``--resume``/``evaluate`` rebuild from, so resolving it again gives the same dict.

Sections (see docs/configs.md for every key):

    plugins: [my_layers, ./extra.py]        # imported first (modules, or .py files relative to this file)
    data:      {dataset: digits, val_fraction: 0.1, test_size: 0.2, augment: {shift: 1}, ...}
    model:     {input_shape: null, layers: [{type: conv2d, out_channels: 16, kernel_size: 3}, ...]}
    loss:      {type: softmax_cross_entropy, label_smoothing: 0.1}
    optimizer: {type: sgd, lr: 0.1, momentum: 0.9, ...}
    schedule:  {type: onecycle, ...}        # base lr = optimizer.lr, length = trainer.epochs
    trainer:   {epochs, batch_size, seed, threads, dtype, early_stopping, checkpoint, run_dir, name, ...}
"""
import copy
import difflib
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
import traceback
import zlib

import yaml

from cnnframe.errors import ConfigError


# -- YAML -----------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` as a float (YAML 1.1 would make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text, file=None):
    """Parse YAML text → (data, lines) where ``lines`` maps key paths to 1-based line numbers."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"malformed YAML: {what}", file=file, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML: {e}", file=file) from None
    lines = {}
    if node is not None:
        _walk_lines(node, "", lines, file)
    return data, lines


def _walk_lines(node, path, lines, file):
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for knode, vnode in node.value:
            key = str(knode.value)
            p = f"{path}.{key}" if path else key
            if key in seen:
                raise ConfigError(f"duplicate key {key!r}", file=file, key=p, line=knode.start_mark.line + 1)
            seen.add(key)
            lines[p] = knode.start_mark.line + 1
            _walk_lines(vnode, p, lines, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, vnode in enumerate(node.value):
            p = f"{path}[{i}]"
            lines[p] = vnode.start_mark.line + 1
            _walk_lines(vnode, p, lines, file)


# -- key paths and --set overrides ----------------------------------------------------------------
_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[-?\d+\])*)")


def split_key_path(path):
    """``"model.layers[1].out_channels"`` → ``["model", "layers", 1, "out_channels"]``."""
    if not isinstance(path, str) or not path:
        raise ValueError("empty key path")
    parts = []
    for piece in path.split("."):
        m = _TOKEN.fullmatch(piece)
        if not m:
            raise ValueError(f"bad key path {path!r} (near {piece!r}); expected e.g. model.layers[1].out_channels")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(-?\d+)\]", m.group(2)))
    return parts


def join_key_path(parts):
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def apply_override(data, assignment):
    """Apply one ``key.path=value`` (value parsed as YAML) to the raw config dict, in place.

    Returns the normalised key path.  Missing mappings on the way are created; list indices must exist.
    """
    src = f"--set {assignment}"
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError("expected KEY=VALUE, e.g. --set trainer.epochs=5", file=src)
    path, _, text = assignment.partition("=")
    path = path.strip()
    try:
        parts = split_key_path(path)
    except ValueError as e:
        raise ConfigError(str(e), file=src) from None
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value {text!r} as YAML: {e}", file=src, key=path) from None
    node = data
    for i, part in enumerate(parts[:-1]):
        here = join_key_path(parts[: i + 1])
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ConfigError(f"{join_key_path(parts[:i]) or 'config'} is not a list", file=src, key=here)
            if not -len(node) <= part < len(node):
                raise ConfigError(f"index {part} out of range: the list has {len(node)} items", file=src, key=here)
            parts[i] = part % len(node)  # so errors about model.layers[-1] are traced back to this --set
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{join_key_path(parts[:i]) or 'config'} is not a mapping", file=src, key=here)
            if node.get(part) is None:
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list):
            raise ConfigError(f"{join_key_path(parts[:-1])} is not a list", file=src, key=path)
        if not -len(node) <= last < len(node):
            raise ConfigError(f"index {last} out of range: the list has {len(node)} items", file=src, key=path)
        parts[-1] = last % len(node)
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise ConfigError(f"{join_key_path(parts[:-1]) or 'config'} is not a mapping", file=src, key=path)
        node[last] = value
    return join_key_path(parts)


# -- the fixed part of the schema -----------------------------------------------------------------
class Field:
    """One fixed config key: accepted types, default, range or choices."""

    def __init__(self, kind, default, lo=None, hi=None, lo_open=False, hi_open=False, choices=None,
                 nullable=False, doc=""):
        self.kind, self.default = kind, default
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.choices, self.nullable, self.doc = choices, nullable, doc

    def check(self, value, key):
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"must be {self.describe()}, got null", key=key)
        kind = self.kind
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ConfigError(f"must be {self.describe()}, got {_show(value)}", key=key)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"must be {self.describe()}, got {_show(value)}", key=key)
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"must be a finite number, got {value}", key=key)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"must be true or false, got {_show(value)}", key=key)
        elif kind is str:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"must be {self.describe()}, got {_show(value)}", key=key)
        if self.choices is not None and value not in self.choices:
            hint = _did_you_mean(str(value), [str(c) for c in self.choices])
            raise ConfigError(f"must be one of {', '.join(map(str, self.choices))}, got {_show(value)}{hint}", key=key)
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise ConfigError(f"must be {self.describe()}, got {value}", key=key)
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise ConfigError(f"must be {self.describe()}, got {value}", key=key)
        return value

    def describe(self):
        name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[self.kind]
        rng = []
        if self.lo is not None:
            rng.append(f"{'>' if self.lo_open else '>='} {self.lo}")
        if self.hi is not None:
            rng.append(f"{'<' if self.hi_open else '<='} {self.hi}")
        text = name + (" " + " and ".join(rng) if rng else "")
        return text + (" or null" if self.nullable else "")


MONITORS = ("val_loss", "val_acc", "train_loss", "train_acc")

DATA_FIELDS = {
    "dataset": Field(str, "digits", doc="registered dataset name (digits, npz, or a plugin's)"),
    "seed": Field(int, None, lo=0, nullable=True, doc="split seed; null = trainer.seed"),
    "test_size": Field(float, 0.2, lo=0.0, hi=0.9, lo_open=True, doc="fraction held out for the test"),
    "val_fraction": Field(float, 0.1, lo=0.0, hi=0.9, doc="fraction of the training part used for validation"),
}
AUGMENT_FIELDS = {
    "shift": Field(int, 0, lo=0, doc="random shift of up to ±shift pixels per sample, zero fill"),
}
TRAINER_FIELDS = {
    "epochs": Field(int, 10, lo=1),
    "batch_size": Field(int, 64, lo=1),
    "seed": Field(int, 0, lo=0),
    "threads": Field(int, None, lo=1, nullable=True, doc="OpenMP threads; null = CNNFRAME_NUM_THREADS or all cores"),
    "dtype": Field(str, "float32", choices=("float32", "float64")),
    "run_dir": Field(str, "runs", doc="directory that holds the run directories"),
    "name": Field(str, None, nullable=True, doc="run name; null = the config file's name"),
    "test_checkpoint": Field(str, "last", choices=("last", "best"), doc="model whose test metrics are reported"),
}
EARLY_STOPPING_FIELDS = {
    "patience": Field(int, None, lo=1, nullable=True, doc="epochs without improvement before stopping; null = off"),
    "monitor": Field(str, "val_loss", choices=MONITORS),
    "min_delta": Field(float, 0.0, lo=0.0),
}
CHECKPOINT_FIELDS = {
    "every": Field(int, 1, lo=1, doc="write last.npz every N epochs (and always after the last one)"),
    "best": Field(bool, True, doc="keep best.npz, the model with the best monitored value"),
    "monitor": Field(str, "val_loss", choices=MONITORS),
}
TOP_KEYS = ("plugins", "data", "model", "loss", "optimizer", "schedule", "trainer")


def monitor_mode(monitor):
    """'max' for accuracies, 'min' for losses."""
    return "max" if monitor.endswith("acc") else "min"


# -- helpers ---------------------------------------------------------------------------------------
def _show(value):
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"a list {list(value)!r}"
    if isinstance(value, dict):
        return "a mapping"
    return f"{value!r} ({type(value).__name__})"


def _did_you_mean(name, candidates):
    hint = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _mapping(value, key, allow_none=True):
    if value is None and allow_none:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"must be a mapping of keys to values, got {_show(value)}", key=key)
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"keys must be strings, got {k!r}", key=key)
    return value


def _check_fields(section, fields, key, extra_ok=()):
    """Fill defaults and check the fixed keys of a mapping; unknown keys are errors unless in extra_ok."""
    out = {}
    for k, v in section.items():
        if k not in fields and k not in extra_ok:
            known = list(fields) + list(extra_ok)
            raise ConfigError(
                f"unknown key {k!r}{_did_you_mean(k, known)} (known: {', '.join(known)})", key=f"{key}.{k}"
            )
    for name, field in fields.items():
        out[name] = field.check(section.get(name, field.default), f"{key}.{name}")
    return out


def _signature(obj):
    """(parameters by name, accepts **kwargs) of a class's constructor or a function."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}, True
    params = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return params, var_kw


def _check_kwargs(obj, kwargs, key, reserved=(), what="key"):
    """Unknown keyword → did-you-mean; missing required keyword → named.  ``reserved`` are supplied by us."""
    params, var_kw = _signature(obj)
    allowed = [n for n in params if n not in reserved]
    if not var_kw:
        for k in kwargs:
            if k not in allowed:
                raise ConfigError(
                    f"unknown {what} {k!r}{_did_you_mean(k, allowed)} (accepted: {', '.join(allowed) or 'none'})",
                    key=f"{key}.{k}",
                )
    for n, p in params.items():
        if n in reserved or n in kwargs:
            continue
        if p.default is inspect.Parameter.empty and p.kind != p.VAR_POSITIONAL:
            raise ConfigError(f"missing required key {n!r}", key=f"{key}.{n}")
    return params, var_kw


def _error_key(message, names, base):
    """The key path of the keyword a constructor's error message mentions first (else ``base``)."""
    best = None
    for n in names:
        m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), n)
    return f"{base}.{best[1]}" if best else base


def _construct(factory, kwargs, key, what):
    """Call ``factory(**kwargs)``; map its TypeError/ValueError to the key it names; locate other errors."""
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {what}: {e}", key=_error_key(str(e), list(kwargs), key)) from None
    except Exception as e:  # a bug in (usually plugin) code: say where it happened
        raise ConfigError(f"{what} raised {type(e).__name__}: {e}{_code_location(e)}", key=key) from None


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_DIRS = tuple({os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


def _is_user_file(filename):
    """Not cnnframe itself, not the standard library or an installed package (numpy, ...)."""
    f = os.path.abspath(filename)
    if f.startswith(_PACKAGE_DIR + os.sep) or filename.startswith("<"):
        return False
    return not (f.startswith(_LIBRARY_DIRS) or "site-packages" in f or "dist-packages" in f)


def _code_location(exc, user_only=False):
    """' (at file:line)' for the innermost frame of the exception's traceback in the user's code (a plugin),
    else (unless ``user_only``) the innermost frame outside this module."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) != os.path.abspath(__file__)]
    user = [f for f in frames if _is_user_file(f.filename)]
    if user:
        f = user[-1]
    elif frames and not user_only:
        f = frames[-1]
    else:
        return ""
    return f" (at {f.filename}:{f.lineno})"


def _to_plain(value):
    """Tuples → lists (recursively) so resolved configs are plain YAML."""
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _defaults(obj, reserved=()):
    params, _ = _signature(obj)
    out = {}
    for n, p in params.items():
        if n in reserved or p.default is inspect.Parameter.empty:
            continue
        d = p.default
        if d is None or isinstance(d, (bool, int, float, str, tuple, list)):
            out[n] = _to_plain(d)
    return out


# -- plugins ---------------------------------------------------------------------------------------
def import_plugins(plugins, base_dir=".", key="plugins"):
    """Import each plugin (module name, or .py file relative to ``base_dir``); return resolved names.

    Files are returned as absolute paths so a saved config works from anywhere.
    """
    if plugins is None:
        return []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list):
        raise ConfigError(f"must be a list of module names or .py files, got {_show(plugins)}", key=key)
    resolved = []
    for i, spec in enumerate(plugins):
        k = f"{key}[{i}]"
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"must be a module name or a .py file, got {_show(spec)}", key=k)
        if spec.endswith(".py") or os.sep in spec or "/" in spec:
            path = spec if os.path.isabs(spec) else os.path.join(base_dir, spec)
            path = os.path.abspath(path)
            if not os.path.isfile(path):
                raise ConfigError(f"plugin file not found: {path}", key=k)
            _import_file(path, k)
            resolved.append(path)
        else:
            _import_module(spec, k)
            resolved.append(spec)
    return resolved


def _plugin_failure(exc, origin, key):
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else origin
        return ConfigError(f"plugin {origin} has a syntax error at {where}: {exc.msg}", key=key)
    frames = traceback.extract_tb(exc.__traceback__)
    # Prefer the deepest frame inside the plugin itself; else the deepest frame outside importlib.
    inside = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(origin)]
    outside = [f for f in frames if "importlib" not in f.filename and os.path.abspath(f.filename) != os.path.abspath(__file__)]
    f = (inside or outside or [None])[-1]
    where = f" at {f.filename}:{f.lineno}" if f is not None else ""
    return ConfigError(f"plugin {origin} failed to import{where}: {type(exc).__name__}: {exc}", key=key)


def _import_file(path, key):
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"cnnframe_plugin_{stem}_{zlib.crc32(path.encode()):08x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise _plugin_failure(e, path, key) from None
    return module


def _import_module(name, key):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name or (e.name and name.startswith(e.name + ".")):
            raise ConfigError(
                f"cannot import plugin module {name!r}: no module named {e.name!r} on the Python path "
                f"(for a file, give a path ending in .py relative to the config)",
                key=key,
            ) from None
        raise _plugin_failure(e, _module_origin(name), key) from None
    except Exception as e:
        raise _plugin_failure(e, _module_origin(name), key) from None


def _module_origin(name):
    """The file a module is loaded from (its name when unknown)."""
    try:
        spec = importlib.util.find_spec(name)
        return (spec and spec.origin) or name
    except Exception:
        return name


# -- sections --------------------------------------------------------------------------------------
def _registry_type(registry, spec, key, default=None):
    """Look up ``spec['type']`` in a registry; unknown names get the registry's did-you-mean."""
    name = spec.get("type", default)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"must be a registered {registry.family} name, got {_show(name)}", key=f"{key}.type")
    module = _type_module(name)
    if module:  # import it here, so a broken module is reported like a broken plugin (file and line)
        _import_module(module, f"{key}.type")
    try:
        return name, registry.get(name)
    except KeyError as e:
        msg = e.args[0] if e.args else str(e)
        raise ConfigError(str(msg), key=f"{key}.type") from None


def _type_module(name):
    """The module of a ``package.module:ClassName`` type (None for a registered name)."""
    if isinstance(name, str) and ":" in name:
        return name.partition(":")[0].strip() or None
    return None


def _type_modules(raw):
    """Modules named by ``module:Class`` types in a (validated) raw config, in order of appearance.

    The resolved config lists them under ``plugins`` so whatever reloads a run (``--resume``, ``evaluate``,
    ``predict``) imports them first, even where the type was replaced by the class's registered name.
    """
    names = [(raw.get("data") or {}).get("dataset")]
    names += [spec.get("type") for spec in (raw.get("model") or {}).get("layers") or []]
    names += [(raw.get(s) or {}).get("type") for s in ("loss", "optimizer", "schedule")]
    return [m for m in dict.fromkeys(_type_module(n) for n in names) if m]


def resolve_data(raw, base_dir, key="data"):
    from cnnframe import registry

    section = dict(_mapping(raw, key))
    name = section.get("dataset", DATA_FIELDS["dataset"].default)
    DATA_FIELDS["dataset"].check(name, f"{key}.dataset")
    if _type_module(name):
        _import_module(_type_module(name), f"{key}.dataset")
    try:
        cls = registry.DATASETS.get(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0]), key=f"{key}.dataset") from None
    params, var_kw = _signature(cls)
    ds_keys = [n for n in params if n != "seed"]
    fixed = dict(DATA_FIELDS, augment=None)
    extra = [k for k in section if k not in fixed] if var_kw else ds_keys
    out = _check_fields({k: v for k, v in section.items() if k != "augment"}, DATA_FIELDS, key,
                        extra_ok=extra + ["augment"])
    out["dataset"] = getattr(cls, "registered_name", None) or name
    aug = _mapping(section.get("augment"), f"{key}.augment")
    out["augment"] = _check_fields(aug, AUGMENT_FIELDS, f"{key}.augment")
    ds_kwargs = {k: v for k, v in section.items() if k not in fixed}
    # Relative data paths are relative to the config file; saved absolute so a run dir is self-contained.
    resolve_paths = getattr(cls, "path_keys", ())
    for pk in resolve_paths:
        v = ds_kwargs.get(pk)
        if isinstance(v, str) and v and not os.path.isabs(os.path.expanduser(v)):
            cand = os.path.join(base_dir, v)
            ds_kwargs[pk] = os.path.abspath(cand if os.path.exists(cand) or not os.path.exists(v) else v)
        elif isinstance(v, str) and v:
            ds_kwargs[pk] = os.path.abspath(os.path.expanduser(v))
    _check_kwargs(cls, ds_kwargs, key, reserved=("seed",))
    full = _defaults(cls, reserved=("seed",))
    full.update(ds_kwargs)
    out.update(full)
    return out


def dataset_kwargs(data_cfg):
    """The keys of a resolved data section that go to the dataset's constructor."""
    return {k: v for k, v in data_cfg.items() if k not in DATA_FIELDS and k != "augment"}


def make_dataset(data_cfg, seed, key="data"):
    """Construct the dataset object (cheap: checks parameters, loads nothing big)."""
    from cnnframe import registry

    cls = registry.DATASETS.get(data_cfg["dataset"])
    kwargs = dataset_kwargs(data_cfg)
    params, var_kw = _signature(cls)
    if "seed" in params or var_kw:
        kwargs["seed"] = seed
    return _construct(cls, kwargs, key, f"dataset {data_cfg['dataset']!r}")


def _layer_kwargs(cls, spec, key, dtype):
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    if "dtype" in kwargs:
        raise ConfigError("set the dtype for the whole model in trainer.dtype, not per layer", key=f"{key}.dtype")
    params, var_kw = _check_kwargs(cls, kwargs, key, reserved=("dtype",))
    if "dtype" in params or var_kw:
        kwargs["dtype"] = dtype
    return kwargs


def make_layer(spec, key, dtype="float32"):
    """Construct one layer from its config dict (``{"type": ..., **hyper_parameters}``)."""
    from cnnframe import registry

    spec = _mapping(spec, key, allow_none=False)
    name, cls = _registry_type(registry.LAYERS, spec, key)
    if not isinstance(cls, type):
        raise ConfigError(f"layer type {name!r} is {cls!r}, not a class", key=f"{key}.type")
    kwargs = _layer_kwargs(cls, spec, key, dtype)
    factory = getattr(cls, "from_config", None)
    if factory is not None:
        layer = _construct(lambda **kw: cls.from_config({"type": name, **kw}), kwargs, key, f"layer {name!r}")
    else:
        layer = _construct(cls, kwargs, key, f"layer {name!r}")
    from cnnframe.layers.base import Layer

    for method in ("forward", "backward", "output_shape"):
        impl = getattr(type(layer), method, None)
        if not callable(impl) or (method != "output_shape" and impl is getattr(Layer, method)):
            raise ConfigError(f"layer {name!r} ({_where(cls)}) does not implement {method}()", key=key)
    _check_layer_config(layer, registry.LAYERS, name, key)
    return layer


def _check_layer_config(layer, layers, name, key):
    """A checkpoint stores ``get_config()`` and rebuilds the layer from its ``type``: check both now,
    not when the first checkpoint is written or reloaded."""
    import json

    cls = type(layer)
    try:
        cfg = layer.get_config()
        json.dumps(cfg)
    except Exception as e:
        raise ConfigError(f"layer {name!r}: get_config() must return a JSON-serialisable dict; "
                          f"{type(e).__name__}: {e}{_code_location(e) or ' (' + _where(cls) + ')'}", key=key) from None
    typ = cfg.get("type") if isinstance(cfg, dict) else None
    try:
        found = layers.get(typ) if isinstance(typ, str) else None
    except Exception:  # unknown name, or a module:Class that does not import
        found = None
    if found is not cls:
        raise ConfigError(f"layer {name!r} ({_where(cls)}): get_config()['type'] is {typ!r}, which does not "
                          f"name its class {cls.__module__}.{cls.__qualname__}, so a saved model could not be "
                          f"reloaded; start get_config() from super().get_config()", key=key)


def _where(cls):
    try:
        return f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
    except (TypeError, OSError):
        return getattr(cls, "__module__", "?")


def layer_shapes(layers, input_shape, key="model.layers"):
    """Run ``output_shape`` down the chain; returns the per-layer output shapes or names the misfit."""
    shapes = []
    shape = tuple(input_shape)
    for i, layer in enumerate(layers):
        k = f"{key}[{i}]"
        name = getattr(layer, "registered_name", None) or type(layer).__name__
        try:
            out = layer.output_shape(shape)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"layer {i} ({name}) does not fit its input of shape {shape}: {e}{_code_location(e, user_only=True)}",
                key=k,
            ) from None
        except Exception as e:
            raise ConfigError(
                f"layer {i} ({name}).output_shape{shape} raised {type(e).__name__}: {e}{_code_location(e)}", key=k
            ) from None
        try:
            out = tuple(int(s) for s in out)
            ok = len(out) >= 1 and all(s >= 1 for s in out)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(
                f"layer {i} ({name}).output_shape{shape} returned {out!r}; expected a tuple of positive ints "
                f"({_where(type(layer))})",
                key=k,
            )
        shapes.append(out)
        shape = out
    return shapes


def check_model_runs(model, input_shape, dtype, key="model.layers"):
    """Forward and backward two zero samples through each layer (eval mode, gradients cleared after):
    catches a layer whose ``forward`` disagrees with its declared ``output_shape`` or that fails to run."""
    import numpy as np

    was = model.training
    model.eval()
    x = np.zeros((2,) + tuple(input_shape), dtype=dtype)
    shape = tuple(input_shape)
    try:
        for i, layer in enumerate(model.layers):
            name = getattr(layer, "registered_name", None) or type(layer).__name__
            declared = tuple(model.shapes[i])
            try:
                y = layer.forward(x)
                g = layer.backward(np.ones_like(y))
            except Exception as e:
                raise ConfigError(f"layer {i} ({name}) failed on a batch of shape {x.shape}: "
                                  f"{type(e).__name__}: {e}{_code_location(e)}", key=f"{key}[{i}]") from None
            if tuple(y.shape[1:]) != declared:
                raise ConfigError(f"layer {i} ({name}): output_shape({shape}) declares {declared} but forward() "
                                  f"returned samples of shape {tuple(y.shape[1:])} ({_where(type(layer))})",
                                  key=f"{key}[{i}]")
            if g is not None and tuple(np.shape(g)) != tuple(x.shape):
                raise ConfigError(f"layer {i} ({name}): backward() returned a gradient of shape {np.shape(g)} "
                                  f"for an input of shape {x.shape} ({_where(type(layer))})", key=f"{key}[{i}]")
            x, shape = y, declared
    finally:
        model.zero_grad()
        model.train(was)


def resolve_model(raw, input_shape, num_classes, dtype, key="model"):
    """Check the model section; returns (resolved section, layers, shapes)."""
    section = _mapping(raw, key)
    for k in section:
        if k not in ("input_shape", "layers"):
            raise ConfigError(
                f"unknown key {k!r}{_did_you_mean(k, ['input_shape', 'layers'])} (known: input_shape, layers)",
                key=f"{key}.{k}",
            )
    given = section.get("input_shape")
    if given is not None:
        if (not isinstance(given, list) or not given
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in given)):
            raise ConfigError(f"must be a list of positive integers such as [1, 8, 8], got {_show(given)}",
                              key=f"{key}.input_shape")
        if input_shape is not None and tuple(given) != tuple(input_shape):
            raise ConfigError(f"is {tuple(given)} but the data's samples have shape {tuple(input_shape)}",
                              key=f"{key}.input_shape")
        input_shape = tuple(given)
    if input_shape is None:
        raise ConfigError("the input shape is unknown: give model.input_shape", key=f"{key}.input_shape")
    layers_raw = section.get("layers")
    if not isinstance(layers_raw, list) or not layers_raw:
        raise ConfigError(f"must be a non-empty list of layers, got {_show(layers_raw)}", key=f"{key}.layers")
    layers = [make_layer(spec, f"{key}.layers[{i}]", dtype) for i, spec in enumerate(layers_raw)]
    shapes = layer_shapes(layers, input_shape, f"{key}.layers")
    if num_classes is not None and shapes[-1] != (num_classes,):
        raise ConfigError(
            f"the model's output shape is {shapes[-1]} but the data has {num_classes} classes: the last layer "
            f"must output ({num_classes},), e.g. a dense layer with out_features: {num_classes}",
            key=f"{key}.layers[{len(layers) - 1}]",
        )
    resolved = {"input_shape": list(given) if given is not None else None,
                "layers": [copy.deepcopy(dict(s)) for s in layers_raw]}
    return resolved, layers, shapes


def _resolve_component(registry, raw, key, default_type, reserved=()):
    section = _mapping(raw, key)
    name, cls = _registry_type(registry, section, key, default_type)
    kwargs = {k: v for k, v in section.items() if k != "type"}
    _check_kwargs(cls, kwargs, key, reserved=reserved)
    out = {"type": getattr(cls, "registered_name", None) or name}
    out.update(_defaults(cls, reserved=reserved))
    out.update(kwargs)
    return out, cls


def resolve_config(raw, base_dir=".", name=None):
    """Validate a raw config dict; return the resolved config (every default filled in).

    Raises ConfigError with ``key`` set (no file); ``load_config`` adds the file and line.
    """
    from cnnframe import registry

    _ensure_registered()
    raw = _mapping(raw, None)
    for k in raw:
        if k not in TOP_KEYS:
            raise ConfigError(f"unknown section {k!r}{_did_you_mean(k, TOP_KEYS)} (known: {', '.join(TOP_KEYS)})",
                              key=k)
    cfg = {"plugins": import_plugins(raw.get("plugins"), base_dir)}

    tr_raw = dict(_mapping(raw.get("trainer"), "trainer"))
    es_raw = _mapping(tr_raw.pop("early_stopping", None), "trainer.early_stopping")
    ck_raw = _mapping(tr_raw.pop("checkpoint", None), "trainer.checkpoint")
    trainer = _check_fields(tr_raw, TRAINER_FIELDS, "trainer", extra_ok=("early_stopping", "checkpoint"))
    trainer["early_stopping"] = _check_fields(es_raw, EARLY_STOPPING_FIELDS, "trainer.early_stopping")
    trainer["checkpoint"] = _check_fields(ck_raw, CHECKPOINT_FIELDS, "trainer.checkpoint")
    if trainer["name"] is None:
        trainer["name"] = name or "run"
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", trainer["name"]):
        raise ConfigError(f"must use only letters, digits, '_', '-' and '.', got {trainer['name']!r}",
                          key="trainer.name")

    data = resolve_data(raw.get("data"), base_dir)
    split_seed = trainer["seed"] if data["seed"] is None else data["seed"]
    dataset = make_dataset(data, split_seed)
    input_shape, num_classes = _describe(dataset)
    if data["val_fraction"] == 0:
        for sect in ("early_stopping", "checkpoint"):
            mon = trainer[sect]["monitor"]
            active = trainer[sect]["patience"] is not None if sect == "early_stopping" else trainer[sect]["best"]
            if active and mon.startswith("val_"):
                raise ConfigError(f"monitors {mon} but data.val_fraction is 0 (no validation set); "
                                  f"monitor train_loss/train_acc or keep a validation part",
                                  key=f"trainer.{sect}.monitor")

    model, layers, shapes = resolve_model(raw.get("model"), input_shape, num_classes, trainer["dtype"])
    cfg["data"] = data
    cfg["model"] = model

    cfg["loss"], loss_cls = _resolve_component(registry.LOSSES, raw.get("loss"), "loss", "softmax_cross_entropy")
    _construct(loss_cls, _kwargs(cfg["loss"]), "loss", f"loss {cfg['loss']['type']!r}")

    cfg["optimizer"], opt_cls = _resolve_component(registry.OPTIMIZERS, raw.get("optimizer"), "optimizer", "sgd",
                                                   reserved=("params",))
    from cnnframe.layers.base import Parameter
    import numpy as np

    dummy = {"0.weight": Parameter(np.zeros(2, dtype=trainer["dtype"]))}
    _construct(lambda **kw: opt_cls(dummy, **kw), _kwargs(cfg["optimizer"]), "optimizer",
               f"optimizer {cfg['optimizer']['type']!r}")

    cfg["schedule"], sched_cls = _resolve_component(registry.SCHEDULES, raw.get("schedule"), "schedule", "constant",
                                                    reserved=("base_lr", "total_epochs"))
    sched = _construct(lambda **kw: sched_cls(base_lr=optimizer_lr(cfg), total_epochs=trainer["epochs"], **kw),
                       _kwargs(cfg["schedule"]), "schedule", f"schedule {cfg['schedule']['type']!r}")
    for t in (0.0, trainer["epochs"] * 0.5, float(trainer["epochs"])):
        lr = sched.lr_at(t)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ConfigError(f"gives learning rate {lr!r} at epoch {t}; expected a finite number >= 0",
                              key="schedule")
    cfg["trainer"] = trainer
    cfg["plugins"] += [m for m in _type_modules(raw) if m not in cfg["plugins"]]
    return cfg


def _ensure_registered():
    """Import the modules whose decorators fill the registries."""
    import cnnframe.datasets  # noqa: F401
    import cnnframe.layers  # noqa: F401
    import cnnframe.losses  # noqa: F401
    import cnnframe.optim  # noqa: F401


def _kwargs(section):
    return {k: v for k, v in section.items() if k != "type"}


def optimizer_lr(cfg):
    lr = cfg["optimizer"].get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError(f"must be a number, got {_show(lr)}", key="optimizer.lr")
    return float(lr)


def _describe(dataset):
    try:
        shape, num_classes = dataset.describe()
    except ConfigError:
        raise
    except (ValueError, OSError) as e:
        raise ConfigError(str(e), key=getattr(e, "key", None) or "data") from None
    return tuple(int(s) for s in shape), (int(num_classes) if num_classes is not None else None)


# -- files -----------------------------------------------------------------------------------------
def load_config(path, overrides=()):
    """Read, override, validate: returns the resolved config dict (raises ConfigError)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML config file", file=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config: {e}", file=path) from None
    name = os.path.splitext(os.path.basename(path))[0]
    return resolve_text(text, file=path, base_dir=os.path.dirname(os.path.abspath(path)), name=name,
                        overrides=overrides)


def resolve_text(text, file=None, base_dir=".", name=None, overrides=()):
    data, lines = parse_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {_show(data)}", file=file, line=1)
    overridden = {}
    for assignment in overrides:
        overridden[apply_override(data, assignment)] = f"--set {assignment}"
    try:
        return resolve_config(data, base_dir=base_dir, name=name)
    except ConfigError as e:
        if e.file is None:
            src = _override_source(e.key, overridden)
            if src is not None:
                e.file = src
            else:
                e.file = file
                e.line = _line_of(e.key, lines)
        raise


def _override_source(key, overridden):
    if not key:
        return None
    for k, src in overridden.items():
        if key == k or key.startswith(k + ".") or key.startswith(k + "[") or k.startswith(key + ".") \
                or k.startswith(key + "["):
            return src
    return None


def _line_of(key, lines):
    while key:
        if key in lines:
            return lines[key]
        cut = max(key.rfind("."), key.rfind("["))
        key = key[:cut] if cut > 0 else ""
    return None


def dump_config(cfg):
    """The resolved config as YAML text (sections in the documented order)."""
    order = [k for k in TOP_KEYS if k in cfg] + [k for k in cfg if k not in TOP_KEYS]
    return yaml.safe_dump({k: _to_plain(cfg[k]) for k in order}, sort_keys=False, default_flow_style=None)


# -- builders used by the trainer and the CLI ---------------------------------------------------------
def build_layers(cfg, dtype=None):
    dtype = dtype or cfg["trainer"]["dtype"]
    return [make_layer(spec, f"model.layers[{i}]", dtype) for i, spec in enumerate(cfg["model"]["layers"])]


def build_loss(cfg):
    from cnnframe import registry

    return registry.LOSSES.get(cfg["loss"]["type"])(**_kwargs(cfg["loss"]))


def build_optimizer(cfg, params):
    from cnnframe import registry

    return registry.OPTIMIZERS.get(cfg["optimizer"]["type"])(params, **_kwargs(cfg["optimizer"]))


def build_schedule(cfg):
    from cnnframe import registry

    cls = registry.SCHEDULES.get(cfg["schedule"]["type"])
    return cls(base_lr=optimizer_lr(cfg), total_epochs=cfg["trainer"]["epochs"], **_kwargs(cfg["schedule"]))


def split_seed(cfg):
    return cfg["trainer"]["seed"] if cfg["data"]["seed"] is None else cfg["data"]["seed"]
