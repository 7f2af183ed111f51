"""``dataset: synthetic``: seeded, learnable random images of a given shape."""
import numpy as np
import pytest

from cnnframe.config import resolve_text
from cnnframe.data import load_dataset
from cnnframe.datasets.synthetic import Synthetic
from cnnframe.errors import ConfigError, DataError


def test_shape_classes_and_seed():
    ds = Synthetic(samples=50, shape=(2, 5, 7), classes=5, seed=3)
    assert ds.describe() == ((2, 5, 7), 5)
    X, y = ds.load()
    assert X.shape == (50, 2, 5, 7) and X.dtype == np.float64 and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), [10] * 5)  # balanced
    X2, y2 = Synthetic(samples=50, shape=(2, 5, 7), classes=5, seed=3).load()
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    X3, _ = Synthetic(samples=50, shape=(2, 5, 7), classes=5, seed=4).load()
    assert not np.array_equal(X, X3)


def test_classes_are_separable_by_their_templates():
    """Each sample is its class template plus noise: the nearest class mean is its class."""
    X, y = Synthetic(samples=200, shape=(1, 6, 6), classes=4, noise=0.5, seed=0).load()
    flat = X.reshape(len(X), -1)
    means = np.stack([flat[y == c].mean(axis=0) for c in range(4)])
    nearest = np.argmin(((flat[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    assert np.mean(nearest == y) > 0.95


def test_noise_zero_gives_the_templates():
    X, y = Synthetic(samples=6, shape=(1, 2, 2), classes=3, noise=0.0).load()
    for c in range(3):
        rows = X[y == c]
        assert np.array_equal(rows[0], rows[1])


@pytest.mark.parametrize("kwargs, needle", [
    ({"samples": 1}, "samples must be an integer >= 2"),
    ({"samples": 2.5}, "samples"),
    ({"shape": (3, 32)}, "shape must be a list of three positive integers"),
    ({"shape": (3, 0, 4)}, "shape"),
    ({"shape": "3x32x32"}, "shape"),
    ({"classes": 1}, "classes must be an integer >= 2"),
    ({"samples": 4, "classes": 5}, "must not exceed samples"),
    ({"noise": -1.0}, "noise must be a finite number >= 0"),
    ({"noise": float("nan")}, "noise"),
    ({"seed": -2}, "seed must be a non-negative integer"),
])
def test_bad_parameters_name_the_key(kwargs, needle):
    with pytest.raises(DataError, match=needle):
        Synthetic(**kwargs)


def test_split_and_config():
    s = load_dataset("synthetic", seed=1, test_size=0.25, val_fraction=0.0, samples=40, shape=[3, 4, 4], classes=4)
    assert s.input_shape == (3, 4, 4) and len(s.train[1]) == 30 and len(s.test[1]) == 10
    assert s.train[0].dtype == np.float32
    text = ("data: {dataset: synthetic, samples: 40, shape: [3, 4, 4], classes: 4}\n"
            "model: {layers: [{type: flatten}, {type: dense, out_features: 4}]}\n")
    cfg = resolve_text(text)
    assert cfg["data"]["shape"] == [3, 4, 4] and cfg["data"]["noise"] == 1.0
    with pytest.raises(ConfigError, match="data.shape"):
        resolve_text(text.replace("[3, 4, 4]", "[3, 4]"))
