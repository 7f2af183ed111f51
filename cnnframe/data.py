"""Seeded stratified splits of a data source, random-shift augmentation, and batching.

Data sources live in ``cnnframe/datasets/`` (one module each; see ``datasets/base.py``).
``load_splits`` makes the split every data set shares: a stratified test part
(``train_test_split(..., test_size, stratify=y, random_state=seed)``), and a stratified validation part
carved from the rest.
"""
import math

import numpy as np

from cnnframe import ops
from cnnframe.errors import DataError


class Splits:
    """Train / validation / test arrays ready to feed: X (N, C, H, W) in the model dtype, y int64 (N,)."""

    def __init__(self, train, val, test, num_classes, offset=0.0, scale=1.0, name="data"):
        self.train, self.val, self.test = train, val, test
        self.num_classes = int(num_classes)
        self.offset, self.scale = float(offset), float(scale)
        self.name = name

    @property
    def input_shape(self):
        return tuple(self.train[0].shape[1:])

    def preprocess(self, X, dtype=None):
        """Apply the training transform to raw inputs: (X - offset) * scale."""
        X = np.asarray(X, dtype=np.float64)
        dtype = dtype or self.train[0].dtype
        return ((X - self.offset) * self.scale).astype(dtype)

    def __repr__(self):
        return (f"{self.name}: train {len(self.train[1])}, val {len(self.val[1])}, test {len(self.test[1])}; "
                f"input {self.input_shape}; {self.num_classes} classes")


def split_indices(y, seed, test_size=0.2, val_fraction=0.1):
    """Stratified (train, val, test) index arrays; the validation part is carved from the training part."""
    from sklearn.model_selection import train_test_split

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


def load_splits(data_cfg, seed, dtype="float32"):
    """Load the data set named in a resolved ``data`` config section and split it with ``seed``."""
    from cnnframe.config import make_dataset

    ds = make_dataset(data_cfg, seed)
    return split_dataset(ds, seed, data_cfg["test_size"], data_cfg["val_fraction"], dtype, name=data_cfg["dataset"])


def split_dataset(ds, seed, test_size=0.2, val_fraction=0.1, dtype="float32", name=None):
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
    Xs = ((X - offset) * scale).astype(dtype)
    return Splits((Xs[tr], y[tr]), (Xs[va], y[va]), (Xs[te], y[te]), num_classes, offset, scale,
                  name=name or getattr(ds, "registered_name", None) or type(ds).__name__)


def load_dataset(name="digits", seed=0, test_size=0.2, val_fraction=0.1, dtype="float32", **params):
    """Python-side shortcut: ``load_dataset("digits", seed=0)`` → Splits."""
    from cnnframe.registry import DATASETS

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
