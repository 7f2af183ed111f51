"""End-to-end command line: train, resume, evaluate, predict, validate, gradcheck, info, and user errors."""
import csv
import errno
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cnnframe.cli import main
from cnnframe.model import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")
DIGITS = os.path.join(ROOT, "configs", "digits.yaml")


def run_module(*args, cwd=ROOT):
    """``python -m cnnframe ...`` as a user types it, from the repository root by default."""
    return subprocess.run([sys.executable, "-m", "cnnframe", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def train_tiny(capsys, tmp_path, *extra, name="t"):
    code, out, err = cli(capsys, "train", TINY, "-q", "--no-report", "--run-dir", str(tmp_path), "--set",
                         f"trainer.name={name}", *extra)
    assert code == 0, err
    runs = glob.glob(os.path.join(str(tmp_path), f"{name}-*"))
    assert len(runs) == 1
    return runs[0], out


def rows_without_seconds(run):
    with open(os.path.join(run, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


# -- commands -------------------------------------------------------------------------------------------------
def test_info_subprocess():
    r = run_module("info")
    assert r.returncode == 0, r.stderr
    assert "cnnframe 0." in r.stdout and "OpenMP:" in r.stdout and "threads:" in r.stdout
    assert "BLAS" in r.stdout and "conv2d" in r.stdout


def test_validate_prints_summary(capsys):
    code, out, _ = cli(capsys, "validate", DIGITS)
    assert code == 0
    assert "configs/digits.yaml: OK" in out and "Total parameters: 30,890" in out and "Conv2D" in out
    code, out, _ = cli(capsys, "validate", TINY, "--show-config", "--set", "trainer.epochs=7")
    assert code == 0 and "epochs: 7" in out


def test_default_config_trains_on_the_whole_training_part(capsys, tmp_path):
    """configs/digits.yaml, cut to 2 epochs: a final fit (no validation part, no best.npz), its test report
    averaged over shifted copies, as ``evaluate`` of the run reports it again."""
    code, out, err = cli(capsys, "train", DIGITS, "-q", "--no-report", "--run-dir", str(tmp_path), "--set",
                         "trainer.epochs=2")
    assert code == 0, err
    (run,) = glob.glob(os.path.join(str(tmp_path), "digits-*"))
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    assert summary["data"] == {"name": "digits", "train": 1437, "val": 0, "test": 360}
    assert summary["final"]["val_acc"] is None and summary["final"]["train_acc"] > 0.5
    assert summary["test"]["acc"] > 0.85  # 2 of 40 epochs; chance is 0.1
    assert os.path.exists(os.path.join(run, "last.npz")) and not os.path.exists(os.path.join(run, "best.npz"))
    code, out, err = cli(capsys, "evaluate", run)
    assert code == 0, err
    assert f"accuracy {100 * summary['test']['acc']:.2f}%" in out


def test_train_evaluate_predict(capsys, tmp_path):
    code, out, err = cli(capsys, "train", TINY, "--no-report", "--run-dir", str(tmp_path), "--set", "trainer.name=full")
    assert code == 0, err
    assert "# resolved config" in out and "Total parameters" in out and "epoch 2/2" in out
    assert "confusion matrix" in out and "accuracy" in out
    (run,) = glob.glob(os.path.join(str(tmp_path), "full-*"))
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    acc = summary["test"]["acc"]

    code, out, _ = cli(capsys, "evaluate", run)
    assert code == 0 and f"accuracy {100 * acc:.2f}%" in out and "confusion matrix" in out
    code, out, _ = cli(capsys, "evaluate", os.path.join(run, "last.npz"), "--split", "val")
    assert code == 0 and "val (144 samples" in out

    from sklearn.datasets import load_digits

    d = load_digits()
    np.save(tmp_path / "five.npy", d.images[:5])  # raw (N, 8, 8) pixels 0..16, as the data set stores them
    code, out, _ = cli(capsys, "predict", os.path.join(run, "last.npz"), "--input", str(tmp_path / "five.npy"))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "index,class," + ",".join(f"p{j}" for j in range(10)) and len(lines) == 6
    probs = np.array([[float(v) for v in line.split(",")[2:]] for line in lines[1:]])
    classes = [int(line.split(",")[1]) for line in lines[1:]]
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5) and classes == list(probs.argmax(axis=1))
    # the same as the model applied to X / 16
    model, _, _ = load_checkpoint(os.path.join(run, "last.npz"))
    model.eval()
    expected = model.forward((d.images[:5, None] / 16).astype(np.float32)).argmax(axis=1)
    assert classes == list(expected)

    out_csv = tmp_path / "preds.csv"
    code, out, _ = cli(capsys, "predict", run + "/last.npz", "--input", str(tmp_path / "five.npy"),
                       "--output", str(out_csv))
    assert code == 0 and "wrote 5 predictions" in out
    assert out_csv.read_text().strip().splitlines() == lines


def test_resume_equals_straight(capsys, tmp_path):
    straight, _ = train_tiny(capsys, tmp_path, name="straight")
    part, out = train_tiny(capsys, tmp_path, "--stop-after", "1", name="part")
    assert "--resume" in out
    code, _, err = cli(capsys, "train", "--resume", part, "-q", "--no-report")
    assert code == 0, err
    a, a_arrays, _ = load_checkpoint(os.path.join(straight, "last.npz"))
    b, b_arrays, meta = load_checkpoint(os.path.join(part, "last.npz"))
    assert meta["epoch"] == 2
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k]), k
    for k in a_arrays:
        assert np.array_equal(a_arrays[k], b_arrays[k]), k
    assert rows_without_seconds(straight) == rows_without_seconds(part)
    # a finished run cannot be resumed without more epochs
    code, _, err = cli(capsys, "train", "--resume", part, "-q")
    assert code == 2 and "already completed 2 of 2 epochs" in err


def test_final_fit_without_a_validation_part(capsys, tmp_path):
    """data.val_fraction 0, as the digits recipe's final fit: no validation metrics anywhere, best.npz by the
    training loss, evaluate and predict use the weight average with the test-time shifts, --split val refused."""
    code, out, err = cli(capsys, "train", TINY, "--run-dir", str(tmp_path), "--set", "trainer.name=final",
                         "--set", "data.val_fraction=0", "--set", "trainer.checkpoint.monitor=train_loss",
                         "--set", "trainer.ema_decay=0.9", "--set", "data.tta.shift=1")
    assert code == 0, err
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and not any("val" in line for line in epoch_lines)
    (run,) = glob.glob(os.path.join(str(tmp_path), "final-*"))
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["data"] == {"name": "digits", "train": 1437, "val": 0, "test": 360}
    assert summary["final"]["val_acc"] is None and summary["final"]["val_loss"] is None
    assert summary["best"]["metric"] == "train_loss" and summary["best"]["best_epoch"] in (1, 2)
    with open(os.path.join(run, "metrics.csv")) as f:
        assert all(r["val_loss"] == "nan" and r["val_acc"] == "nan" for r in csv.DictReader(f))
    assert os.path.exists(os.path.join(run, "best.npz"))

    code, out, _ = cli(capsys, "evaluate", run)
    assert code == 0 and f"accuracy {100 * summary['test']['acc']:.2f}%" in out
    code, _, err = cli(capsys, "evaluate", run, "--split", "val")
    assert code == 2 and "the val part of the data is empty" in err

    from sklearn.datasets import load_digits

    from cnnframe.losses import softmax
    from cnnframe.tta import tta_shifts

    images = load_digits().images[:4]
    np.save(tmp_path / "four.npy", images)
    code, out, _ = cli(capsys, "predict", run, "--input", str(tmp_path / "four.npy"))
    assert code == 0
    probs = np.array([[float(v) for v in line.split(",")[2:]] for line in out.strip().splitlines()[1:]])
    model, _, _ = load_checkpoint(os.path.join(run, "last.npz"))  # the averaged weights
    model.eval()
    x = (images[:, None] / 16).astype(np.float32)
    copies = [np.roll(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (a, b), axis=(2, 3))[:, :, 1:9, 1:9]
              for a, b in tta_shifts(1)]
    expected = np.mean([softmax(model.forward(c).astype(np.float64)) for c in copies], axis=0)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    if importlib.util.find_spec("matplotlib"):  # the report's misclassified images are the TTA predictions
        code, out, err = cli(capsys, "report", run)
        assert code == 0 and "report.html" in out, err


def test_same_seed_same_metrics(capsys, tmp_path):
    a, _ = train_tiny(capsys, tmp_path, name="a")
    b, _ = train_tiny(capsys, tmp_path, name="b")
    assert rows_without_seconds(a) == rows_without_seconds(b)
    c, _ = train_tiny(capsys, tmp_path, "--set", "trainer.seed=1", name="c")
    assert rows_without_seconds(a) != rows_without_seconds(c)


def test_gradcheck(capsys):
    code, out, _ = cli(capsys, "gradcheck", TINY)
    assert code == 0, out
    assert "7 of 7 layers pass" in out and "[ok] layer  0 Conv2D" in out


def test_train_on_npz(capsys, tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    X = rng.normal(0, 1, (120, 8, 8)) + y[:, None, None]  # separable by brightness
    np.savez(tmp_path / "mine.npz", X=X, y=y)
    cfg = tmp_path / "npz.yaml"
    cfg.write_text(open(TINY).read().replace("dataset: digits", "dataset: npz\n  path: mine.npz\n  normalize: standardize")
                   .replace("out_features: 10", "out_features: 3"))
    code, out, err = cli(capsys, "train", str(cfg), "-q", "--no-report", "--run-dir", str(tmp_path / "runs"))
    assert code == 0, err
    assert "test accuracy" in out


# -- user errors: exit status 2, the key path, no traceback ---------------------------------------------------
BAD = {
    "unknown key": ("  epochs: 2", "  epoch: 2", "trainer.epoch", "did you mean 'epochs'"),
    "wrong type": ("  batch_size: 64", "  batch_size: [64]", "trainer.batch_size", "integer"),
    "out of range": ("  epochs: 2", "  epochs: -3", "trainer.epochs", ">= 1"),
    "unknown layer": ("type: maxpool2d", "type: maxpool", "model.layers[3].type", "did you mean 'maxpool2d'"),
    "bad layer value": ("kernel_size: 3", "kernel_size: 0", "model.layers[0].kernel_size", ">= 1"),
    "shape mismatch": ("{type: maxpool2d, kernel_size: 2}", "{type: maxpool2d, kernel_size: 12}",
                       "model.layers[3]", "(4, 8, 8)"),
    "malformed yaml": ("  batch_size: 64", "  batch_size: [64", "digits-tiny.yaml:", "malformed YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config(capsys, tmp_path, case):
    old, new, key, needle = BAD[case]
    text = open(TINY).read()
    assert old in text
    path = tmp_path / "digits-tiny.yaml"
    path.write_text(text.replace(old, new, 1))
    for command in ("validate", "train"):
        code, out, err = cli(capsys, command, str(path), "--set", f"trainer.run_dir={tmp_path}")
        assert code == 2
        assert key in err and needle in err and "Traceback" not in err
        assert err.startswith("cnnframe: error: ") and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "digits-tiny")  # nothing was trained


def test_malformed_yaml_line_number(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  dataset: digits\nmodel:\n  layers:\n    - {type: relu\ntrainer: {}\n")
    code, _, err = cli(capsys, "validate", str(path))
    assert code == 2 and f"{path}:6:" in err


def test_bad_set_and_missing_files(capsys, tmp_path):
    code, _, err = cli(capsys, "validate", TINY, "--set", "trainer.epochs")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = cli(capsys, "validate", TINY, "--set", "model.layers[20].out_channels=3")
    assert code == 2 and "model.layers[20]" in err and "out of range" in err
    code, _, err = cli(capsys, "validate", TINY, "--set", "optimizer.lr=fast")
    assert code == 2 and "optimizer.lr" in err and "--set optimizer.lr=fast" in err
    code, _, err = cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "not found" in err
    code, _, err = cli(capsys, "evaluate", str(tmp_path / "nothing"))
    assert code == 2 and "not found" in err
    code, _, err = cli(capsys, "train", "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "not found" in err
    (tmp_path / "junk.npz").write_bytes(b"junk")
    code, _, err = cli(capsys, "predict", str(tmp_path / "junk.npz"), "--input", "x.npy")
    assert code == 2 and "not a cnnframe checkpoint" in err


def test_bad_npz_data(capsys, tmp_path):
    np.savez(tmp_path / "bad.npz", X=np.zeros((30, 8, 8)), labels=np.zeros(30, int))
    code, _, err = cli(capsys, "validate", TINY, "--set", "data.dataset=npz", "--set",
                       f"data.path={tmp_path / 'bad.npz'}")
    assert code == 2 and "data.path" in err and "has no array 'y'" in err and "arrays: X, labels" in err
    np.savez(tmp_path / "range.npz", X=np.zeros((30, 8, 8)), y=np.arange(30) % 12)
    code, _, err = cli(capsys, "validate", TINY, "--set", "data.dataset=npz", "--set",
                       f"data.path={tmp_path / 'range.npz'}", "--set", "data.num_classes=10")
    assert code == 2 and "data.path" in err and "out of range for num_classes=10" in err


def test_predict_rejects_wrong_input_shape(capsys, tmp_path):
    run, _ = train_tiny(capsys, tmp_path, "--set", "trainer.epochs=1", name="p")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 7, 7)))
    code, _, err = cli(capsys, "predict", os.path.join(run, "last.npz"), "--input", str(tmp_path / "wrong.npy"))
    assert code == 2 and "(3, 7, 7)" in err and "(1, 8, 8)" in err


def test_user_error_subprocess_has_no_traceback(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(open(TINY).read().replace("type: conv2d", "type: conv2"))
    r = run_module("train", str(path), "--run-dir", str(tmp_path))
    assert r.returncode == 2
    assert "model.layers[0].type" in r.stderr and "did you mean 'conv2d'" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    r = run_module("train", TINY, "--bogus-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_plugin_forward_disagreeing_with_output_shape(capsys, tmp_path):
    (tmp_path / "halve.py").write_text(
        "import cnnframe\nfrom cnnframe.layers import Layer\n\n\n"
        "@cnnframe.register_layer('test_halve')\nclass Halve(Layer):\n"
        "    def forward(self, x):\n        return x[:, : x.shape[1] // 2]\n\n"
        "    def backward(self, g):\n        return g\n")
    cfg = tmp_path / "halve.yaml"
    cfg.write_text("plugins: [halve.py]\n" + open(TINY).read().replace("{type: relu}", "{type: test_halve}"))
    code, _, err = cli(capsys, "validate", str(cfg))
    assert code == 2 and "model.layers[2]" in err
    assert "declares (4, 8, 8) but forward() returned samples of shape (2, 8, 8)" in err and "halve.py" in err


def test_interrupt_and_divergence_exit_codes(capsys, tmp_path, monkeypatch):
    from cnnframe import trainer as T

    def interrupted(self, stop_after=None):
        raise T.TrainingInterrupted("interrupted during epoch 1")

    monkeypatch.setattr(T.Trainer, "fit", interrupted)
    code, _, err = cli(capsys, "train", TINY, "-q", "--run-dir", str(tmp_path))
    assert code == 130 and "interrupted during epoch 1" in err
    monkeypatch.setattr(T.Trainer, "fit", lambda self, stop_after=None: (_ for _ in ()).throw(
        T.TrainingDiverged("the loss became nan")))
    code, _, err = cli(capsys, "train", TINY, "-q", "--run-dir", str(tmp_path))
    assert code == 1 and "the loss became nan" in err and "Traceback" not in err


def test_closed_pipe_is_not_a_traceback(tmp_path):
    """`python -m cnnframe validate CONFIG | head -1` stops quietly when head exits."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnframe", "validate", DIGITS], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes anything
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_validate_and_gradcheck_a_resnet_config(capsys):
    resnet = os.path.join(ROOT, "configs", "resnet-digits.yaml")
    code, out, _ = cli(capsys, "validate", resnet)
    assert code == 0, out
    assert "Total parameters: 38,474" in out and "     shortcut.0: Conv2D" in out
    code, out, _ = cli(capsys, "gradcheck", resnet)
    assert code == 0, out
    assert "9 of 9 layers pass" in out and "[ok] layer  4 Residual" in out and "shortcut.0.weight" in out


# -- stopping and resuming: Ctrl-C, a closed pipe, a full disk, a finished run, run directories --------------------
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path):
    """Ctrl-C while the libraries load, and again while the config, data and model are being made."""
    for wait_for_output in (False, True):
        proc = subprocess.Popen([sys.executable, "-m", "cnnframe", "train", TINY, "--run-dir", str(tmp_path)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if wait_for_output:
            proc.stdout.readline()  # "# resolved config": the run is made, its model being summarised
        else:
            time.sleep(0.5)  # well inside `import cnnframe` (numpy, scipy, scikit-learn)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "interrupted" in err


def test_a_closed_pipe_stops_training_resumably_with_status_141(capsys, tmp_path):
    """`train ... | head`: the reader goes after the first lines; the next epoch line finds the pipe closed."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnframe", "train", TINY, "--run-dir", str(tmp_path),
                             "--set", "trainer.epochs=3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stdout:
        if line.startswith("threads:"):  # the last line before the first epoch
            break
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "output closed (broken pipe) after epoch 1" in err
    (run,) = glob.glob(os.path.join(str(tmp_path), "digits-tiny-*"))
    assert f"continue with: python -m cnnframe train --resume {run}" in err
    code, _, err = cli(capsys, "train", "--resume", os.path.join(str(tmp_path), "latest"), "-q", "--no-report")
    assert code == 0, err
    assert [r["epoch"] for r in rows_without_seconds(run)] == ["1", "2", "3"]


def test_resuming_a_finished_run_that_lost_its_summary_writes_it(capsys, tmp_path):
    run, _ = train_tiny(capsys, tmp_path, name="done")
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    os.remove(os.path.join(run, "summary.json"))  # as when killed while writing it (test_trainer kills it there)
    code, out, err = cli(capsys, "train", "--resume", run, "--no-report")
    assert code == 0, err
    assert f"finishing {run} after epoch 2 of 2" in out and "confusion matrix" in out
    with open(os.path.join(run, "summary.json")) as f:
        again = json.load(f)
    assert again["status"] == "completed" and again["test"] == summary["test"]
    assert [r["epoch"] for r in rows_without_seconds(run)] == ["1", "2"]
    code, _, err = cli(capsys, "train", "--resume", run, "-q")  # now it is finished
    assert code == 2 and "already completed 2 of 2 epochs" in err and "--set trainer.epochs=N" in err


def test_a_full_disk_keeps_the_checkpoints_and_exits_74(capsys, tmp_path, monkeypatch):
    """Every file written from epoch 2 on fails with ENOSPC part-way: the run keeps epoch 1 intact."""
    straight, _ = train_tiny(capsys, tmp_path, "--set", "trainer.epochs=3", name="straight")
    from cnnframe import io as cio
    from cnnframe.trainer import Trainer

    fdopen, train_epoch, full = os.fdopen, Trainer.train_epoch, []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def filling(self, epoch):
        if epoch == 1:
            full.append(True)
        return train_epoch(self, epoch)

    monkeypatch.setattr(cio.os, "fdopen", lambda *a, **k: FullDisk(fdopen(*a, **k)) if full else fdopen(*a, **k))
    monkeypatch.setattr(Trainer, "train_epoch", filling)
    code, out, err = cli(capsys, "train", TINY, "-q", "--no-report", "--run-dir", str(tmp_path),
                         "--set", "trainer.name=full", "--set", "trainer.epochs=3")
    (run,) = glob.glob(os.path.join(str(tmp_path), "full-*"))
    assert code == 74 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "last.npz still holds the state after epoch 1" in err
    assert f"--resume {run}" in err
    _, _, meta = load_checkpoint(os.path.join(run, "last.npz"))
    assert meta["epoch"] == 1 and [r["epoch"] for r in rows_without_seconds(run)] == ["1"]
    assert sorted(f for f in os.listdir(run) if f.startswith(".")) == [".lock"]  # no temporary file, no journal
    monkeypatch.undo()  # space again
    code, _, err = cli(capsys, "train", "--resume", run, "-q", "--no-report")
    assert code == 0, err
    assert rows_without_seconds(run) == rows_without_seconds(straight)
    for name in ("last.npz", "best.npz"):
        a, b = load_checkpoint(os.path.join(straight, name)), load_checkpoint(os.path.join(run, name))
        for k, v in a[0].state_dict().items():
            assert np.array_equal(v, b[0].state_dict()[k]), (name, k)


def test_a_full_disk_when_predictions_are_written_exits_74(capsys, tmp_path, monkeypatch):
    run, _ = train_tiny(capsys, tmp_path, "--set", "trainer.epochs=1", name="p")
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
    (tmp_path / "preds.csv").write_text("before\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    code, _, err = cli(capsys, "predict", run, "--input", str(tmp_path / "x.npy"),
                       "--output", str(tmp_path / "preds.csv"))
    assert code == 74 and err == f"cnnframe: error: cannot write {tmp_path / 'preds.csv'}: No space left on device\n"
    assert (tmp_path / "preds.csv").read_text() == "before\n" and not glob.glob(str(tmp_path / ".*.tmp"))


def test_run_directory_mistakes_are_user_errors(capsys, tmp_path):
    run, _ = train_tiny(capsys, tmp_path, "--set", "trainer.epochs=1", name="r")
    code, _, err = cli(capsys, "train", "--resume", run, "--run-dir", str(tmp_path / "elsewhere"))
    assert code == 2 and "--run-dir" in err and "leave out --run-dir" in err
    (tmp_path / "afile").write_text("")
    code, _, err = cli(capsys, "train", TINY, "--run-dir", str(tmp_path / "afile"))
    assert code == 2 and "afile" in err and "is a file, not a directory" in err and "Traceback" not in err


def test_bad_thread_count_names_the_environment_variable(capsys, monkeypatch):
    monkeypatch.setenv("CNNFRAME_NUM_THREADS", "0")
    code, _, err = cli(capsys, "train", TINY)
    assert code == 2 and err == ("cnnframe: error: the environment variable CNNFRAME_NUM_THREADS must be a positive "
                                 "integer, got '0'\n")


def test_predict_names_its_own_mistakes(capsys, tmp_path):
    run, _ = train_tiny(capsys, tmp_path, "--set", "trainer.epochs=1", name="q")
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
    code, _, err = cli(capsys, "predict", run, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path))
    assert code == 2 and f"--output {tmp_path} is a directory" in err and ".tmp" not in err
    for name, content, why in [("random.npy", bytes(range(256)) * 4, "not a .npy array or an .npz archive"),
                               ("empty.npy", b"", "the file is empty"),
                               ("objects.npy", None, "holds Python objects")]:
        if content is None:
            np.save(tmp_path / name, np.array([{}, 1], dtype=object), allow_pickle=True)
        else:
            (tmp_path / name).write_bytes(content)
        code, _, err = cli(capsys, "predict", run, "--input", str(tmp_path / name))
        assert code == 2 and why in err and "allow_pickle" not in err and "Traceback" not in err, err
    np.save(tmp_path / "huge.npy", np.full((2, 8, 8), 1e40))  # finite in float64; 1e40 / 16 overflows float32
    code, out, err = cli(capsys, "predict", run, "--input", str(tmp_path / "huge.npy"))
    assert code == 2 and "not finite as float32" in err and "huge.npy" in err and out == ""


def test_data_that_overflows_the_model_dtype_and_empty_data_files(capsys, tmp_path):
    X = np.zeros((30, 8, 8))
    X[3, 2, 2] = 1e300  # finite in float64, infinite in float32
    np.savez(tmp_path / "huge.npz", X=X, y=np.arange(30) % 3)
    (tmp_path / "empty.npz").write_bytes(b"")
    base = ["--set", "data.dataset=npz", "--set", "model.layers[6].out_features=3", "--run-dir", str(tmp_path)]
    code, _, err = cli(capsys, "train", TINY, *base, "--set", f"data.path={tmp_path / 'huge.npz'}")
    assert code == 2 and "1 input value(s) are not finite as float32" in err and "Traceback" not in err
    code, _, err = cli(capsys, "train", TINY, *base, "--set", "trainer.dtype=float64",  # fits float64
                       "--set", f"data.path={tmp_path / 'huge.npz'}", "--set", "trainer.epochs=1", "-q", "--no-report")
    assert code == 0, err
    code, _, err = cli(capsys, "validate", TINY, "--set", "data.dataset=npz",
                       "--set", f"data.path={tmp_path / 'empty.npz'}")
    assert code == 2 and "data.path" in err and "the file is empty" in err


def test_runs_latest_works_in_the_readme_flow_with_several_runs(capsys, tmp_path):
    """README: train, then evaluate / predict / resume `runs/latest`, however many runs the folder holds."""
    runs = tmp_path / "runs"
    first, _ = train_tiny(capsys, runs, name="first")
    second, out = train_tiny(capsys, runs, "--stop-after", "1", name="second")
    assert os.path.realpath(runs / "latest") == os.path.realpath(second)
    code, out, err = cli(capsys, "train", "--resume", str(runs / "latest"), "-q", "--no-report")
    assert code == 0 and f"run: {second}" in out, err  # the run is called by its own name, not 'latest'
    with open(os.path.join(second, "summary.json")) as f:
        assert json.load(f)["name"] == os.path.basename(second)
    code, out, _ = cli(capsys, "evaluate", str(runs / "latest"))
    assert code == 0 and f"checkpoint: {runs / 'latest' / 'last.npz'}" in out
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
    code, out, _ = cli(capsys, "predict", str(runs / "latest"), "--input", str(tmp_path / "x.npy"))
    assert code == 0 and len(out.strip().splitlines()) == 3
    assert sorted(os.listdir(runs)) == sorted([os.path.basename(first), os.path.basename(second), "latest"])
