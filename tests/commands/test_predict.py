"""predict on arrays, image files and folders, with the preprocessing stored with the model; end to end from a
tiny image-folder data set written from scikit-learn's digits: train (with its report), predict, evaluate."""
import contextlib
import csv
import glob
import io
import json
import os
import re

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

from sklearn.datasets import load_digits  # noqa: E402

import cnnframe as cf  # noqa: E402
from cnnframe.cli import main  # noqa: E402
from cnnframe.config import load_config, split_seed  # noqa: E402
from cnnframe.data import Preprocessing, split_indices  # noqa: E402
from cnnframe.datasets import ImageFolder  # noqa: E402
from cnnframe.datasets.image_folder import read_image  # noqa: E402
from cnnframe.losses import SoftmaxCrossEntropy, softmax  # noqa: E402
from cnnframe.model import load_checkpoint  # noqa: E402
from cnnframe.trainer import evaluate_model  # noqa: E402

# Folder names whose sorted order (one, two, zero) is not the digits' order.
DIGITS = {0: "zero", 1: "one", 2: "two"}
NAMES = sorted(DIGITS.values())
PER_CLASS = 20


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def png(path, pixels):
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A config beside root/<name>/<i>.png (digits 0..2, pixels 0..16 scaled to 0..240), trained 2 epochs by the
    command line as a user runs it (with the report at the end).  Returns (root, run directory, its stdout)."""
    base = tmp_path_factory.mktemp("e2e")
    d = load_digits()
    for digit, name in DIGITS.items():
        os.makedirs(base / "imgs" / name)
        for i, a in enumerate(d.images[d.target == digit][:PER_CLASS]):
            png(base / "imgs" / name / f"{i:02d}.png", a * 15)
    (base / "digits3.yaml").write_text(
        "data: {dataset: image_folder, root: imgs, size: [8, 8]}\n"
        "model:\n  layers:\n"
        "    - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n"
        "    - {type: relu}\n    - {type: flatten}\n    - {type: dense, out_features: 3}\n"
        "optimizer: {type: adam, lr: 0.01}\n"
        "trainer: {epochs: 2, batch_size: 16}\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", str(base / "digits3.yaml"), "--run-dir", str(base / "runs")]) == 0
    (run,) = glob.glob(str(base / "runs" / "digits3-*"))
    return str(base / "imgs"), run, out.getvalue()


def model_of(run):
    model, _, meta = load_checkpoint(os.path.join(run, "last.npz"))
    model.eval()
    return model, meta


def read_csv(path_or_text, from_text=False):
    lines = path_or_text.splitlines() if from_text else open(path_or_text, newline="").read().splitlines()
    rows = list(csv.reader(lines))
    return rows[0], rows[1:]


def test_train_writes_the_report_and_records_class_names_and_preprocessing(trained):
    root, run, out = trained
    cm = np.array(json.load(open(os.path.join(run, "summary.json")))["test"]["confusion_matrix"])
    plots = 4 if np.trace(cm) < cm.sum() else 3  # misclassified images only when there are any
    assert f"report: {os.path.join(run, 'report.html')} ({plots} plot(s))" in out
    for name in ("report.html", "curves.png", "confusion.png", "filters.png"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    with Image.open(os.path.join(run, "curves.png")) as img:
        img.load()
        assert img.size == (1000, 400)
    page = open(os.path.join(run, "report.html"), encoding="utf-8").read()
    assert "classes: 0: one, 1: two, 2: zero" in page
    model, meta = model_of(run)
    assert meta["data"]["class_names"] == NAMES and model.class_names == NAMES
    expected = Preprocessing.for_images("grayscale", [8, 8], offset=0.0, scale=1 / 255)
    assert meta["data"]["preprocessing"] == expected.to_dict() and model.preprocessing == expected


def test_predict_one_image_and_a_folder_as_evaluate_sees_them(trained, tmp_path, capsys):
    root, run, _ = trained
    model, _ = model_of(run)
    pre = model.preprocessing
    one = os.path.join(root, "two", "03.png")
    code, out, err = cli(capsys, "predict", run, "--input", one)
    assert code == 0 and err == ""
    header, rows = read_csv(out, from_text=True)
    assert header == ["file", "class", "probability"] and len(rows) == 1 and rows[0][0] == one
    probs = softmax(model.forward(pre(read_image(one, "grayscale")[None])).astype(np.float64))[0]
    assert rows[0][1] == NAMES[int(probs.argmax())] and float(rows[0][2]) == pytest.approx(probs.max(), abs=1e-6)

    code, out, err = cli(capsys, "predict", run, "--input", root, "--output", str(tmp_path / "all.csv"))
    assert code == 0 and err == ""
    assert out.endswith(f"wrote {3 * PER_CLASS} predictions to {tmp_path / 'all.csv'}\n")
    header, rows = read_csv(str(tmp_path / "all.csv"))
    assert header == ["file", "class", "probability", "p_one", "p_two", "p_zero"]
    assert read_csv(out, from_text=True)[1][:-1] == [r[:3] for r in rows]  # stdout: file, class, probability
    # the same images as the data set reads them, through the trainer's own evaluation
    X, y = ImageFolder(root, size=[8, 8]).load()
    assert [r[0] for r in rows] == [f for f, _ in ImageFolder(root)._scan()[1]]
    res = evaluate_model(model, SoftmaxCrossEntropy(), pre(X), y, 3)
    np.testing.assert_allclose(np.array([[float(v) for v in r[3:]] for r in rows]), res["probs"], atol=1e-6)
    assert [r[1] for r in rows] == [NAMES[k] for k in res["pred"]]
    # and predict's classes on the test part's files give the accuracy evaluate reports for that part
    _, _, test = split_indices(y, split_seed(load_config(os.path.join(run, "config.yaml"))), 0.2, 0.1)
    acc = np.mean([rows[i][1] == NAMES[y[i]] for i in test])
    code, out, _ = cli(capsys, "evaluate", run)
    assert code == 0 and f"test ({len(test)} samples, last model, epoch 2): accuracy {100 * acc:.2f}%" in out


def test_arrays_keep_working_and_are_named_by_class(trained, tmp_path, capsys):
    root, run, _ = trained
    X, _ = ImageFolder(root).load()
    np.save(tmp_path / "x.npy", X[:4, 0])  # (N, H, W) raw pixels 0..255
    code, out, _ = cli(capsys, "predict", run, "--input", str(tmp_path / "x.npy"))
    assert code == 0
    header, rows = read_csv(out, from_text=True)
    model, _ = model_of(run)
    probs = softmax(model.forward(model.preprocessing(X[:4])).astype(np.float64))
    assert header == ["index", "class", "p_one", "p_two", "p_zero"] and [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert [r[1] for r in rows] == [NAMES[k] for k in probs.argmax(axis=1)]
    np.testing.assert_allclose([[float(v) for v in r[2:]] for r in rows], probs, atol=1e-6)


def test_colour_and_size_are_converted_as_training_converted_them(trained, tmp_path, capsys):
    root, run, _ = trained
    gray = read_image(os.path.join(root, "one", "05.png"), "grayscale")[0]
    rgb = png(tmp_path / "rgb.png", np.stack([gray] * 3, axis=-1))  # an RGB file of the same grey image
    big = str(tmp_path / "big.png")
    Image.fromarray(gray).resize((16, 16), Image.Resampling.NEAREST).save(big)
    code, out, _ = cli(capsys, "predict", run, "--input", str(tmp_path))
    assert code == 0
    _, rows = read_csv(out, from_text=True)
    assert [r[0] for r in rows] == [big, rgb]
    model, _ = model_of(run)
    for (path, _, p), x in zip(rows, (read_image(big, "grayscale", (8, 8)), gray[None])):
        assert float(p) == pytest.approx(softmax(model.forward(model.preprocessing(x[None])).astype(float)).max(),
                                         abs=1e-6), path


def save_api_model(path, channels=1, **save):
    model = cf.Sequential([cf.Conv2D(2, 3), cf.Flatten(), cf.Dense(3)], input_shape=(channels, 8, 8), seed=0)
    model.save(str(path), **save)
    return model


@pytest.mark.parametrize("case", ["unreadable", "missing", "empty-folder", "size-without-resize", "channels",
                                  "array-model", "rgb-mode-for-gray-model"])
def test_bad_image_inputs_are_one_line_naming_the_file(trained, tmp_path, capsys, case):
    root, run, _ = trained
    ckpt, target = run, None
    if case == "unreadable":
        target = tmp_path / "bad.png"
        target.write_bytes(b"not a png")
        needle = f"cannot read image {target}"
    elif case == "missing":
        target, needle = tmp_path / "gone.png", f"input file not found: {tmp_path / 'gone.png'}"
    elif case == "empty-folder":
        (tmp_path / "notes.txt").write_text("no images here")
        target, needle = tmp_path, f"the folder {tmp_path} holds no image files (.png"
    elif case == "size-without-resize":
        ckpt = tmp_path / "m.npz"
        save_api_model(ckpt, preprocessing=Preprocessing.for_images("grayscale"))
        target = png(tmp_path / "wide.png", np.zeros((8, 9)))
        needle = f"{target} is 9×8 pixels but the model takes 8×8 images and its preprocessing records no resize"
    elif case == "channels":
        ckpt = tmp_path / "m.npz"
        save_api_model(ckpt, channels=2)
        target = png(tmp_path / "x.png", np.zeros((8, 8)))
        needle = f"{target}: an image file gives 1 (grayscale) or 3 (RGB) channels, but the model in {ckpt} takes 2"
    elif case == "array-model":
        ckpt = tmp_path / "m.npz"
        save_api_model(ckpt, preprocessing=Preprocessing(0.0, 1 / 16))
        target = png(tmp_path / "x.png", np.zeros((8, 8)))
        needle = f"cannot classify {target}: {ckpt} was trained on arrays"
    else:
        ckpt = tmp_path / "m.npz"
        save_api_model(ckpt, preprocessing=Preprocessing.for_images("rgb", [8, 8]))
        target = png(tmp_path / "x.png", np.zeros((8, 8)))
        needle = f"{target}: the model takes 1-channel samples, but its preprocessing reads images as rgb (3 channels)"
    code, out, err = cli(capsys, "predict", str(ckpt), "--input", str(target))
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("cnnframe: error: ") and needle in err, err


def test_a_checkpoint_without_preprocessing_is_used_as_it_is_and_said_so(tmp_path, capsys):
    pixels = (load_digits().images[:2] * 15).astype(np.uint8)
    files = [png(tmp_path / f"{i}.png", a) for i, a in enumerate(pixels)]
    np.save(tmp_path / "x.npy", pixels)
    model = save_api_model(tmp_path / "bare.npz")
    raw = softmax(model.forward(pixels[:, None].astype(np.float32)).astype(np.float64))
    code, out, err = cli(capsys, "predict", str(tmp_path / "bare.npz"), "--input", str(tmp_path / "x.npy"))
    assert code == 0 and err.count("\n") == 1
    assert f"note: {tmp_path / 'bare.npz'} records no preprocessing, so predict assumes inputs fed as (x - 0) * 1" \
        in err
    np.testing.assert_allclose([[float(v) for v in r[2:]] for r in read_csv(out, True)[1]], raw, atol=1e-6)
    code, out, err = cli(capsys, "predict", str(tmp_path / "bare.npz"), "--input", files[0])
    assert code == 0 and "image files read as grayscale, not resized, pixel values 0-255" in err
    assert float(read_csv(out, True)[1][0][2]) == pytest.approx(raw[0].max(), abs=1e-6)

    # the same model saved with its preprocessing: no note, and the pixels are fed as recorded
    model.save(str(tmp_path / "with.npz"), preprocessing=Preprocessing.for_images("grayscale"))
    code, out, err = cli(capsys, "predict", str(tmp_path / "with.npz"), "--input", files[0])
    scaled = softmax(model.forward((pixels[:1, None] / 255).astype(np.float32)).astype(np.float64))
    assert code == 0 and err == "" and float(read_csv(out, True)[1][0][2]) == pytest.approx(scaled.max(), abs=1e-6)
    assert not re.search(r"\bnote\b", err)
