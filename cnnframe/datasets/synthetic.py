"""``dataset: synthetic``: seeded random images of any shape, for benchmarks and smoke tests (no download)."""
import numbers

import numpy as np

from cnnframe.datasets.base import Dataset
from cnnframe.errors import DataError
from cnnframe.registry import register_dataset


@register_dataset("synthetic")
class Synthetic(Dataset):
    """``samples`` images of per-sample ``shape`` (C, H, W) in ``classes`` balanced classes, drawn from ``seed``.

    Each class c has a fixed random template T_c ~ N(0, 1); sample n is ``X[n] = T_{y_n} + N(0, noise²)``
    with labels ``y_n = n mod classes`` in a seeded random order, so a model can learn the task and the
    stratified split has every class.  The data is already centred and scaled, so it is fed as is.
    """

    def __init__(self, samples=1024, shape=(3, 32, 32), classes=10, noise=1.0, seed=0):
        self.samples = _count(samples, "samples", 2)
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 3 or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape
        ):
            raise DataError(f"shape must be a list of three positive integers [C, H, W], got {shape!r}",
                            key="data.shape")
        self.shape = tuple(int(s) for s in shape)
        self.classes = _count(classes, "classes", 2)
        if self.classes > self.samples:
            raise DataError(f"classes ({self.classes}) must not exceed samples ({self.samples})", key="data.classes")
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < float("inf"):
            raise DataError(f"noise must be a finite number >= 0, got {noise!r}", key="data.noise")
        self.noise = float(noise)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {seed!r}", key="data.seed")
        self.seed = int(seed)

    def describe(self):
        return self.shape, self.classes

    def load(self):
        rng = np.random.default_rng([self.seed, 0x5D17])
        templates = rng.standard_normal((self.classes,) + self.shape)
        y = rng.permutation(np.arange(self.samples, dtype=np.int64) % self.classes)
        X = templates[y]
        X += self.noise * rng.standard_normal(X.shape)
        return X, y


def _count(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}", key=f"data.{name}")
    return int(value)
