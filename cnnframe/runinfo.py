"""What a run directory and its checkpoint tell about a trained model, read without training: the metrics
per epoch, the summary, the class names, the preprocessing and what the model's outputs are.

Newer checkpoints may record class names and the preprocessing in ``meta["data"]``; for older ones they are
recovered from the data set named in the stored config when its files are still there.
"""
import csv
import json
import math
import os

from cnnframe.config import build_dataset, build_loss
from cnnframe.errors import ConfigError, DataError, UserError


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
    data = (meta or {}).get("data") or {}
    names = data.get("class_names")
    if names is None and cfg:
        ds = _dataset(cfg, plugins)
        try:
            names = ds.class_names() if ds is not None else None
        except (DataError, OSError, ValueError):
            names = None
    if names is None:
        return None
    k = data.get("num_classes")
    if k is not None and len(names) != int(k):
        return None
    return [str(n) for n in names]


def preprocessing(meta, cfg=None, plugins=()):
    """What raw inputs go through before the model: ``offset`` and ``scale`` (inputs fed as ``(x - offset) *
    scale``), plus how files are decoded (e.g. an image data set's mode and size) when that is known."""
    data = (meta or {}).get("data") or {}
    pre = {"offset": float(data.get("offset", 0.0)), "scale": float(data.get("scale", 1.0))}
    decode = data.get("preprocessing")
    if decode is None and cfg:
        ds = _dataset(cfg, plugins)
        describe = getattr(ds, "preprocessing", None)
        decode = describe() if callable(describe) else None
    if decode:
        pre["decode"] = decode
    return pre


def output_kind(cfg, plugins=()):
    """``"probabilities"`` for a model whose loss scores classes by a softmax of its outputs (softmax
    cross-entropy; also a run without a stored loss: the default), else ``"raw"`` (``Loss.score_activation``)."""
    if not (cfg or {}).get("loss"):
        return "probabilities"
    return "probabilities" if build_loss(cfg, plugins).score_activation == "softmax" else "raw"
