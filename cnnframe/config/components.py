"""The sections that name a registered thing: ``data`` (a data source), ``loss``, ``optimizer``, ``schedule``.

Each section is ``{type: name, ...constructor arguments}``.  The type resolves through the
``Plugins`` of the config (a registered name, or ``module:Class`` checked to subclass the family's
base class before anything calls it); the other keys are checked against the constructor's
signature and the defaults filled in; then the object is built once, its own TypeError/ValueError
reported at the key the message names (``optimizer.lr``), any other exception at the line of the
code that raised it.
"""
import math
import os

from cnnframe.checks import KeywordError, check_keywords, keyword_defaults, show, signature
from cnnframe.config.schema import AUGMENT_FIELDS, DATA_FIELDS, TTA_FIELDS, check_fields, mapping
from cnnframe.datasets.base import Dataset
from cnnframe.errors import ConfigError
from cnnframe.layers.spec import error_key, join_key
from cnnframe.locate import code_location
from cnnframe.losses import Loss
from cnnframe.optim.base import Optimizer
from cnnframe.optim.schedules import Schedule
from cnnframe.registry import DATASETS, LOSSES, OPTIMIZERS, SCHEDULES

__all__ = ["construct", "resolve_data", "make_dataset", "describe_dataset", "resolve_loss", "resolve_optimizer", "resolve_schedule",
           "optimizer_lr"]


def construct(factory, kwargs, key, what):
    """``factory(**kwargs)``; its TypeError/ValueError as a ConfigError at the key it names, any other
    exception located in the code that raised it."""
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {what}: {e}", key=join_key(key, error_key(str(e), list(kwargs)))) from None
    except Exception as e:  # a bug in (usually plugin) code: say where it happened
        raise ConfigError(f"{what} raised {type(e).__name__}: {e}{code_location(e)}", key=key) from None


def resolve_type(registry, name, base, key, plugins):
    """The class a section's type names (see ``Plugins.resolve``), or ConfigError at ``key``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"must be a registered {registry.family} name, got {show(name)}", key=key)
    try:
        return plugins.resolve(registry, name, base, key=key)
    except (KeyError, TypeError) as e:
        raise ConfigError(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e), key=key) from None


def _type_name(cls, name):
    """What a resolved section records as its type: the class's own registered name, else as written."""
    return cls.__dict__.get("registered_name") or name


def _arguments(cls, kwargs, key, reserved=()):
    """Check ``kwargs`` against ``cls``'s signature; ConfigError at the offending key."""
    try:
        check_keywords(cls, kwargs, reserved=reserved)
    except KeywordError as e:
        raise ConfigError(str(e), key=f"{key}.{e.name}") from None


def _resolve(registry, base, raw, key, default_type, plugins, reserved=()):
    section = mapping(raw, key)
    name = section.get("type", default_type)
    cls = resolve_type(registry, name, base, f"{key}.type", plugins)
    kwargs = {k: v for k, v in section.items() if k != "type"}
    _arguments(cls, kwargs, key, reserved)
    resolved = {"type": _type_name(cls, name), **keyword_defaults(cls, reserved), **kwargs}
    return resolved, cls


def _kwargs(section):
    return {k: v for k, v in section.items() if k != "type"}


# -- loss, optimizer, schedule -------------------------------------------------------------------------------
def resolve_loss(raw, plugins):
    """(resolved ``loss`` section, the loss object)."""
    section, cls = _resolve(LOSSES, Loss, raw, "loss", "softmax_cross_entropy", plugins)
    return section, construct(cls, _kwargs(section), "loss", f"loss {section['type']!r}")


def resolve_optimizer(raw, params, plugins):
    """(resolved ``optimizer`` section, the optimizer over ``params``)."""
    section, cls = _resolve(OPTIMIZERS, Optimizer, raw, "optimizer", "sgd", plugins, reserved=("params",))
    opt = construct(lambda **kw: cls(params, **kw), _kwargs(section), "optimizer", f"optimizer {section['type']!r}")
    return section, opt


def optimizer_lr(optimizer_section):
    lr = optimizer_section.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ConfigError(f"must be a number, got {show(lr)}", key="optimizer.lr")
    return float(lr)


def resolve_schedule(raw, base_lr, epochs, plugins):
    """(resolved ``schedule`` section, the schedule: base lr = optimizer.lr, length = trainer.epochs)."""
    section, cls = _resolve(SCHEDULES, Schedule, raw, "schedule", "constant", plugins,
                            reserved=("base_lr", "total_epochs"))
    sched = construct(lambda **kw: cls(base_lr=base_lr, total_epochs=epochs, **kw), _kwargs(section), "schedule",
                      f"schedule {section['type']!r}")
    for t in (0.0, epochs * 0.5, float(epochs)):
        lr = sched.lr_at(t)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ConfigError(f"gives learning rate {lr!r} at epoch {t}; expected a finite number >= 0", key="schedule")
    return section, sched


# -- data ------------------------------------------------------------------------------------------------------
# The data section's own mappings (training-time and test-time augmentation); its other keys are the source's.
_SUBSECTIONS = {"augment": AUGMENT_FIELDS, "tta": TTA_FIELDS}


def resolve_data(raw, base_dir, plugins, key="data"):
    """(resolved ``data`` section, the data source's class).  Relative data paths (the class's
    ``path_keys``) are made absolute, relative to the config's directory, so a run directory is
    self-contained."""
    section = dict(mapping(raw, key))
    name = DATA_FIELDS["dataset"].check(section.get("dataset", DATA_FIELDS["dataset"].default), f"{key}.dataset")
    cls = resolve_type(DATASETS, name, Dataset, f"{key}.dataset", plugins)
    params, var_kw = signature(cls)
    fixed = set(DATA_FIELDS) | set(_SUBSECTIONS)
    extra = [k for k in section if k not in fixed] if var_kw else [n for n in params if n != "seed"]
    out = check_fields({k: v for k, v in section.items() if k not in _SUBSECTIONS}, DATA_FIELDS, key,
                       extra_ok=extra + list(_SUBSECTIONS))
    out["dataset"] = _type_name(cls, name)
    for sub, fields in _SUBSECTIONS.items():
        out[sub] = check_fields(mapping(section.get(sub), f"{key}.{sub}"), fields, f"{key}.{sub}")
    ds_kwargs = {k: v for k, v in section.items() if k not in fixed}
    for pk in getattr(cls, "path_keys", ()):
        v = ds_kwargs.get(pk)
        if isinstance(v, str) and v and not os.path.isabs(os.path.expanduser(v)):
            cand = os.path.join(base_dir, v)
            ds_kwargs[pk] = os.path.abspath(cand if os.path.exists(cand) or not os.path.exists(v) else v)
        elif isinstance(v, str) and v:
            ds_kwargs[pk] = os.path.abspath(os.path.expanduser(v))
    _arguments(cls, ds_kwargs, key, reserved=("seed",))
    out.update(keyword_defaults(cls, reserved=("seed",)))
    out.update(ds_kwargs)
    return out, cls


def make_dataset(data_section, cls, seed, key="data"):
    """The data source object (cheap: checks its arguments, reads nothing)."""
    kwargs = {k: v for k, v in data_section.items() if k not in DATA_FIELDS and k not in _SUBSECTIONS}
    params, var_kw = signature(cls)
    if "seed" in params or var_kw:
        kwargs["seed"] = seed
    return construct(cls, kwargs, key, f"dataset {data_section['dataset']!r}")


def describe_dataset(ds, key="data"):
    """(per-sample input shape, number of classes) from the source's ``describe()``; ConfigError at its key."""
    try:
        shape, num_classes = ds.describe()
    except ConfigError:
        raise
    except (ValueError, OSError) as e:
        raise ConfigError(str(e), key=getattr(e, "key", None) or key) from None
    return tuple(int(s) for s in shape), (int(num_classes) if num_classes is not None else None)
