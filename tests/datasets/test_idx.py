"""``dataset: idx``: MNIST-format files, plain and gzipped, parsed by hand."""
import gzip

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnnframe.cli import main
from cnnframe.config import load_config, load_data
from cnnframe.datasets import IdxData
from cnnframe.datasets.idx import read_idx
from cnnframe.errors import DataError

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr):
    """The IDX encoding written straight from the format: 00 00 type ndim, big-endian sizes, big-endian data."""
    arr = np.asarray(arr)
    head = bytes([0, 0, CODES[arr.dtype.type], arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr, gz=False):
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


@pytest.fixture
def digits_idx(tmp_path):
    d = load_digits()
    images = (d.images * 15).astype(np.uint8)
    labels = d.target.astype(np.uint8)
    paths = {gz: (write_idx(tmp_path / f"images{'.gz' if gz else ''}", images, gz),
                  write_idx(tmp_path / f"labels{'.gz' if gz else ''}", labels, gz)) for gz in (False, True)}
    return images, labels, paths


def test_plain_and_gzipped_files_load_identically(digits_idx):
    images, labels, paths = digits_idx
    loaded = {}
    for gz, (img, lab) in paths.items():
        ds = IdxData(img, lab)
        assert ds.describe() == ((1, 8, 8), 10)
        loaded[gz] = ds.load()
    for X, y in loaded.values():
        assert X.dtype == np.uint8 and X.shape == (1797, 1, 8, 8)
        np.testing.assert_array_equal(X[:, 0], images)
        np.testing.assert_array_equal(y, labels)
    assert IdxData(*paths[True]).transform(loaded[True][0]) == (0.0, 1 / 255)


@pytest.mark.parametrize("dtype", list(CODES))
def test_every_value_type_round_trips(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    got = read_idx(write_idx(tmp_path / "a.idx", arr))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)
    assert read_idx(str(tmp_path / "a.idx"), header_only=True) == (np.dtype(dtype).newbyteorder(">"), (3, 4, 5))


def test_four_dimensional_images_and_other_scales(tmp_path):
    X = np.arange(2 * 3 * 4 * 5 * 2, dtype=np.int16).reshape(4, 3, 4, 5) - 50
    ds = IdxData(write_idx(tmp_path / "x", X), write_idx(tmp_path / "y", np.array([0, 1, 1, 0], np.uint8)))
    assert ds.describe() == ((3, 4, 5), 2)
    np.testing.assert_array_equal(ds.load()[0], X)
    assert ds.transform(X) == (0.0, 1 / 189)  # not uint8: unit divides by max|X| = |189|


def test_config_paths_resolve_against_the_config_file(digits_idx, tmp_path, monkeypatch):
    (tmp_path / "idx.yaml").write_text("data: {dataset: idx, images: images.gz, labels: labels}\n"
                                       "model: {layers: [{type: flatten}, {type: dense, out_features: 10}]}\n")
    monkeypatch.chdir("/")
    cfg = load_config(str(tmp_path / "idx.yaml"))
    assert cfg["data"]["images"] == str(tmp_path / "images.gz") and cfg["data"]["normalize"] == "unit"
    data = load_data(cfg)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and len(data.test[1]) == 360
    assert 0.0 <= data.train[0].min() and data.train[0].max() <= 1.0


def _cases(tmp_path):
    """name → (images path, labels path, expected message); each file broken in one way."""
    imgs = (np.arange(4 * 3 * 3) % 256).astype(np.uint8).reshape(4, 3, 3)
    labs = np.array([0, 1, 0, 1], np.uint8)
    good_i, good_l = write_idx(tmp_path / "i", imgs), write_idx(tmp_path / "l", labs)

    def raw(name, data):
        (tmp_path / name).write_bytes(data)
        return str(tmp_path / name)

    full = idx_bytes(imgs)
    return {
        "wrong-magic": (raw("m", b"\x00\x01" + full[2:]), good_l, "{} is not an IDX file: magic number 0x00010803"),
        "unknown-type": (raw("t", b"\x00\x00\x07\x03" + full[4:]), good_l, "{} is not an IDX file"),
        "short-header": (raw("h", full[:2]), good_l, "{} is truncated: 2 bytes, shorter than an IDX header"),
        "cut-sizes": (raw("s", full[:9]), good_l, "{} is truncated: its header declares 3 dimensions but ends after 1"),
        "truncated": (raw("d", full[:-5]), good_l, r"{} is truncated: its header declares 4 × 3 × 3 values of 1 "
                                                   r"byte\(s\) \(36 bytes\) but it holds 31"),
        "trailing": (raw("x", full + b"\x00"), good_l, "{} holds more bytes than the 4 × 3 × 3 values"),
        "bad-gzip": (raw("g.gz", gzip.compress(full)[:-12]), good_l, "cannot read {}"),
        "count-mismatch": (good_i, write_idx(tmp_path / "l5", np.array([0, 1, 0, 1, 1], np.uint8)),
                           "{i} holds 4 images but {l} holds 5 labels"),
        "labels-2d": (good_i, write_idx(tmp_path / "l2", labs.reshape(2, 2)), r"{l} holds an array of shape \(2, 2\)"),
        "float-labels": (good_i, write_idx(tmp_path / "lf", labs.astype(np.float32)), "{l} holds float32 values"),
        "negative-label": (good_i, write_idx(tmp_path / "ln", np.array([0, -1, 0, 1], np.int8)), "{l} has label -1"),
        "images-2d": (write_idx(tmp_path / "i2", imgs.reshape(4, 9)), good_l, r"{i} holds an array of shape \(4, 9\)"),
    }


@pytest.mark.parametrize("case", ["wrong-magic", "unknown-type", "short-header", "cut-sizes", "truncated", "trailing",
                                  "bad-gzip", "count-mismatch", "labels-2d", "float-labels", "negative-label",
                                  "images-2d"])
def test_bad_files_are_named(tmp_path, case):
    images, labels, message = _cases(tmp_path)[case]
    bad = images if labels == str(tmp_path / "l") else labels
    match = message.format(bad, i=images, l=labels)
    with pytest.raises(DataError, match=match):
        ds = IdxData(images, labels)
        ds.describe()
        ds.load()


def test_bad_file_from_the_command_line_is_one_line(tmp_path, capsys):
    images, labels, _ = _cases(tmp_path)["wrong-magic"]
    (tmp_path / "c.yaml").write_text(f"data: {{dataset: idx, images: {images}, labels: {labels}}}\n"
                                     "model: {layers: [{type: flatten}, {type: dense, out_features: 2}]}\n")
    assert main(["validate", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{images} is not an IDX file" in err and "Traceback" not in err


@pytest.mark.parametrize("kwargs, key", [({"images": ""}, "data.images"), ({"normalize": "max"}, "data.normalize"),
                                         ({"num_classes": 1}, "data.num_classes")])
def test_bad_parameters_name_the_key(kwargs, key):
    with pytest.raises(DataError) as e:
        IdxData(**{"images": "i", "labels": "l", **kwargs})
    assert e.value.key == key


@pytest.mark.parametrize("labels, match", [([1], "has 1 sample"), ([0, 0, 0], "all labels are 0")])
def test_too_few_samples_or_classes(tmp_path, labels, match):
    images = write_idx(tmp_path / "i", np.zeros((len(labels), 2, 2), np.uint8))
    ds = IdxData(images, write_idx(tmp_path / "l", np.array(labels, np.uint8)))
    with pytest.raises(DataError, match=match):
        ds.describe()
