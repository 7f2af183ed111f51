"""The fixed part of a config: the sections, their keys, types, ranges and defaults.

A ``Field`` declares one key in the words of the shared argument checks (``cnnframe/checks.py``), so
a config value and a constructor argument are checked, and reported, the same way.  The keys of
registered things (a layer's, a loss's, ...) are not listed here: they are their constructors'
arguments (see ``components.py``).
"""
from cnnframe.checks import check_bool, check_choice, check_int, check_number, check_str, did_you_mean, show
from cnnframe.errors import ConfigError

__all__ = ["Field", "TOP_KEYS", "MONITORS", "DATA_FIELDS", "AUGMENT_FIELDS", "TTA_FIELDS", "TRAINER_FIELDS",
           "EARLY_STOPPING_FIELDS", "CHECKPOINT_FIELDS", "mapping", "check_fields"]


class Field:
    """One fixed config key: its kind (int, float, bool, str), default, bounds or choices."""

    def __init__(self, kind, default, gt=None, ge=None, lt=None, le=None, choices=None, nullable=False, doc=""):
        self.kind, self.default = kind, default
        self.gt, self.ge, self.lt, self.le = gt, ge, lt, le
        self.choices, self.nullable, self.doc = choices, nullable, doc

    def check(self, value, key):
        """The value, normalised (``3.0`` → ``3`` for an int); ConfigError at ``key`` otherwise."""
        try:
            if self.choices is not None:
                return check_choice(None, value, None, self.choices, nullable=self.nullable)
            if self.kind is int:
                return check_int(None, value, None, ge=self.ge, le=self.le, nullable=self.nullable, allow_float=True)
            if self.kind is float:
                return check_number(None, value, None, gt=self.gt, ge=self.ge, lt=self.lt, le=self.le,
                                    nullable=self.nullable)
            if self.kind is bool:
                return check_bool(None, value, None, nullable=self.nullable)
            return check_str(None, value, None, nullable=self.nullable)
        except ValueError as e:
            raise ConfigError(str(e), key=key) from None


TOP_KEYS = ("plugins", "data", "model", "loss", "optimizer", "schedule", "trainer")
MONITORS = ("val_loss", "val_acc", "train_loss", "train_acc")

DATA_FIELDS = {
    "dataset": Field(str, "digits", doc="registered dataset name (digits, npz, or a plugin's)"),
    "seed": Field(int, None, ge=0, nullable=True, doc="split seed; null = trainer.seed"),
    "test_size": Field(float, 0.2, gt=0.0, le=0.9, doc="fraction held out for the test"),
    "val_fraction": Field(float, 0.1, ge=0.0, le=0.9, doc="fraction of the training part used for validation"),
}
AUGMENT_FIELDS = {
    "shift": Field(int, 0, ge=0, doc="random shift of up to ±shift pixels per sample, zero fill"),
    "rotate": Field(float, 0.0, ge=0.0, le=180.0, doc="random rotation of up to ±rotate degrees per sample"),
    "scale": Field(float, 0.0, ge=0.0, lt=1.0, doc="random zoom in [1 - scale, 1 + scale] per sample"),
}
TTA_FIELDS = {
    "shift": Field(int, 0, ge=0, doc="evaluation averages the class scores of the (2·shift+1)² shifted copies"),
}
TRAINER_FIELDS = {
    "epochs": Field(int, 10, ge=1),
    "batch_size": Field(int, 64, ge=1),
    "seed": Field(int, 0, ge=0),
    "threads": Field(int, None, ge=1, nullable=True, doc="OpenMP threads; null = CNNFRAME_NUM_THREADS or all cores "
                                                         "(under mpiexec: the node's cores / its processes)"),
    "dtype": Field(str, "float32", choices=("float32", "float64")),
    "run_dir": Field(str, "runs", doc="directory that holds the run directories"),
    "name": Field(str, None, nullable=True, doc="run name; null = the config file's name"),
    "test_checkpoint": Field(str, "last", choices=("last", "best"), doc="model whose test metrics are reported"),
    "memory_limit": Field(float, 8.0, gt=0.0, nullable=True,
                          doc="GiB the model's estimated memory at the batch size may reach; null = no limit"),
    "ema_decay": Field(float, None, gt=0.0, lt=1.0, nullable=True,
                       doc="evaluate and save a moving average of the weights with this decay; null = off"),
    "batch_chunks": Field(int, None, ge=1, nullable=True,
                          doc="data-parallel: fixed sample ranges of each batch whose sums are added in a fixed "
                              "order; null = the number of processes"),
}
EARLY_STOPPING_FIELDS = {
    "patience": Field(int, None, ge=1, nullable=True, doc="epochs without improvement before stopping; null = off"),
    "monitor": Field(str, "val_loss", choices=MONITORS),
    "min_delta": Field(float, 0.0, ge=0.0),
}
CHECKPOINT_FIELDS = {
    "every": Field(int, 1, ge=1, doc="write last.npz every N epochs (and after the last one, and with every best.npz)"),
    "best": Field(bool, True, doc="keep best.npz, the model with the best monitored value"),
    "monitor": Field(str, "val_loss", choices=MONITORS),
}


def mapping(value, key, allow_none=True):
    """``value`` as a mapping with string keys (``{}`` for null); ConfigError at ``key`` otherwise."""
    if value is None and allow_none:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"must be a mapping of keys to values, got {show(value)}", key=key)
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(f"keys must be strings, got {k!r}", key=key)
    return value


def check_fields(section, fields, key, extra_ok=()):
    """Fill defaults and check the fixed keys of a mapping; unknown keys are errors unless in extra_ok."""
    known = list(fields) + list(extra_ok)
    for k in section:
        if k not in known:
            raise ConfigError(f"unknown key {k!r}{did_you_mean(k, known)} (known: {', '.join(known)})",
                              key=f"{key}.{k}")
    return {name: field.check(section.get(name, field.default), f"{key}.{name}") for name, field in fields.items()}
