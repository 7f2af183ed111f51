"""Name → class registries, one per family, so configs can say ``type: conv2d``.

    @cnnframe.register_layer("swish")
    class Swish(Layer): ...

    @cnnframe.register_loss("softmax_cross_entropy", aliases=("cross_entropy",))
    class SoftmaxCrossEntropy(Loss): ...

A registry only maps names it was given; it never imports anything.  ``"package.module:ClassName"``
types are resolved by ``cnnframe.plugins`` (from the modules the user named).
"""
import inspect

from cnnframe.checks import did_you_mean

__all__ = ["Registry", "LAYERS", "LOSSES", "OPTIMIZERS", "SCHEDULES", "DATASETS", "FAMILIES", "registered_names",
           "register_layer", "register_loss", "register_optimizer", "register_schedule", "register_dataset"]


class Registry:
    """A mapping from registered names (case-insensitive) to the classes of one family."""

    def __init__(self, family):
        self.family = family
        self._items = {}

    def register(self, name, obj=None, aliases=()):
        """Register ``obj`` under ``name`` (its ``registered_name``) and ``aliases``; usable as a decorator."""
        names = [name, *aliases]
        for n in names:
            if not isinstance(n, str) or not n:
                raise TypeError(f"{self.family} name must be a non-empty string, got {n!r}")

        def deco(o):
            for n in names:
                old = self._items.get(n.lower())
                # The same class imported again (a module reloaded) may take its name back; another may not.
                if old is not None and old is not o and _qualname(old) != _qualname(o):
                    raise ValueError(f"{self.family} {n!r} is already registered to {_origin(old)}; "
                                     f"cannot register {_origin(o)} under the same name")
            for n in names:
                self._items[n.lower()] = o
            try:
                o.registered_name = name.lower()
            except (AttributeError, TypeError):
                pass
            return o

        return deco if obj is None else deco(obj)

    def get(self, name):
        """The class registered as ``name``, or KeyError with a did-you-mean."""
        if not isinstance(name, str):
            raise KeyError(f"{self.family} type must be a string, got {type(name).__name__}")
        if ":" in name:
            raise KeyError(f"{self.family} type {name!r} is not a registered name; 'module:Class' types are "
                           f"resolved from the plugins you name (cnnframe.plugins.Plugins)")
        try:
            return self._items[name.lower()]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def unknown_message(self, name):
        return (f"unknown {self.family} {name!r}{did_you_mean(name.lower(), self._items)} "
                f"(known: {', '.join(sorted(self._items))})")

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._items

    def names(self):
        """Every registered name, aliases included, sorted."""
        return sorted(self._items)

    def __repr__(self):
        return f"Registry({self.family!r}, {self.names()})"


def _qualname(o):
    return f"{getattr(o, '__module__', '?')}.{getattr(o, '__qualname__', repr(o))}"


def _origin(o):
    """``module.Class (file:line)``: which code a registration came from."""
    try:
        return f"{_qualname(o)} ({inspect.getsourcefile(o)}:{inspect.getsourcelines(o)[1]})"
    except (TypeError, OSError):
        return _qualname(o)


LAYERS = Registry("layer")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")
DATASETS = Registry("dataset")

#: every family by its plural, in the order ``python -m cnnframe info`` lists them
FAMILIES = {"layers": LAYERS, "losses": LOSSES, "optimizers": OPTIMIZERS, "schedules": SCHEDULES,
            "datasets": DATASETS}

register_layer = LAYERS.register
register_loss = LOSSES.register
register_optimizer = OPTIMIZERS.register
register_schedule = SCHEDULES.register
register_dataset = DATASETS.register


def registered_names():
    """``{"layers": [...], "losses": [...], ...}``: every name a config can use now (built-ins and the
    plugins imported so far)."""
    return {plural: reg.names() for plural, reg in FAMILIES.items()}
