"""Name → class registries, one per family, so configs can say ``type: conv2d``.

    @cnnframe.register_layer("swish")
    class Swish(Layer): ...
"""
import difflib


class Registry:
    """A mapping from registered names to classes (or factories) of one family."""

    def __init__(self, family):
        self.family = family
        self._items = {}

    def register(self, name, obj=None):
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.family} name must be a non-empty string, got {name!r}")
        key = name.lower()

        def deco(o):
            old = self._items.get(key)
            if old is not None and old is not o and _qualname(old) != _qualname(o):
                raise ValueError(
                    f"{self.family} {name!r} is already registered to {_qualname(old)}; "
                    f"cannot register {_qualname(o)} under the same name"
                )
            self._items[key] = o
            try:
                o.registered_name = key
            except (AttributeError, TypeError):
                pass
            return o

        return deco if obj is None else deco(obj)

    def get(self, name):
        """Return the object registered as ``name`` (case-insensitive), or raise KeyError with a hint.

        ``package.module:ClassName`` imports the module and returns the attribute, registered or not.
        """
        if not isinstance(name, str):
            raise KeyError(f"{self.family} type must be a string, got {type(name).__name__}")
        if ":" in name:
            return _import_object(name, self.family)
        try:
            return self._items[name.lower()]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name):
        hint = difflib.get_close_matches(name.lower(), list(self._items), n=1, cutoff=0.6)
        msg = f"unknown {self.family} {name!r}"
        if hint:
            msg += f"; did you mean {hint[0]!r}?"
        known = ", ".join(sorted(self._items))
        return f"{msg} (known: {known})"

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._items

    def names(self):
        return sorted(self._items)

    def __repr__(self):
        return f"Registry({self.family!r}, {self.names()})"


def _qualname(o):
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', repr(o))}"


def _import_object(spec, family):
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise KeyError(f"{family} type {spec!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise KeyError(f"{family} type {spec!r}: cannot import module {module_name!r}: {e}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise KeyError(f"{family} type {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


LAYERS = Registry("layer")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")
DATASETS = Registry("dataset")

register_layer = LAYERS.register
register_loss = LOSSES.register
register_optimizer = OPTIMIZERS.register
register_schedule = SCHEDULES.register
register_dataset = DATASETS.register
