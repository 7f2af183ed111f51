"""``dataset: image_folder``: folders of PNG/JPEG files per class, read with Pillow."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from sklearn.datasets import load_digits  # noqa: E402

from cnnframe.cli import main  # noqa: E402
from cnnframe.config import load_config, load_data  # noqa: E402
from cnnframe.datasets import ImageFolder  # noqa: E402
from cnnframe.datasets.image_folder import read_image  # noqa: E402
from cnnframe.errors import DataError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Folder names whose sorted order is not the digits' order, so the test sees which order labels follow.
NAMES = {0: "zero", 1: "one", 2: "two", 3: "three"}
SORTED = sorted(NAMES.values())  # one, three, two, zero


def digit_folder(root, per_class=15, big=()):
    """root/<name>/<i>.png from scikit-learn's digits 0..3 (pixels 0..16 scaled to 0..240); the classes in
    ``big`` are written at 16×16 (each pixel doubled).  Returns {name: [uint8 8×8 images]}."""
    d = load_digits()
    written = {}
    for digit, name in NAMES.items():
        os.makedirs(os.path.join(root, name))
        imgs = (d.images[d.target == digit][:per_class] * 15).astype(np.uint8)
        for i, a in enumerate(imgs):
            img = Image.fromarray(a)
            if name in big:
                img = img.resize((16, 16), Image.Resampling.NEAREST)
            img.save(os.path.join(root, name, f"{i:03d}.png"))
        written[name] = list(imgs)
    return written


def test_loads_pixels_labels_and_class_names(tmp_path):
    written = digit_folder(str(tmp_path / "imgs"), per_class=3)
    (tmp_path / "imgs" / "zero" / "README.txt").write_text("not an image")  # other files are skipped
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "one" / ".hidden.png")
    ds = ImageFolder(str(tmp_path / "imgs"))
    assert ds.class_names() == SORTED
    assert ds.describe() == ((1, 8, 8), 4)
    X, y = ds.load()
    assert X.dtype == np.uint8 and X.shape == (12, 1, 8, 8)
    np.testing.assert_array_equal(y, np.repeat(np.arange(4), 3))
    for label, name in enumerate(SORTED):
        np.testing.assert_array_equal(X[y == label, 0], np.stack(written[name]))  # PNG is lossless
    assert ds.transform(X) == (0.0, 1 / 255)
    assert ImageFolder(str(tmp_path / "imgs"), normalize="none").transform(X) == (0.0, 1.0)
    offset, scale = ImageFolder(str(tmp_path / "imgs"), normalize="standardize").transform(X)
    assert offset == pytest.approx(X.mean()) and scale == pytest.approx(1 / X.std())


def test_rgb_mode_resize_and_grayscale_conversion(tmp_path):
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((16, 10, 3), 90, np.uint8)).save(tmp_path / "b" / "y.jpg", quality=100)
    ds = ImageFolder(str(tmp_path), mode="rgb", size=[4, 6])
    assert ds.describe() == ((3, 4, 6), 2)
    X, y = ds.load()
    assert X.shape == (2, 3, 4, 6)
    np.testing.assert_array_equal(X[0, :, 0, 0], [200, 100, 50])  # channels in R, G, B order
    assert np.all(np.abs(X[1].astype(int) - 90) <= 2)  # a uniform JPEG resized stays uniform
    gray = read_image(str(tmp_path / "a" / "x.png"), "grayscale")
    assert gray.shape == (1, 4, 6)
    assert int(gray[0, 0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # ITU-R 601 luma, as Pillow
    assert read_image(str(tmp_path / "a" / "x.png"), "rgb", size=(8, 3)).shape == (3, 8, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((2, 4, 3), np.uint8))  # 4 wide, 2 high
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(str(tmp_path / "r.jpg"), "rgb").shape == (3, 4, 2)


def test_trains_and_evaluates_end_to_end(tmp_path):
    """A config next to its image folder, run from elsewhere: relative root, resize of mixed sizes, train, evaluate."""
    cfg_dir = tmp_path / "project"
    digit_folder(str(cfg_dir / "imgs"), per_class=15, big=("two",))
    (cfg_dir / "folder.yaml").write_text(
        "data: {dataset: image_folder, root: imgs, size: [8, 8]}\n"
        "model:\n  layers:\n"
        "    - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n"
        "    - {type: relu}\n    - {type: flatten}\n    - {type: dense, out_features: 4}\n"
        "optimizer: {type: adam, lr: 0.01}\n"
        "trainer: {epochs: 3, batch_size: 16}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "cnnframe", "train", str(cfg_dir / "folder.yaml"), "--quiet", "--no-report",
                        "--run-dir", str(tmp_path / "runs")], cwd=str(elsewhere), capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    (run,) = glob.glob(str(tmp_path / "runs" / "folder-*"))
    cfg = load_config(os.path.join(run, "config.yaml"))
    assert cfg["data"]["root"] == str(cfg_dir / "imgs")  # resolved against the config file, saved absolute
    data = load_data(cfg)
    assert data.input_shape == (1, 8, 8) and len(data.test[1]) == 12 and data.scale == 1 / 255
    assert main(["evaluate", run]) == 0


@pytest.mark.parametrize("case", ["unreadable", "truncated", "mixed-sizes", "empty-class", "one-class", "no-root",
                                  "root-is-file"])
def test_bad_data_names_the_file(tmp_path, case):
    root = tmp_path / "imgs"
    for name in ("a", "b"):
        os.makedirs(root / name)
        Image.fromarray(np.full((8, 8), 7, np.uint8)).save(root / name / "ok.png")
    path, kwargs = str(root), {}
    if case == "unreadable":
        bad = root / "b" / "bad.png"
        bad.write_bytes(b"this is not an image")
        match = f"cannot read image {bad}"
    elif case == "truncated":
        bad = root / "b" / "cut.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:len(bad.read_bytes()) // 2])
        match = f"cannot read image {bad}"
    elif case == "mixed-sizes":
        bad = root / "b" / "wide.png"
        Image.fromarray(np.zeros((8, 9), np.uint8)).save(bad)
        match = f"{bad} is 9×8 pixels but {root / 'a' / 'ok.png'} is 8×8; give data.size"
    elif case == "empty-class":
        os.makedirs(root / "c")
        (root / "c" / "notes.txt").write_text("no images here")
        match = f"class folder {root / 'c'} holds no image files"
    elif case == "one-class":
        path = str(root / "a" / "..")
        os.rename(root / "b", tmp_path / "b")
        match = "has 1 class folder"
    elif case == "no-root":
        path = str(tmp_path / "missing")
        match = f"folder not found: {path}"
    else:
        path = str(root / "a" / "ok.png")
        match = "is a file, expected a folder"
    with pytest.raises(DataError, match=match.replace("(", r"\(").replace(")", r"\)")):
        ds = ImageFolder(path, **kwargs)
        ds.describe()
        ds.load()


@pytest.mark.parametrize("kwargs, key", [({"mode": "cmyk"}, "data.mode"), ({"size": [8]}, "data.size"),
                                         ({"size": [0, 8]}, "data.size"), ({"normalize": "max"}, "data.normalize")])
def test_bad_parameters_name_the_key(tmp_path, kwargs, key):
    with pytest.raises(DataError) as e:
        ImageFolder(str(tmp_path), **kwargs)
    assert e.value.key == key


def test_bad_data_from_the_command_line_is_one_line(tmp_path, capsys):
    root = tmp_path / "imgs"
    for name in ("a", "b"):
        os.makedirs(root / name)
        for i in range(6):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(root / name / f"{i}.png")
    (root / "b" / "5.png").write_bytes(b"\x89PNG broken")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {dataset: image_folder, root: imgs}\n"
                   "model: {layers: [{type: flatten}, {type: dense, out_features: 2}]}\n")
    assert main(["train", str(cfg), "-q", "--run-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read image {root / 'b' / '5.png'}" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
