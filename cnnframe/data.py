"""Data sets by name, seeded stratified splits, and random-shift augmentation.

A data set is a registered class (``@cnnframe.register_dataset("name")``) with:

- ``describe()`` → (per-sample input shape, number of classes), cheap, so a config is checked before
  any data loads;
- ``load()`` → (X of shape (N, C, H, W), integer labels y of shape (N,)), raw values;
- ``transform(X_train)`` → (offset, scale): inputs are fed as ``(X - offset) * scale``; computed from the
  training part only and saved in checkpoints so ``predict`` preprocesses new inputs the same way.

``load_splits`` then makes the split every data set shares: a stratified test part
(``train_test_split(..., test_size, stratify=y, random_state=seed)``), and a stratified validation part
carved from the rest.
"""
import math
import os
import zipfile

import numpy as np

from cnnframe.errors import DataError
from cnnframe.registry import register_dataset


class Dataset:
    """Base class of registered data sets (see the module docstring for the three methods)."""

    #: constructor arguments that are file paths (made absolute relative to the config file)
    path_keys = ()

    def describe(self):
        raise NotImplementedError

    def load(self):
        raise NotImplementedError

    def transform(self, X_train):
        return 0.0, 1.0


@register_dataset("digits")
class Digits(Dataset):
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes, pixel values 0..16); fed as X/16."""

    def describe(self):
        return (1, 8, 8), 10

    def load(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images.reshape(-1, 1, 8, 8).astype(np.float64), d.target.astype(np.int64)

    def transform(self, X_train):
        return 0.0, 1.0 / 16.0


NORMALIZE = ("none", "standardize", "unit")


@register_dataset("npz")
class NpzData(Dataset):
    """Images from an ``.npz`` file: ``X`` (N, C, H, W) or (N, H, W) and integer labels ``y`` (N,).

    normalize: ``none``; ``standardize`` → (X - mean) / std; ``unit`` → X / max|X|; statistics are
    scalars over the training part.  ``num_classes`` defaults to max(y) + 1.
    """

    path_keys = ("path",)

    def __init__(self, path, normalize="none", num_classes=None, x_key="X", y_key="y"):
        if not isinstance(path, str) or not path:
            raise DataError(f"path must be the path of an .npz file, got {path!r}", key="data.path")
        if normalize not in NORMALIZE:
            raise DataError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}", key="data.normalize")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise DataError(f"num_classes must be an integer >= 2 or null, got {num_classes!r}", key="data.num_classes")
        for k, v in (("x_key", x_key), ("y_key", y_key)):
            if not isinstance(v, str) or not v:
                raise DataError(f"{k} must be an array name, got {v!r}", key=f"data.{k}")
        self.path, self.normalize, self.num_classes = path, normalize, num_classes
        self.x_key, self.y_key = x_key, y_key

    # -- reading ---------------------------------------------------------------------------------
    def _open(self):
        if not os.path.exists(self.path):
            raise DataError(f"file not found: {self.path}", key="data.path")
        if os.path.isdir(self.path):
            raise DataError(f"is a directory, expected an .npz file: {self.path}", key="data.path")
        try:
            npz = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot read {self.path} as .npz: {e}", key="data.path") from None
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{self.path} holds a single array (.npy); expected an .npz with arrays "
                            f"{self.x_key!r} and {self.y_key!r} (np.savez(path, X=X, y=y))", key="data.path")
        for k in (self.x_key, self.y_key):
            if k not in npz.files:
                npz.close()
                raise DataError(f"{self.path} has no array {k!r} (arrays: {', '.join(npz.files) or 'none'})",
                                key="data.path")
        return npz

    def _x_shape(self, npz):
        """Shape of X from the .npy header, without reading the data."""
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.x_key}.npy") as fp:
                version = np.lib.format.read_magic(fp)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is not None:
                    shape, _, dtype = read(fp)
                    return tuple(shape), np.dtype(dtype)
        except (KeyError, ValueError, zipfile.BadZipFile):
            pass
        x = self._array(npz, self.x_key)
        return x.shape, x.dtype

    def _array(self, npz, name):
        try:
            return npz[name]
        except ValueError as e:  # object arrays with allow_pickle=False, corrupt data
            raise DataError(f"cannot read array {name!r} of {self.path}: {e}", key="data.path") from None

    def _check_x_shape(self, shape, dtype):
        x = self.x_key
        if len(shape) not in (3, 4):
            raise DataError(f"array {x!r} of {self.path} has shape {shape}; expected (N, C, H, W) or (N, H, W)",
                            key="data.path")
        if min(shape) < 1:
            raise DataError(f"array {x!r} of {self.path} has an empty dimension: shape {shape}", key="data.path")
        if dtype.kind not in "biuf":
            raise DataError(f"array {x!r} of {self.path} has dtype {dtype}; expected numbers", key="data.path")
        return (1,) + tuple(shape[1:]) if len(shape) == 3 else tuple(shape[1:])

    def _labels(self, y, n):
        name = self.y_key
        if y.ndim != 1:
            raise DataError(f"array {name!r} of {self.path} has shape {y.shape}; expected ({n},) class labels",
                            key="data.path")
        if y.shape[0] != n:
            raise DataError(f"{self.path}: {self.x_key!r} has {n} samples but {name!r} has {y.shape[0]} labels",
                            key="data.path")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise DataError(f"array {name!r} of {self.path} holds non-integer labels; expected class indices "
                                f"0..K-1", key="data.path")
        elif y.dtype.kind not in "biu":
            raise DataError(f"array {name!r} of {self.path} has dtype {y.dtype}; expected integer class labels",
                            key="data.path")
        y = y.astype(np.int64)
        if y.size and y.min() < 0:
            raise DataError(f"array {name!r} of {self.path} has label {int(y.min())} < 0; labels must be 0..K-1",
                            key="data.path")
        k = self.num_classes
        if k is not None and y.size and y.max() >= k:
            raise DataError(f"array {name!r} of {self.path} has label {int(y.max())}, out of range for "
                            f"num_classes={k} (labels must be 0..{k - 1})", key="data.path")
        return y

    # -- the Dataset interface ---------------------------------------------------------------------
    def describe(self):
        with self._open() as npz:
            shape, dtype = self._x_shape(npz)
            sample = self._check_x_shape(shape, dtype)
            y = self._labels(self._array(npz, self.y_key), shape[0])
        if y.size < 2:
            raise DataError(f"{self.path} has {y.size} sample(s); too few to split into train and test",
                            key="data.path")
        k = self.num_classes if self.num_classes is not None else int(y.max()) + 1
        if k < 2:
            raise DataError(f"{self.path}: all labels are 0; need at least 2 classes", key="data.path")
        return sample, k

    def load(self):
        with self._open() as npz:
            X = self._array(npz, self.x_key)
            self._check_x_shape(X.shape, X.dtype)
            y = self._labels(self._array(npz, self.y_key), X.shape[0])
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 3:
            X = X[:, None]
        if not np.all(np.isfinite(X)):
            raise DataError(f"array {self.x_key!r} of {self.path} holds NaN or infinite values", key="data.path")
        return X, y

    def transform(self, X_train):
        if self.normalize == "standardize":
            mean, std = float(X_train.mean()), float(X_train.std())
            return mean, (1.0 / std if std > 0 else 1.0)
        if self.normalize == "unit":
            m = float(np.abs(X_train).max())
            return 0.0, (1.0 / m if m > 0 else 1.0)
        return 0.0, 1.0


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
