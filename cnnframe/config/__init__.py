"""Configs: YAML → a checked, resolved config and the objects it describes, built once.

    setup = cnnframe.config.load("configs/digits.yaml", ["trainer.epochs=5"])
    setup.config        # the resolved config: every default filled in, what a run saves
    setup.model, setup.loss, setup.optimizer, setup.schedule, setup.load_data()

One job per module: ``yamlfile`` (YAML with line numbers, ``--set``, key paths), ``schema`` (the
fixed sections and their keys), ``components`` (the sections that name a registered thing: data,
loss, optimizer, schedule), ``model_section`` (layers, shapes, memory), ``setup`` (the whole config,
resolved and built).  Every problem is one ``ConfigError`` naming the file, the line when known and
the key path (``model.layers[2].kernel_size``).  Plugins: ``cnnframe/plugins.py``.
"""
from cnnframe.config.schema import MONITORS, TOP_KEYS
from cnnframe.config.setup import (
    Setup,
    build_dataset,
    build_layers,
    build_loss,
    build_optimizer,
    build_schedule,
    dump_config,
    load,
    load_config,
    load_data,
    load_text,
    resolve,
    resolve_config,
    resolve_text,
    split_seed,
)
from cnnframe.config.yamlfile import apply_override, parse_yaml, split_key_path
from cnnframe.errors import ConfigError

__all__ = ["Setup", "load", "load_text", "resolve", "load_config", "resolve_config", "resolve_text", "dump_config",
           "build_layers", "build_loss", "build_optimizer", "build_schedule", "build_dataset", "load_data",
           "split_seed", "apply_override", "parse_yaml",
           "split_key_path", "ConfigError", "MONITORS", "TOP_KEYS"]
