"""What a run directory and its checkpoint tell about a trained model, read without training: the metrics
per epoch, the summary, the class names, the preprocessing and what the model's outputs are.

Checkpoints record class names and the preprocessing in ``meta["data"]`` (``cnnframe.data.store_inputs``); for
older ones they are recovered from the data set named in the stored config when its files are still there.
"""
import csv
import json
import math
import os

from cnnframe.config import build_dataset, build_loss
from cnnframe.data import Preprocessing, stored_class_names
from cnnframe.errors import CheckpointError, ConfigError, DataError, UserError


def read_metrics(run_dir):
    """The rows of ``metrics.csv`` as dicts of floats (``epoch`` an int; a missing or empty value NaN); [] without
    the file.  Rows that cannot be read are skipped."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            try:
                row = {k: _number(v) for k, v in r.items() if k}
                row["epoch"] = int(row["epoch"])
            except (KeyError, TypeError, ValueError):
                continue
            rows.append(row)
    return rows


def _number(text):
    return float(text) if text not in (None, "") else math.nan


def read_summary(run_dir):
    """``summary.json`` of a run as a dict, or None when the run has none (yet)."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return summary if isinstance(summary, dict) else None


def _dataset(cfg, plugins):
    """The data set object of a stored config (cheap: nothing loads; its type resolves from the registry and
    ``plugins`` only), or None when it cannot be made."""
    try:
        return build_dataset(cfg, plugins)
    except (ConfigError, DataError, KeyError, TypeError, ValueError, OSError):
        return None


def class_names(meta, cfg=None, plugins=()):
    """The class names of a checkpoint's model, or None (classes are then 0..K-1).

    From ``meta["data"]["class_names"]`` when recorded, else from the stored config's data set (``class_names()``)
    while its files are still in place; a list whose length is not the number of classes is ignored.
    """
    meta = meta or {}
    data = meta.get("data") or {}
    if data.get("class_names") is None and cfg:
        ds = _dataset(cfg, plugins)
        try:
            names = ds.class_names() if ds is not None else None
        except (DataError, OSError, ValueError):
            names = None
        if names is not None:
            meta = {**meta, "data": {**data, "class_names": list(names)}}
    return stored_class_names(meta)


def preprocessing(meta, cfg=None, plugins=()):
    """What raw inputs go through before a checkpoint's model (a ``cnnframe.data.Preprocessing``), or None when
    the checkpoint records none (a model saved from Python without it).

    ``meta["data"]["preprocessing"]`` when recorded; checkpoints written before it give ``offset`` and ``scale``,
    and how files are decoded comes from the stored config's data set (``preprocessing()``) when it can be made.
    CheckpointError for a record that is not one cnnframe writes."""
    try:
        pre = Preprocessing.from_meta(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's recorded preprocessing is not valid: {e}") from None
    data = (meta or {}).get("data") or {}
    if pre is not None and pre.decode is None and data.get("preprocessing") is None and cfg:
        ds = _dataset(cfg, plugins)
        describe = getattr(ds, "preprocessing", None)
        decode = describe() if callable(describe) else None
        if decode:
            pre = Preprocessing(pre.offset, pre.scale, decode)
    return pre


def output_kind(cfg, plugins=()):
    """``"probabilities"`` for a model whose loss scores classes by a softmax of its outputs (softmax
    cross-entropy; also a run without a stored loss: the default), else ``"raw"`` (``Loss.score_activation``)."""
    if not (cfg or {}).get("loss"):
        return "probabilities"
    return "probabilities" if build_loss(cfg, plugins).score_activation == "softmax" else "raw"
