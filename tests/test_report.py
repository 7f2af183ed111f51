"""The run report: report.html with inline PNGs of the curves, confusion matrix, mistakes and filters."""
import base64
import glob
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from cnnframe.cli import main  # noqa: E402
from cnnframe.report import FILES, write_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")
SECTIONS = ("curves", "confusion", "misclassified", "filters")


def train(root, *extra):
    assert main(["train", TINY, "--quiet", "--no-report", "--run-dir", str(root), *extra]) == 0
    (run,) = glob.glob(os.path.join(str(root), "*-*"))
    return run


def png_size(path):
    with Image.open(path) as img:
        img.load()  # decodes the whole image, not just the header
        return img.size


def sections(page):
    """section id → its HTML."""
    return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', page, flags=re.S))


def assert_self_contained(page):
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//|file:)", page)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert src.startswith("data:image/png;base64,")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train(tmp_path_factory.mktemp("runs"))


def test_full_report(run_dir, capsys):
    capsys.readouterr()
    assert main(["report", run_dir]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"wrote {os.path.join(run_dir, 'report.html')} with 4 plot(s)") and err == ""
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    cm = np.array(summary["test"]["confusion_matrix"])
    wrong = int(cm.sum() - np.trace(cm))
    assert 0 < wrong  # two epochs of the tiny model leave mistakes to show
    shown = min(wrong, 32)
    expected = {"curves": (1000, 400), "confusion": (600, 600),
                "misclassified": (125 * min(shown, 8), 145 * -(-shown // 8)),
                "filters": (400, 140)}  # the first conv: 4 filters of 1 channel, 100 px tiles, 40 px title
    page = open(os.path.join(run_dir, "report.html"), encoding="utf-8").read()
    assert_self_contained(page)
    found = sections(page)
    assert set(found) == set(SECTIONS)
    for section, size in expected.items():
        path = os.path.join(run_dir, FILES[section])
        assert png_size(path) == size, section
        with open(path, "rb") as f:  # the page holds the very same PNG, inline
            assert base64.b64encode(f.read()).decode() in found[section]
    assert "accuracy" in page and "digits-tiny" in page and summary["status"] in page
    if wrong > 32:
        assert f"the first 32 of {wrong} misclassified" in found["misclassified"]


def test_report_to_another_directory_with_fewer_images(run_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", run_dir, "--out", str(out), "--max-images", "3"]) == 0
    assert sorted(os.listdir(out)) == sorted(list(FILES.values()) + ["report.html"])
    assert png_size(out / "misclassified.png") == (375, 145)
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary files left behind


def test_run_without_test_results_reports_what_it_can(tmp_path, capsys):
    run = train(tmp_path, "--stop-after", "1")  # paused after 1 of 2 epochs: no test yet
    capsys.readouterr()
    assert main(["report", run]) == 0
    out, err = capsys.readouterr()
    assert "with 2 plot(s): curves.png, filters.png" in out
    assert "no confusion plot: no test results: the run has not been tested (status: paused)" in err
    assert not os.path.exists(os.path.join(run, "confusion.png"))
    page = open(os.path.join(run, "report.html"), encoding="utf-8").read()
    found = sections(page)
    assert "data:image/png" in found["curves"] and "data:image/png" in found["filters"]
    assert "data:image/png" not in found["confusion"] and "status: paused" in found["confusion"]
    assert "data:image/png" not in found["misclassified"]
    assert png_size(os.path.join(run, "curves.png")) == (1000, 400)


def test_model_without_conv_layer(tmp_path, capsys):
    run = train(tmp_path, "--set", "model.layers=[{type: flatten}, {type: dense, out_features: 10}]")
    assert main(["report", run]) == 0
    found = sections(open(os.path.join(run, "report.html"), encoding="utf-8").read())
    assert "the model has no convolution layer" in found["filters"] and "data:image" not in found["filters"]
    assert "data:image/png" in found["confusion"] and not os.path.exists(os.path.join(run, "filters.png"))


def test_image_folder_run_shows_class_names_and_survives_missing_data(tmp_path, capsys):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        os.makedirs(root / name)
        for i in range(12):
            Image.fromarray((rng.random((6, 6, 3)) * 100 + 100 * c).astype(np.uint8)).save(root / name / f"{i}.png")
    cfg = tmp_path / "pets.yaml"
    cfg.write_text("data: {dataset: image_folder, root: imgs, mode: rgb}\n"
                   "model: {layers: [{type: conv2d, out_channels: 2, kernel_size: 3}, {type: flatten},"
                   " {type: dense, out_features: 2}]}\ntrainer: {epochs: 1, batch_size: 8}\n")
    assert main(["train", str(cfg), "-q", "--no-report", "--run-dir", str(tmp_path / "runs")]) == 0
    (run,) = glob.glob(str(tmp_path / "runs" / "pets-*"))
    assert main(["report", run]) == 0
    page = open(os.path.join(run, "report.html"), encoding="utf-8").read()
    assert "classes: 0: cat, 1: dog" in sections(page)["confusion"]
    assert png_size(os.path.join(run, "filters.png")) == (300, 140)  # 2 RGB filters: one tile each, 3 tiles wide

    os.rename(root, tmp_path / "moved")  # the data is gone: curves, confusion and filters remain
    capsys.readouterr()
    assert main(["report", run]) == 0
    out, err = capsys.readouterr()
    assert "with 3 plot(s)" in out and "the test images could not be loaded" in err and "folder not found" in err
    found = sections(open(os.path.join(run, "report.html"), encoding="utf-8").read())
    assert "data:image/png" in found["confusion"] and "data:image/png" not in found["misclassified"]


def test_write_report_from_python(tmp_path):
    history = [{"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": float("nan"),
                "val_acc": float("nan")}]
    rep = write_report(str(tmp_path), history=history, summary={"status": "running"})
    assert sorted(rep.images) == ["curves"] and sorted(rep.notes) == ["confusion", "filters", "misclassified"]
    assert png_size(rep.images["curves"]) == (1000, 400)
    cm = np.diag([3] * 12)
    rep = write_report(str(tmp_path), summary={"status": "completed", "test": {"confusion_matrix": cm.tolist(),
                                                                              "acc": 1.0, "loss": 0.1, "samples": 36}})
    assert png_size(rep.images["confusion"]) == (700, 700)  # more classes, a larger heat map


def test_report_user_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"cnnframe: error: run directory not found: {tmp_path / 'missing'}\n"
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory: it has no metrics.csv, summary.json or checkpoint" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--max-images", "0"]) == 2
