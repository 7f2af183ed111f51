"""``dataset: npz``: images and labels from an ``.npz`` file."""
import os
import zipfile

import numpy as np

from cnnframe.datasets.base import Dataset
from cnnframe.errors import DataError
from cnnframe.io import npz_entry, open_npz
from cnnframe.registry import register_dataset


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
            npz = open_npz(self.path)
        except (OSError, ValueError) as e:  # empty, a single .npy array, other bytes: said in plain words
            raise DataError(f"cannot read {self.path}: {e}; expected an .npz with arrays {self.x_key!r} and "
                            f"{self.y_key!r} (np.savez(path, X=X, y=y))", key="data.path") from None
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
            return npz_entry(npz, name)
        except ValueError as e:  # object arrays (never unpickled), corrupt data
            raise DataError(f"cannot read {self.path}: {e}", key="data.path") from None

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
