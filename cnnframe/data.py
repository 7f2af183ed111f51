"""Seeded stratified splits of a data source, the input preprocessing, random-shift augmentation, batching.

Data sources live in ``cnnframe/datasets/`` (one module each; see ``datasets/base.py``).
``split_dataset`` makes the split every data set shares: a stratified test part
(``train_test_split(..., test_size, stratify=y, random_state=seed)``), and a stratified validation part
carved from the rest.  Inputs are fed as ``preprocess(X, offset, scale)``; a ``Preprocessing`` holds offset,
scale and how files are decoded, travels with the model (``Sequential.preprocessing``) into every checkpoint
(``meta["data"]["preprocessing"]``, see ``store_inputs``) and into ONNX metadata, so ``predict`` and exported
models apply the same function to new inputs.
"""
import math

import numpy as np
from sklearn.model_selection import train_test_split

from cnnframe import ops
from cnnframe.datasets.image_folder import decode_settings
from cnnframe.errors import DataError
from cnnframe.registry import DATASETS

#: what ``preprocess`` computes, as recorded with a model
FORMULA = "(x - offset) * scale"


def preprocess(X, offset, scale, dtype):
    """Raw inputs as the model is fed them: ``((X - offset) * scale)`` computed in float64, cast to ``dtype``.

    DataError when a value is not finite *after* the cast (NaN, infinite, or beyond float32's range,
    about 3.4e38: 1e39 is finite in float64 but infinite in float32)."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = ((np.asarray(X, dtype=np.float64) - float(offset)) * float(scale)).astype(dtype)
    if not np.all(np.isfinite(out)):
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise DataError(f"{bad} input value(s) are not finite as {dtype} after preprocessing ((x - {offset:g}) * "
                        f"{scale:g}): NaN, infinite, or beyond {dtype}'s range (largest {np.finfo(dtype).max:.3g})")
    return out


def _finite(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"preprocessing {name} must be a finite number, got {value!r}")
    return float(value)


class Preprocessing:
    """What raw inputs go through before the model: samples are fed as ``preprocess(x, offset, scale, dtype)``
    = ``(x - offset) * scale``, where a raw sample x (C, H, W) is an array in the data set's units, or, when
    ``decode`` is given, what a file becomes: for images ``datasets.image_folder.decode_settings(mode, size)``
    (colour mode, channel order, resize), read by ``read_image``.

    Stored as ``to_dict()`` (docs/cli.md, "What a checkpoint records")::

        {"formula": "(x - offset) * scale", "offset": 0.0, "scale": 0.00392..., "layout": "NCHW",
         "decode": {"kind": "image", "mode": "grayscale", "size": [28, 28], ...}}    # decode: image sources only
    """

    def __init__(self, offset=0.0, scale=1.0, decode=None):
        self.offset, self.scale = _finite(offset, "offset"), _finite(scale, "scale")
        if decode is not None and not isinstance(decode, dict):
            raise TypeError(f"preprocessing decode must be a dict (decode_settings(...)) or None, got {decode!r}")
        self.decode = dict(decode) if decode else None

    @classmethod
    def for_images(cls, mode="grayscale", size=None, offset=0.0, scale=1 / 255):
        """Image files read in ``mode`` (``grayscale`` or ``rgb``), resized to ``size`` = (H, W) when given, pixels
        0..255 fed as ``(x - offset) * scale`` (default: to [0, 1], as ``image_folder``'s ``normalize: unit``)."""
        return cls(offset, scale, decode_settings(mode, size))

    def __call__(self, X, dtype="float32"):
        """Raw inputs ``X`` (N, C, H, W) as the model is fed them, in ``dtype``."""
        return preprocess(X, self.offset, self.scale, dtype)

    def to_dict(self):
        """The JSON-ready record stored in checkpoints and ONNX metadata."""
        d = {"formula": FORMULA, "offset": self.offset, "scale": self.scale, "layout": "NCHW"}
        if self.decode is not None:
            d["decode"] = dict(self.decode)
        return d

    @classmethod
    def from_dict(cls, d):
        """The inverse of ``to_dict``; ValueError naming the entry that is not one ``to_dict`` writes."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing must be a JSON object, got {type(d).__name__}")
        if d.get("formula", FORMULA) != FORMULA:
            raise ValueError(f"preprocessing formula {d['formula']!r} is not {FORMULA!r}")
        decode = d.get("decode")
        if decode is not None:
            if not isinstance(decode, dict):
                raise ValueError(f"preprocessing decode must be a JSON object, got {type(decode).__name__}")
            if decode.get("kind") == "image":
                try:
                    decode_settings(decode.get("mode"), decode.get("size"))
                except DataError as e:
                    raise ValueError(f"preprocessing decode: {e}") from None
        return cls(d.get("offset", 0.0), d.get("scale", 1.0), decode)

    @classmethod
    def of(cls, value):
        """``value`` itself (a Preprocessing), or one made from its dict (``from_dict``)."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    @classmethod
    def from_meta(cls, meta):
        """The preprocessing a checkpoint's ``meta`` records, or None when it records none.  Checkpoints written
        before ``meta["data"]["preprocessing"]`` existed give their ``offset`` and ``scale`` (no ``decode``)."""
        data = meta.get("data") if isinstance(meta, dict) else None
        if not isinstance(data, dict):
            return None
        if data.get("preprocessing") is not None:
            return cls.from_dict(data["preprocessing"])
        if "offset" in data or "scale" in data:
            return cls(data.get("offset", 0.0), data.get("scale", 1.0))
        return None

    def describe(self):
        """One line for people: the formula with its numbers, and how files are read."""
        text = f"inputs fed as (x - {self.offset:.6g}) * {self.scale:.6g}"
        d = self.decode
        if d is not None and d.get("kind") == "image":
            size = d.get("size")
            text += (f"; image files read as {d.get('mode')}, "
                     + (f"resized to {size[1]}×{size[0]}" if size else "not resized") + ", pixel values 0-255")
        elif d is not None:
            text += f"; files decoded as {d.get('kind')!r}"
        return text

    def __eq__(self, other):
        return isinstance(other, Preprocessing) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"Preprocessing(offset={self.offset!r}, scale={self.scale!r}, decode={self.decode!r})"


def check_class_names(names, num_classes, what="class_names"):
    """``names`` as a list of strings, one per class; ValueError otherwise."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"{what} must be a list of names, one per class, got {names!r}")
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise ValueError(f"{what} has {len(names)} names for {num_classes} classes")
    return names


def store_inputs(meta, preprocessing=None, class_names=None):
    """A copy of a checkpoint's ``meta`` with ``meta["data"]`` recording ``preprocessing`` (its ``to_dict()``
    under ``"preprocessing"``; ``offset`` and ``scale`` mirrored beside it, as older checkpoints had them) and
    ``class_names``; either may be None (not recorded)."""
    if (preprocessing is None and class_names is None) or not isinstance(meta, (dict, type(None))):
        return meta  # nothing to add, or not a dict (checkpoint.write says so)
    meta = dict(meta or {})
    data = dict(meta.get("data") or {})
    if preprocessing is not None:
        pre = Preprocessing.of(preprocessing)
        data.update(offset=pre.offset, scale=pre.scale, preprocessing=pre.to_dict())
    if class_names is not None:
        data["class_names"] = list(class_names)
    meta["data"] = data
    return meta


def stored_class_names(meta, num_classes=None):
    """The class names a checkpoint's ``meta`` records (``meta["data"]["class_names"]``), or None when it records
    none or a list that is not one name per class (``num_classes``, else ``meta["data"]["num_classes"]``)."""
    data = meta.get("data") if isinstance(meta, dict) else None
    names = data.get("class_names") if isinstance(data, dict) else None
    k = num_classes if num_classes is not None else data.get("num_classes") if isinstance(data, dict) else None
    if not isinstance(names, list) or (k is not None and len(names) != int(k)):
        return None
    return [str(n) for n in names]


class Splits:
    """Train / validation / test arrays ready to feed: X (N, C, H, W) in the model dtype, y int64 (N,).

    ``preprocessing`` (a ``Preprocessing``; or ``offset`` and ``scale``) says how raw inputs became these arrays,
    ``class_names`` names the classes; the trainer hands both to the model, which stores them in its checkpoints.
    Without either, the arrays are taken as the raw inputs and nothing is recorded.
    """

    def __init__(self, train, val, test, num_classes, offset=None, scale=None, name="data", *, preprocessing=None,
                 class_names=None):
        self.train, self.val, self.test = train, val, test
        self.num_classes = int(num_classes)
        if preprocessing is None and (offset is not None or scale is not None):
            preprocessing = Preprocessing(0.0 if offset is None else offset, 1.0 if scale is None else scale)
        self.preprocessing = None if preprocessing is None else Preprocessing.of(preprocessing)
        self.class_names = None if class_names is None else check_class_names(class_names, self.num_classes)
        self.name = name

    @property
    def offset(self):
        return self.preprocessing.offset if self.preprocessing is not None else 0.0

    @property
    def scale(self):
        return self.preprocessing.scale if self.preprocessing is not None else 1.0

    @property
    def input_shape(self):
        return tuple(self.train[0].shape[1:])

    def preprocess(self, X, dtype=None):
        """Raw inputs as the training part was fed: ``preprocess(X, offset, scale, dtype)``."""
        return preprocess(X, self.offset, self.scale, dtype or self.train[0].dtype)

    def __repr__(self):
        return (f"{self.name}: train {len(self.train[1])}, val {len(self.val[1])}, test {len(self.test[1])}; "
                f"input {self.input_shape}; {self.num_classes} classes")


def split_indices(y, seed, test_size=0.2, val_fraction=0.1):
    """Stratified (train, val, test) index arrays; the validation part is carved from the training part."""
    n = len(y)
    idx = np.arange(n)
    try:
        train, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
        if val_fraction > 0:
            train, val = train_test_split(train, test_size=val_fraction, stratify=y[train], random_state=seed)
        else:
            val = idx[:0]
    except ValueError as e:
        counts = np.bincount(y)
        raise DataError(
            f"too few samples for a stratified split of {n} samples in {int((counts > 0).sum())} classes "
            f"(smallest class: {int(counts[counts > 0].min())} samples) with test_size={test_size}, "
            f"val_fraction={val_fraction}: {e}",
            key="data",
        ) from None
    return train, val, test


def split_dataset(ds, seed, test_size=0.2, val_fraction=0.1, dtype="float32", name=None):
    """Load the data source ``ds`` and split it with ``seed`` → ``Splits`` (inputs preprocessed, in ``dtype``)."""
    X, y = ds.load()
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 4 or len(y) != len(X):
        raise DataError(f"data set returned X of shape {X.shape} and y of shape {y.shape}; expected (N, C, H, W) "
                        f"and (N,)")
    shape, num_classes = ds.describe()
    if tuple(X.shape[1:]) != tuple(shape):
        raise DataError(f"data set describes samples of shape {tuple(shape)} but loaded {tuple(X.shape[1:])}")
    tr, va, te = split_indices(y, seed, test_size, val_fraction)
    offset, scale = ds.transform(X[tr])
    if not (math.isfinite(offset) and math.isfinite(scale)):
        raise DataError(f"normalisation gave offset {offset}, scale {scale}")
    pre = Preprocessing(offset, scale, ds.preprocessing())
    names = ds.class_names()
    if names is not None:
        try:
            names = check_class_names(names, num_classes, f"{type(ds).__name__}.class_names()")
        except ValueError as e:
            raise DataError(str(e)) from None
    try:
        Xs = pre(X, dtype)
    except DataError as e:
        raise DataError(f"the samples of {name or type(ds).__name__}: {e}", key="data") from None
    return Splits((Xs[tr], y[tr]), (Xs[va], y[va]), (Xs[te], y[te]), num_classes, preprocessing=pre,
                  class_names=names, name=name or getattr(ds, "registered_name", None) or type(ds).__name__)


def load_dataset(name="digits", seed=0, test_size=0.2, val_fraction=0.1, dtype="float32", **params):
    """Python-side shortcut: ``load_dataset("digits", seed=0)`` → Splits (a registered data source)."""
    ds = DATASETS.get(name)(**params)
    return split_dataset(ds, seed, test_size, val_fraction, dtype, name=name)


def random_shift(x, max_shift, rng):
    """Shift each image by its own (dy, dx) ∈ [-k, k]² drawn from ``rng``; vacated pixels are zero.

    out[n, c, i, j] = x[n, c, i - dy_n, j - dx_n] (0 outside).  x: (N, C, H, W) → a new array.
    """
    k = int(max_shift)
    if k <= 0:
        return x
    n = x.shape[0]
    dy = rng.integers(-k, k + 1, size=n)
    dx = rng.integers(-k, k + 1, size=n)
    return ops.shift_images(x, dy, dx)


def batches(n, batch_size, rng=None):
    """Index arrays covering range(n): shuffled by ``rng`` (if given), ceil(n / batch_size) batches of
    near-equal size (sizes differ by at most one, so no tiny last batch upsets BatchNorm)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    steps = max(1, math.ceil(n / batch_size))
    return np.array_split(order, steps)
