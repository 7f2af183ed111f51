"""What a run directory and its checkpoint tell about a trained model, read without training: the metrics
per epoch, the summary, the class names, the preprocessing and what the model's outputs are.

Newer checkpoints may record class names and the preprocessing in ``meta["data"]``; for older ones they are
recovered from the data set named in the stored config when its files are still there.
"""
import csv
import json
import math
import os

from cnnframe.config import make_dataset, split_seed
from cnnframe.errors import ConfigError, DataError, UserError

#: loss types whose models output logits, so probabilities are their softmax
SOFTMAX_LOSSES = ("softmax_cross_entropy", "cross_entropy")


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


def _dataset(cfg):
    """The data set object of a stored config (cheap: nothing loads), or None when it cannot be made."""
    try:
        return make_dataset(cfg["data"], split_seed(cfg))
    except (ConfigError, DataError, KeyError, TypeError, ValueError, OSError):
        return None


def class_names(meta, cfg=None):
    """The class names of a checkpoint's model, or None (classes are then 0..K-1).

    From ``meta["data"]["class_names"]`` when recorded, else from the stored config's data set (``class_names()``)
    while its files are still in place; a list whose length is not the number of classes is ignored.
    """
    data = (meta or {}).get("data") or {}
    names = data.get("class_names")
    if names is None and cfg:
        ds = _dataset(cfg)
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


def preprocessing(meta, cfg=None):
    """What raw inputs go through before the model: ``offset`` and ``scale`` (inputs fed as ``(x - offset) *
    scale``), plus how files are decoded (e.g. an image data set's mode and size) when that is known."""
    data = (meta or {}).get("data") or {}
    pre = {"offset": float(data.get("offset", 0.0)), "scale": float(data.get("scale", 1.0))}
    decode = data.get("preprocessing")
    if decode is None and cfg:
        ds = _dataset(cfg)
        describe = getattr(ds, "preprocessing", None)
        decode = describe() if callable(describe) else None
    if decode:
        pre["decode"] = decode
    return pre


def output_kind(cfg):
    """``"probabilities"`` for a model trained with softmax cross-entropy (or of unknown loss: the default),
    else ``"raw"``."""
    loss = ((cfg or {}).get("loss") or {}).get("type", SOFTMAX_LOSSES[0])
    return "probabilities" if loss in SOFTMAX_LOSSES else "raw"
