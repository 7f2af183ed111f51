"""Seeded stratified splits of a data source, the input preprocessing, random-shift augmentation, batching.

Data sources live in ``cnnframe/datasets/`` (one module each; see ``datasets/base.py``).
``split_dataset`` makes the split every data set shares: a stratified test part
(``train_test_split(..., test_size, stratify=y, random_state=seed)``), and a stratified validation part
carved from the rest.  Inputs are fed as ``preprocess(X, offset, scale)``; the trainer saves offset and
scale in checkpoints, so ``predict`` applies the same function to new samples.
"""
import math

import numpy as np
from sklearn.model_selection import train_test_split

from cnnframe.errors import DataError
from cnnframe.registry import DATASETS


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
    try:
        Xs = preprocess(X, offset, scale, dtype)
    except DataError as e:
        raise DataError(f"the samples of {name or type(ds).__name__}: {e}", key="data") from None
    return Splits((Xs[tr], y[tr]), (Xs[va], y[va]), (Xs[te], y[te]), num_classes, offset, scale,
                  name=name or getattr(ds, "registered_name", None) or type(ds).__name__)


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
    n, c, h, w = x.shape
    dy = rng.integers(-k, k + 1, size=n)
    dx = rng.integers(-k, k + 1, size=n)
    padded = np.zeros((n, c, h + 2 * k, w + 2 * k), dtype=x.dtype)
    padded[:, :, k:k + h, k:k + w] = x
    out = np.empty_like(x)
    for a in range(-k, k + 1):
        for b in range(-k, k + 1):
            sel = np.flatnonzero((dy == a) & (dx == b))
            if sel.size:
                out[sel] = padded[sel, :, k - a:k - a + h, k - b:k - b + w]
    return out


def batches(n, batch_size, rng=None):
    """Index arrays covering range(n): shuffled by ``rng`` (if given), ceil(n / batch_size) batches of
    near-equal size (sizes differ by at most one, so no tiny last batch upsets BatchNorm)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    steps = max(1, math.ceil(n / batch_size))
    return np.array_split(order, steps)
