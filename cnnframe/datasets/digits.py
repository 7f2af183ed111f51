"""``dataset: digits``: scikit-learn's bundled 8×8 handwritten digits (no download)."""
import numpy as np
from sklearn.datasets import load_digits

from cnnframe.datasets.base import Dataset
from cnnframe.registry import register_dataset


@register_dataset("digits")
class Digits(Dataset):
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes, pixel values 0..16); fed as X/16."""

    def describe(self):
        return (1, 8, 8), 10

    def load(self):
        d = load_digits()
        return d.images.reshape(-1, 1, 8, 8).astype(np.float64), d.target.astype(np.int64)

    def transform(self, X_train):
        return 0.0, 1.0 / 16.0
