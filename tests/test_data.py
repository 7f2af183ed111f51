"""Data sets, splits, augmentation, batching and the preprocessing stored with a model."""
import json
import re

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from cnnframe.data import (
    Preprocessing,
    Splits,
    batches,
    load_dataset,
    preprocess,
    random_shift,
    split_dataset,
    split_indices,
    store_inputs,
    stored_class_names,
)
from cnnframe.datasets import NpzData
from cnnframe.errors import DataError
from cnnframe.ops import _reference as ref


# -- digits -----------------------------------------------------------------------------------------------
def test_digits_split_matches_the_reference_recipe():
    d = load_digits()
    X = d.images.reshape(-1, 1, 8, 8) / 16.0
    _, X_test, _, y_test = train_test_split(X, d.target, test_size=0.2, stratify=d.target, random_state=3)
    s = load_dataset("digits", seed=3, val_fraction=0.1)
    assert s.test[0].dtype == np.float32 and s.test[0].shape == (360, 1, 8, 8)
    np.testing.assert_array_equal(s.test[1], y_test)
    np.testing.assert_allclose(s.test[0], X_test.astype(np.float32))
    assert len(s.train[1]) + len(s.val[1]) == 1797 - 360
    assert s.num_classes == 10 and s.input_shape == (1, 8, 8)
    assert s.offset == 0.0 and s.scale == 1 / 16
    assert 0.0 <= s.train[0].min() and s.train[0].max() <= 1.0


def test_splits_are_disjoint_stratified_and_seeded():
    y = load_digits().target
    tr, va, te = split_indices(y, seed=0, test_size=0.2, val_fraction=0.1)
    allidx = np.concatenate([tr, va, te])
    assert len(np.unique(allidx)) == len(y) == len(allidx)
    assert len(va) == round(0.1 * (len(y) - len(te)))
    # stratified: every class appears in each part in about the overall proportion
    for part in (tr, va, te):
        frac = np.bincount(y[part], minlength=10) / len(part)
        assert np.all(np.abs(frac - np.bincount(y) / len(y)) < 0.02)
    tr2, va2, te2 = split_indices(y, seed=0, test_size=0.2, val_fraction=0.1)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2) and np.array_equal(te, te2)
    tr3, _, _ = split_indices(y, seed=1, test_size=0.2, val_fraction=0.1)
    assert not np.array_equal(np.sort(tr), np.sort(tr3))
    _, va0, _ = split_indices(y, seed=0, test_size=0.2, val_fraction=0.0)
    assert len(va0) == 0


# -- augmentation and batches ------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_random_shift_matches_loop_reference(k):
    x = np.random.default_rng(0).standard_normal((40, 2, 6, 7)).astype(np.float32)
    out = random_shift(x, k, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # the same draws, in the same order
    dy = rng.integers(-k, k + 1, size=40)
    dx = rng.integers(-k, k + 1, size=40)
    np.testing.assert_array_equal(out, ref.shift_images_ref(x, dy, dx))
    assert out.dtype == x.dtype
    assert len({(a, b) for a, b in zip(dy, dx)}) > 3  # several distinct shifts were exercised
    assert np.array_equal(x, np.random.default_rng(0).standard_normal((40, 2, 6, 7)).astype(np.float32))


def test_random_shift_zero_is_identity():
    x = np.ones((3, 1, 4, 4))
    assert random_shift(x, 0, np.random.default_rng(0)) is x


def test_batches_cover_everything_with_near_equal_sizes():
    parts = batches(1293, 64, np.random.default_rng(0))
    sizes = [len(p) for p in parts]
    assert len(parts) == 21 and max(sizes) <= 64 and max(sizes) - min(sizes) <= 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1293))
    again = batches(1293, 64, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert [len(p) for p in batches(10, 64)] == [10]


# -- npz ----------------------------------------------------------------------------------------------------------
def make_npz(tmp_path, n=60, classes=3, shape=(5, 6), name="d.npz", **extra):
    rng = np.random.default_rng(0)
    arrays = {"X": rng.uniform(0, 255, (n,) + shape), "y": np.arange(n) % classes}
    arrays.update(extra)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_npz_three_dim_gets_a_channel_axis(tmp_path):
    ds = NpzData(make_npz(tmp_path), normalize="unit")
    assert ds.describe() == ((1, 5, 6), 3)
    s = split_dataset(ds, seed=0, test_size=0.25, val_fraction=0.2)
    assert s.train[0].shape[1:] == (1, 5, 6) and s.num_classes == 3
    assert s.train[0].max() <= 1.0 + 1e-6
    assert len(s.test[1]) == 15


def test_npz_standardize_uses_training_statistics(tmp_path):
    path = make_npz(tmp_path, shape=(2, 4, 4))
    s = split_dataset(NpzData(path, normalize="standardize"), seed=0, test_size=0.25, val_fraction=0.0)
    assert abs(float(s.train[0].mean())) < 1e-5 and abs(float(s.train[0].std()) - 1) < 1e-5
    raw = np.load(path)["X"]
    np.testing.assert_allclose(s.preprocess(raw[:3]), ((raw[:3] - s.offset) * s.scale).astype(np.float32))


@pytest.mark.parametrize(
    "kwargs, ds_kwargs, needle",
    [
        ({"y": None}, {}, "has no array 'y'"),
        ({"shape": (5,)}, {}, "expected (N, C, H, W) or (N, H, W)"),
        ({"y": np.arange(60) + 0.5}, {}, "non-integer labels"),
        ({"y": np.arange(60) % 3 - 1}, {}, "label -1 < 0"),
        ({}, {"num_classes": 2}, "out of range for num_classes=2"),
        ({"y": np.arange(59) % 3}, {}, "60 samples but 'y' has 59 labels"),
        ({"y": np.array(["a"] * 60)}, {}, "expected integer class labels"),
    ],
)
def test_npz_errors(tmp_path, kwargs, ds_kwargs, needle):
    path = make_npz(tmp_path, **kwargs)
    with pytest.raises(DataError) as info:
        NpzData(path, **ds_kwargs).describe()
    assert needle in str(info.value) and info.value.key == "data.path"


def test_npz_too_few_samples_for_a_stratified_split(tmp_path):
    path = make_npz(tmp_path, n=6, classes=3)
    with pytest.raises(DataError) as info:
        split_dataset(NpzData(path), seed=0, test_size=0.2, val_fraction=0.1)
    assert "too few samples" in str(info.value)


def test_npz_file_problems(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        NpzData(str(tmp_path / "none.npz")).describe()
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        NpzData(str(tmp_path / "single.npy")).describe()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        NpzData(str(tmp_path / "junk.npz")).describe()
    np.savez(tmp_path / "obj.npz", X=np.array([None] * 4, dtype=object), y=np.zeros(4, int))
    with pytest.raises(DataError):
        NpzData(str(tmp_path / "obj.npz")).load()
    with pytest.raises(DataError, match="normalize"):
        NpzData(str(tmp_path / "obj.npz"), normalize="zscore")


def test_npz_nonfinite_inputs(tmp_path):
    X = np.ones((20, 3, 3))
    X[4, 1, 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, X=X, y=np.arange(20) % 2)
    with pytest.raises(DataError, match="NaN"):
        NpzData(str(path)).load()


def test_one_preprocessing_function():
    """Training splits, Splits.preprocess and predict all feed inputs through data.preprocess."""
    s = load_dataset("digits", seed=3)
    raw = load_digits().images.reshape(-1, 1, 8, 8)
    fed = preprocess(raw, s.offset, s.scale, np.float32)
    np.testing.assert_array_equal(fed, (raw / 16).astype(np.float32))
    np.testing.assert_array_equal(s.preprocess(raw), fed)
    assert {tuple(x.ravel()) for x in s.test[0][:20]} <= {tuple(x.ravel()) for x in fed}


# -- the preprocessing stored with a model ---------------------------------------------------------------------
def test_preprocessing_record_round_trips_and_is_checked():
    pre = Preprocessing.for_images("rgb", [6, 5], offset=10, scale=0.5)
    d = pre.to_dict()
    assert d == {"formula": "(x - offset) * scale", "offset": 10.0, "scale": 0.5, "layout": "NCHW",
                 "decode": {"kind": "image", "mode": "rgb", "size": [6, 5], "channel_order": "RGB",
                            "resample": "bilinear", "exif_transpose": True, "dtype": "uint8"}}
    assert Preprocessing.from_dict(json.loads(json.dumps(d))) == pre
    assert Preprocessing().to_dict() == {"formula": "(x - offset) * scale", "offset": 0.0, "scale": 1.0,
                                         "layout": "NCHW"}  # arrays: no decode entry
    np.testing.assert_array_equal(pre(np.full((1, 3, 6, 5), 12), np.float64), np.ones((1, 3, 6, 5)))
    assert "image files read as rgb, resized to 5×6" in pre.describe()
    for bad, needle in [({"scale": float("nan")}, "scale must be a finite number"), ({"offset": "0"}, "offset"),
                        ({"formula": "x * scale"}, "is not '(x - offset) * scale'"),
                        ({"decode": {"kind": "image", "mode": "cmyk"}}, "mode must be one of grayscale, rgb"),
                        ({"decode": {"kind": "image", "mode": "rgb", "size": [0, 3]}}, "decode: must be [height"),
                        ({"decode": "png"}, "decode must be a JSON object")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            Preprocessing.from_dict(bad)


def test_preprocessing_and_class_names_in_a_checkpoints_meta():
    pre = Preprocessing(0.5, 2.0)
    meta = store_inputs({"epoch": 3, "data": {"name": "x"}}, pre, ["a", "b"])
    assert meta["epoch"] == 3 and meta["data"]["name"] == "x"
    assert meta["data"]["preprocessing"] == pre.to_dict() and meta["data"]["class_names"] == ["a", "b"]
    assert (meta["data"]["offset"], meta["data"]["scale"]) == (0.5, 2.0)  # mirrored for older readers
    assert Preprocessing.from_meta(meta) == pre and stored_class_names(meta, 2) == ["a", "b"]
    assert stored_class_names(meta, 3) is None  # not one name per class: not used
    assert store_inputs({"epoch": 1}) == {"epoch": 1}
    assert Preprocessing.from_meta({"data": {"offset": 1.0, "scale": 0.25}}) == Preprocessing(1.0, 0.25)  # older
    assert Preprocessing.from_meta({"data": {"name": "x"}}) is None and Preprocessing.from_meta({}) is None


def test_splits_carry_the_data_sets_preprocessing_and_class_names(tmp_path):
    s = load_dataset("digits", seed=0)
    assert s.preprocessing == Preprocessing(0.0, 1 / 16) and s.class_names is None  # digits: arrays, classes 0..9
    path = make_npz(tmp_path, shape=(1, 4, 4))
    s = split_dataset(NpzData(path, normalize="unit"), seed=0, test_size=0.25, val_fraction=0.0)
    assert s.preprocessing.decode is None and s.scale == s.preprocessing.scale > 0
    hand = Splits(s.train, s.val, s.test, 3)  # arrays given as they are fed: nothing known to record
    assert hand.preprocessing is None and (hand.offset, hand.scale) == (0.0, 1.0)
    assert Splits(s.train, s.val, s.test, 3, scale=0.5).preprocessing == Preprocessing(0.0, 0.5)
    with pytest.raises(ValueError, match="has 2 names for 3 classes"):
        Splits(s.train, s.val, s.test, 3, class_names=["a", "b"])
