"""Layer specs, ``{"type": name, **arguments}``: the one way a layer is built from data.

A config's ``model.layers``, a checkpoint's stored model (``Sequential.from_config``) and a layer
that holds layers of its own all build through ``build_layer``, so a type always resolves the same
safe way: from the registry, or as ``module:Class`` only from a module the ``Plugins`` allow, checked
to be a ``Layer`` subclass before it is called (``cnnframe/plugins.py``).

Errors are the API's (KeyError for a type that does not resolve, TypeError/ValueError for a bad spec
or argument, the layer's own exceptions as they are, marked with ``layer_type``), each carrying
``key``: the spec key it concerns ("type", "kernel_size"; None for the spec as a whole).
``at(e, "layers[1]")`` re-raises one with a prefix on its message and key, so a block of layers can
say which child failed and a config can report ``model.layers[3].layers[1].kernel_size``.
"""
import contextvars
import copy
import json
import re

from cnnframe.checks import KeywordError, check_keywords, show, signature
from cnnframe.errors import ConfigError
from cnnframe.layers.base import Layer
from cnnframe.locate import where
from cnnframe.plugins import Plugins
from cnnframe.registry import LAYERS

__all__ = ["build_layer", "at", "prefixed", "join_key"]

# The Plugins of the build under way, so a layer holding layers builds its children the same way.
_ENCLOSING = contextvars.ContextVar("cnnframe_layer_plugins", default=None)


def join_key(prefix, key):
    """``join_key("layers[3]", "kernel_size")`` → ``"layers[3].kernel_size"`` (either may be empty)."""
    if not key:
        return prefix
    if not prefix:
        return key
    return prefix + (key if key.startswith("[") else "." + key)


def prefixed(e, prefix, key_prefix=None):
    """``e`` again (same type when possible) with ``prefix`` in front of its message and ``key_prefix`` in
    front of its ``key`` (None: the key unchanged); other attributes (``layer_index``, ...) are kept."""
    key = getattr(e, "key", None) if key_prefix is None else join_key(key_prefix, getattr(e, "key", None))
    if isinstance(e, ConfigError):  # already located in a config: only the key path grows
        e.key = key
        return e
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    try:
        new = type(e)(f"{prefix}: {message}")
    except Exception:  # a constructor that wants more than a message: copy the exception instead
        new = copy.copy(e)
        new.args = (f"{prefix}: {message}",)
    new.__dict__.update(getattr(e, "__dict__", {}))
    new.key = key
    return new


def at(e, prefix, key_prefix=None):
    """Raise ``prefixed(e, prefix, key_prefix)``, ``key_prefix`` defaulting to ``prefix`` (``"layers[1]"``)."""
    new = prefixed(e, prefix, prefix if key_prefix is None else key_prefix)
    raise new from (None if new is e else e)


def _keyed(e, key):
    if getattr(e, "key", None) is None:
        e.key = key
    return e


def error_key(message, names):
    """The argument among ``names`` that an error message mentions first (None if none)."""
    best = None
    for n in names:
        m = re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), n)
    return best[1] if best else None


def build_layer(spec, plugins=None, dtype=None):
    """The layer ``spec`` describes, built by its class's ``from_config``.

    ``plugins`` (a ``cnnframe.plugins.Plugins``) decides which types resolve; None: those of the build
    this one is part of (a block building its children), else registered names only.  ``dtype``, when given
    (a config's ``trainer.dtype``), is passed to the constructor and the spec may not set one; else
    the spec's own ``dtype`` is used (a stored layer config carries it).  The arguments are checked
    against the constructor's signature (unknown ones get a did-you-mean) unless the class defines
    its own ``from_config``.  The built layer must implement forward, backward and output_shape, and
    its ``get_config()`` must be JSON and name its own class, so a saved model reloads.
    """
    if plugins is None:
        plugins = _ENCLOSING.get() or Plugins()
    if not isinstance(spec, dict) or "type" not in spec:
        raise _keyed(ValueError(f"each layer config must be a dict with a 'type' key, got {show(spec)}"), None)
    name = spec["type"]
    if not isinstance(name, str) or not name:
        raise _keyed(ValueError(f"must be a registered layer name, got {show(name)}"), "type")
    try:
        cls = plugins.resolve(LAYERS, name, Layer, key="type")
    except (KeyError, TypeError) as e:
        raise _keyed(e, "type") from None
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    if dtype is not None and "dtype" in kwargs:
        raise _keyed(ValueError("set the dtype for the whole model in trainer.dtype, not per layer"), "dtype")
    params, var_kw = signature(cls)
    if getattr(cls.from_config, "__func__", None) is Layer.from_config.__func__:  # the constructor takes the spec
        try:
            check_keywords(cls, kwargs, reserved=("dtype",) if dtype is not None else ())
        except KeywordError as e:
            raise _keyed(e, e.name) from None
    if dtype is not None and ("dtype" in params or var_kw):
        kwargs["dtype"] = dtype
    token = _ENCLOSING.set(plugins)
    try:
        layer = cls.from_config({"type": name, **kwargs})
    except Exception as e:
        if getattr(e, "layer_type", None) is None and getattr(e, "key", None) is None:
            e.layer_type = name  # the layer's own error (not a child's spec): said so by whoever reports it
        raise _keyed(e, error_key(str(e), list(kwargs)))
    finally:
        _ENCLOSING.reset(token)
    _check_contract(layer, name, plugins)
    return layer


def _check_contract(layer, name, plugins):
    """A layer that cannot run or cannot be saved and reloaded is found here, not after the first epoch."""
    cls = type(layer)
    if not isinstance(layer, Layer):
        raise _keyed(TypeError(f"layer {name!r}: from_config returned {type(layer).__name__}, not a Layer"), None)
    for method in ("forward", "backward"):
        if getattr(cls, method) is getattr(Layer, method):
            raise _keyed(TypeError(f"layer {name!r} ({where(cls)}) does not implement {method}()"), None)
    try:
        cfg = layer.get_config()
        json.dumps(cfg)
    except Exception as e:
        raise _keyed(TypeError(f"layer {name!r}: get_config() must return a JSON-serialisable dict; "
                               f"{type(e).__name__}: {e} ({where(cls)})"), None) from None
    typ = cfg.get("type") if isinstance(cfg, dict) else None
    try:
        found = plugins.resolve(LAYERS, typ, Layer) if isinstance(typ, str) else None
    except Exception:  # unknown name, or a module:Class that does not resolve
        found = None
    if found is not cls:
        raise _keyed(TypeError(f"layer {name!r} ({where(cls)}): get_config()['type'] is {typ!r}, which does not "
                               f"name its class {cls.__module__}.{cls.__qualname__}, so a saved model could not "
                               f"be reloaded; start get_config() from super().get_config()"), None)
