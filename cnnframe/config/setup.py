"""A config, resolved and built once: ``load(path)`` → ``Setup``.

Resolving checks every section (unknown keys with a did-you-mean, types, ranges, registered names,
constructor arguments, every layer's output shape, the memory the model needs) and builds what the
config describes: the data source (not its data), the model (allocated), the loss, the optimizer
over the model's parameters and the schedule.  The trainer and the commands use those objects; the
resolved config (a plain dict with every default filled in) is what a run saves, and resolving it
again gives the same dict.

Trust.  A config the user wrote (a YAML file, a dict from Python) names its code: its ``plugins``
are imported and a ``module:Class`` type imports its module.  A stored config (``safe=True``: a
run's ``config.yaml``, the config inside a checkpoint) names nothing: its ``plugins`` list is kept as
a record, and types resolve from the registry and the ``plugins`` the caller names for the load.
"""
import os
import re

import yaml

from cnnframe.checks import did_you_mean, plain, show
from cnnframe.config.components import (
    describe_dataset,
    make_dataset,
    optimizer_lr,
    resolve_data,
    resolve_loss,
    resolve_optimizer,
    resolve_schedule,
)
from cnnframe.config.model_section import (
    GIB,
    PARAMETER_FACTOR,
    build_layer_at,
    build_model,
    check_memory,
    check_model,
    memory_bytes,
    resolve_model,
)
from cnnframe.config.schema import (
    CHECKPOINT_FIELDS,
    EARLY_STOPPING_FIELDS,
    TOP_KEYS,
    TRAINER_FIELDS,
    check_fields,
    mapping,
)
from cnnframe.config.yamlfile import apply_override, line_of, override_source, parse_yaml
from cnnframe.data import split_dataset
from cnnframe.errors import ConfigError
from cnnframe.layers.base import allocation_limit
from cnnframe.plugins import Plugins

_UNLIMITED = 1 << 62

__all__ = ["Setup", "load", "load_text", "resolve", "resolve_text", "load_config", "resolve_config", "dump_config",
           "build_layers", "build_loss", "build_optimizer", "build_schedule", "build_dataset", "load_data",
           "split_seed"]


class Setup:
    """Everything a resolved config describes, built once.

    ``config``: the resolved config (plain dict).  ``plugins``: the code it may use.  ``dataset``:
    the data source (nothing loaded yet); ``input_shape``, ``num_classes``: what it describes.
    ``model`` (a built ``Sequential``), ``loss``, ``optimizer`` (over the model's parameters),
    ``schedule``.  ``memory``: the estimated bytes at the batch size.
    """

    def __init__(self, config, plugins, dataset, input_shape, num_classes, model, loss, optimizer, schedule, memory):
        self.config, self.plugins, self.dataset = config, plugins, dataset
        self.input_shape, self.num_classes = input_shape, num_classes
        self.model, self.loss, self.optimizer, self.schedule = model, loss, optimizer, schedule
        self.memory = memory

    @property
    def split_seed(self):
        return split_seed(self.config)

    def load_data(self):
        """Load the data and split it (``cnnframe.data.Splits`` in the model's dtype)."""
        return load_data(self.config, self.dataset)

    def check_model(self):
        """Two zero samples forward and backward through every layer; ConfigError at ``model.layers[i]``."""
        check_model(self.model, self.config["trainer"]["dtype"])


def _plugins(raw, base_dir, plugins, safe):
    """The code the config may use: the caller's ``plugins``, then (unless ``safe``) the config's own."""
    named = plugins if isinstance(plugins, Plugins) else Plugins(plugins or (), ".", "plugins (given to the load)")
    if not safe:
        named.import_types = True
        named.add_all(raw.get("plugins") or [], base_dir, "plugins")
        return named
    recorded = raw.get("plugins") or []
    if isinstance(recorded, str):
        recorded = [recorded]
    if not isinstance(recorded, list) or not all(isinstance(p, str) and p for p in recorded):
        raise ConfigError(f"must be a list of module names or .py files, got {show(recorded)}", key="plugins")
    named.recorded = list(recorded)
    return named


def _trainer(raw, name):
    section = dict(mapping(raw, "trainer"))
    es = mapping(section.pop("early_stopping", None), "trainer.early_stopping")
    ck = mapping(section.pop("checkpoint", None), "trainer.checkpoint")
    trainer = check_fields(section, TRAINER_FIELDS, "trainer", extra_ok=("early_stopping", "checkpoint"))
    trainer["early_stopping"] = check_fields(es, EARLY_STOPPING_FIELDS, "trainer.early_stopping")
    trainer["checkpoint"] = check_fields(ck, CHECKPOINT_FIELDS, "trainer.checkpoint")
    if trainer["name"] is None:
        trainer["name"] = name or "run"
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", trainer["name"]):
        raise ConfigError(f"must use only letters, digits, '_', '-' and '.', got {trainer['name']!r}",
                          key="trainer.name")
    return trainer


def _check_monitors(trainer, data):
    if data["val_fraction"] != 0:
        return
    for sect in ("early_stopping", "checkpoint"):
        mon = trainer[sect]["monitor"]
        active = trainer[sect]["patience"] is not None if sect == "early_stopping" else trainer[sect]["best"]
        if active and mon.startswith("val_"):
            raise ConfigError(f"monitors {mon} but data.val_fraction is 0 (no validation set); "
                              f"monitor train_loss/train_acc or keep a validation part", key=f"trainer.{sect}.monitor")


def resolve(raw, base_dir=".", name=None, *, plugins=(), safe=False, dtype=None, parameter_bytes=None):
    """Validate a raw config dict and build what it describes → ``Setup``.

    ``plugins``: files or modules (or a ``Plugins``) the caller names for this load, in addition to the
    config's own (with ``safe=True``, instead of them).  ``dtype`` replaces ``trainer.dtype``
    (gradcheck builds in float64).  ``parameter_bytes`` caps what the model may allocate (a loader
    passes what the checkpoint it will fill holds).  Raises ConfigError with ``key`` set (no file);
    ``load`` adds the file and line.
    """
    raw = mapping(raw, None)
    for k in raw:
        if k not in TOP_KEYS:
            raise ConfigError(f"unknown section {k!r}{did_you_mean(k, TOP_KEYS)} (known: {', '.join(TOP_KEYS)})",
                              key=k)
    named = _plugins(raw, base_dir, plugins, safe)
    trainer = _trainer(raw.get("trainer"), name)
    if dtype is not None:
        trainer["dtype"] = dtype
    data, data_cls = resolve_data(raw.get("data"), base_dir, named)
    dataset = make_dataset(data, data_cls, split_seed({"data": data, "trainer": trainer}))
    input_shape, num_classes = describe_dataset(dataset)
    _check_monitors(trainer, data)

    limit = None if trainer["memory_limit"] is None else int(trainer["memory_limit"] * GIB)
    budget, what = (_UNLIMITED, "") if limit is None else (limit // PARAMETER_FACTOR, "trainer.memory_limit")
    if parameter_bytes is not None and parameter_bytes < budget:
        budget, what = parameter_bytes, "what the checkpoint being loaded holds"
    with allocation_limit(budget, what) as budget:
        model_cfg, layers, shapes, input_shape = resolve_model(raw.get("model"), input_shape, num_classes,
                                                               trainer["dtype"], named)
        itemsize = 4 if trainer["dtype"] == "float32" else 8
        check_memory(limit, input_shape, shapes, trainer["batch_size"], itemsize, budget)
        model = build_model(layers, input_shape)
        memory = memory_bytes(input_shape, shapes, trainer["batch_size"], itemsize, budget.used)[0]

    loss_cfg, loss = resolve_loss(raw.get("loss"), named)
    opt_cfg, optimizer = resolve_optimizer(raw.get("optimizer"), model.parameters(), named)
    sched_cfg, schedule = resolve_schedule(raw.get("schedule"), optimizer_lr(opt_cfg), trainer["epochs"], named)
    cfg = {"plugins": named.recorded if safe else named.names, "data": data, "model": model_cfg, "loss": loss_cfg,
           "optimizer": opt_cfg, "schedule": sched_cfg, "trainer": trainer}
    return Setup(cfg, named, dataset, input_shape, num_classes, model, loss, optimizer, schedule, memory)


def load_text(text, file=None, base_dir=".", name=None, overrides=(), **options):
    """YAML text (and ``--set`` overrides) → ``Setup``; errors carry the file and line, or the ``--set``."""
    data, lines = parse_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of sections, got {show(data)}", file=file, line=1)
    if not isinstance(options.get("plugins", ()), Plugins):  # named by the caller: not the file's lines
        options["plugins"] = Plugins(options.get("plugins") or (), ".", "plugins (given to the load)")
    overridden = {}
    for assignment in overrides:
        overridden[apply_override(data, assignment)] = f"--set {assignment}"
    try:
        return resolve(data, base_dir=base_dir, name=name, **options)
    except ConfigError as e:
        if e.file is None:
            src = override_source(e.key, overridden)
            if src is not None:
                e.file = src
            else:
                e.file = file
                e.line = line_of(e.key, lines)
        raise


def load(path, overrides=(), **options):
    """Read, override, validate and build: the ``Setup`` of the YAML config at ``path`` (ConfigError).

    ``options`` go to ``resolve`` (``plugins``, ``safe``, ``dtype``, ``parameter_bytes``)."""
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
    return load_text(text, file=path, base_dir=os.path.dirname(os.path.abspath(path)), name=name,
                     overrides=overrides, **options)


def load_config(path, overrides=(), **options):
    """The resolved config (plain dict) of the YAML file at ``path``, checked completely.  To train it,
    pass ``load(path)`` (the built ``Setup``) to ``Trainer.from_config``, which then builds nothing again."""
    return load(path, overrides, **options).config


def resolve_text(text, file=None, base_dir=".", name=None, overrides=(), **options):
    """The resolved config (plain dict) of YAML text (see ``load_text``)."""
    return load_text(text, file, base_dir, name, overrides, **options).config


def resolve_config(raw, base_dir=".", name=None, **options):
    """The resolved config (plain dict) of a raw config dict (see ``resolve``)."""
    return resolve(raw, base_dir, name, **options).config


# -- one part of a resolved config ------------------------------------------------------------------------------
def split_seed(cfg):
    """The seed of the train/validation/test split: ``data.seed``, else ``trainer.seed``."""
    return cfg["trainer"]["seed"] if cfg["data"]["seed"] is None else cfg["data"]["seed"]


def build_dataset(cfg, plugins=()):
    """The data source of a resolved config (nothing loaded yet).  Its type resolves like a stored
    config's: a registered name, or ``module:Class`` from ``plugins`` only."""
    section, cls = resolve_data(cfg["data"], ".", Plugins.of(plugins))
    return make_dataset(section, cls, split_seed(cfg))


def load_data(cfg, dataset=None, plugins=()):
    """The data of a resolved config (``dataset``: its source, built if not given), split with the
    config's seed → ``cnnframe.data.Splits`` in ``trainer.dtype``."""
    d = cfg["data"]
    dataset = dataset if dataset is not None else build_dataset(cfg, plugins)
    return split_dataset(dataset, split_seed(cfg), d["test_size"], d["val_fraction"], cfg["trainer"]["dtype"],
                         name=d["dataset"])


def build_layers(cfg, dtype=None, plugins=()):
    """The layers of a resolved config (in ``dtype``, default ``trainer.dtype``).  Types resolve like a
    stored config's: registered names, and ``module:Class`` from ``plugins`` only."""
    named = Plugins.of(plugins)
    dtype = dtype or cfg["trainer"]["dtype"]
    return [build_layer_at(spec, named, dtype, f"model.layers[{i}]") for i, spec in enumerate(cfg["model"]["layers"])]


def build_loss(cfg, plugins=()):
    """The loss of a resolved config (types resolve as in ``build_layers``)."""
    return resolve_loss(cfg["loss"], Plugins.of(plugins))[1]


def build_optimizer(cfg, params, plugins=()):
    return resolve_optimizer(cfg["optimizer"], params, Plugins.of(plugins))[1]


def build_schedule(cfg, plugins=()):
    opt = cfg["optimizer"]
    return resolve_schedule(cfg["schedule"], optimizer_lr(opt), cfg["trainer"]["epochs"], Plugins.of(plugins))[1]


def dump_config(cfg):
    """The resolved config as YAML text (sections in the documented order)."""
    order = [k for k in TOP_KEYS if k in cfg] + [k for k in cfg if k not in TOP_KEYS]
    return yaml.safe_dump({k: plain(cfg[k]) for k in order}, sort_keys=False, default_flow_style=None)
