"""The interface every data source implements (register one with ``@cnnframe.register_dataset("name")``).

- ``describe()`` → (per-sample input shape, number of classes), cheap, so a config is checked before
  any data loads;
- ``load()`` → (X of shape (N, C, H, W), integer labels y of shape (N,)), raw values;
- ``transform(X_train)`` → (offset, scale): inputs are fed as ``(X - offset) * scale``; computed from the
  training part only and saved in checkpoints so ``predict`` preprocesses new inputs the same way;
- ``class_names()`` (optional) → one name per class, or None when the classes are just 0..K-1;
- ``preprocessing()`` (optional) → how a file becomes a raw sample, for sources that read files a user may
  also give ``predict`` (``image_folder``: ``decode_settings``), or None for arrays.

The transform, the decoding and the class names are stored with every checkpoint (``data.Preprocessing``).
"""
import numpy as np

from cnnframe.errors import DataError

#: the ``normalize`` choices of the file-based sources (see ``scalar_normalization``)
NORMALIZE = ("none", "standardize", "unit")


class Dataset:
    """Base class of registered data sets (see the module docstring for the methods)."""

    #: constructor arguments that are file paths (made absolute relative to the config file)
    path_keys = ()

    def describe(self):
        raise NotImplementedError

    def load(self):
        raise NotImplementedError

    def transform(self, X_train):
        return 0.0, 1.0

    def class_names(self):
        return None

    def preprocessing(self):
        return None


def scalar_normalization(X_train, normalize, unit=None):
    """(offset, scale) for ``normalize``: ``none`` → (0, 1); ``standardize`` → (mean, 1/std);
    ``unit`` → (0, 1/unit), ``unit`` defaulting to max|X|.  Scalars over the whole training part."""
    if normalize == "standardize":
        mean, std = float(np.mean(X_train, dtype=np.float64)), float(np.std(X_train, dtype=np.float64))
        return mean, (1.0 / std if std > 0 else 1.0)
    if normalize == "unit":
        if unit is None:  # |min| and |max| in Python floats: np.abs would overflow on int8's -128
            unit = max(abs(float(np.min(X_train))), abs(float(np.max(X_train)))) if np.size(X_train) else 0.0
        m = float(unit)
        return 0.0, (1.0 / m if m > 0 else 1.0)
    return 0.0, 1.0


def count_classes(y, num_classes, source, key="data"):
    """The number of classes of integer labels ``y`` (``num_classes``, or max(y) + 1 when None); a DataError naming
    ``source`` when there are fewer than 2 samples (no train/test split) or fewer than 2 classes."""
    if len(y) < 2:
        raise DataError(f"{source} has {len(y)} sample(s); too few to split into train and test", key=key)
    k = num_classes if num_classes is not None else int(np.max(y)) + 1
    if k < 2:
        raise DataError(f"{source}: all labels are 0; need at least 2 classes", key=key)
    return k
