"""The training loop: Python API, determinism, resume, interruption, divergence, early stopping, kills."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import cnnframe
from cnnframe import checkpoint
from cnnframe.config import load_config
from cnnframe.data import Preprocessing, Splits, load_dataset
from cnnframe.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from cnnframe.model import load_checkpoint
from cnnframe.errors import CheckpointError
from cnnframe.trainer import Monitor, Trainer, TrainingDiverged, TrainingInterrupted, evaluate_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def tiny_cfg(tmp_path, *sets):
    return load_config(TINY, [f"trainer.run_dir={tmp_path}", *sets])


def weights(run_dir, name="last.npz"):
    model, arrays, meta = load_checkpoint(os.path.join(run_dir, name))
    return model.state_dict(), arrays, meta


def metric_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


# -- Python API -------------------------------------------------------------------------------------------------
def test_python_api_learns_digits(digits):
    model = cnnframe.Sequential([Conv2D(8, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(10)],
                                input_shape=digits.input_shape)
    opt = cnnframe.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(model, cnnframe.SoftmaxCrossEntropy(), opt, digits, epochs=3, batch_size=32, seed=1,
                      quiet=True)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["test"]["acc"] > 0.9  # chance is 0.1
    cm = np.array(summary["test"]["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 360 and np.trace(cm) / 360 == pytest.approx(summary["test"]["acc"])
    assert [r["epoch"] for r in trainer.history] == [1, 2, 3]
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]


def test_learning_rate_follows_the_schedule_per_step(digits):
    model = cnnframe.Sequential([Flatten(), Dense(10)], input_shape=digits.input_shape)
    opt = cnnframe.SGD(model.parameters(), lr=0.1)
    sched = cnnframe.optim.OneCycle(0.1, 2)
    seen = []
    step = opt.step

    def spy():
        seen.append(opt.lr)
        step()

    opt.step = spy
    Trainer(model, cnnframe.SoftmaxCrossEntropy(), opt, digits, schedule=sched, epochs=2, batch_size=100,
            quiet=True).fit()
    steps = len(seen) // 2
    assert len(seen) == 2 * steps == 2 * int(np.ceil(len(digits.train[1]) / 100))
    expected = [sched.lr_at(e + i / steps) for e in range(2) for i in range(steps)]
    assert seen == pytest.approx(expected, rel=1e-12)


def test_monitor_modes():
    m = Monitor("val_loss", min_delta=0.1)
    assert m.update({"epoch": 1, "val_loss": 1.0})
    assert not m.update({"epoch": 2, "val_loss": 0.95}) and m.bad_epochs == 1
    assert m.update({"epoch": 3, "val_loss": 0.8}) and m.best_epoch == 3 and m.bad_epochs == 0
    a = Monitor("val_acc")
    assert a.update({"epoch": 1, "val_acc": 0.5}) and not a.update({"epoch": 2, "val_acc": 0.4})
    assert not a.update({"epoch": 3, "val_acc": float("nan")}) and a.best == 0.5


# -- run directory, determinism, resume ------------------------------------------------------------------------------
def test_run_dir_contents(tmp_path):
    cfg = tiny_cfg(tmp_path)
    trainer = Trainer.from_config(cfg, quiet=True)
    summary = trainer.fit()
    run = trainer.run_dir
    assert os.path.basename(run).startswith("digits-tiny-")
    # the lock file stays (a note; the lock itself went with the process), no temporary file or journal
    assert sorted(os.listdir(run)) == [".lock", "best.npz", "config.yaml", "last.npz", "metrics.csv", "summary.json"]
    assert os.readlink(os.path.join(str(tmp_path), "latest")) == os.path.basename(run)
    assert load_config(os.path.join(run, "config.yaml")) == cfg
    rows = metric_rows(run)
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    with open(os.path.join(run, "summary.json")) as f:
        saved = json.load(f)
    assert saved["test"]["acc"] == summary["test"]["acc"] and saved["status"] == "completed"
    state, arrays, meta = weights(run)
    assert meta["epoch"] == 2 and meta["config"] == cfg and meta["kind"] == "last"
    assert any(k.startswith("optim/momentum_buffer/") for k in arrays)
    assert meta["data"]["scale"] == 1 / 16
    assert meta["data"]["preprocessing"] == Preprocessing(0.0, 1 / 16).to_dict()  # digits: arrays, fed as x / 16


def test_the_data_preprocessing_and_class_names_travel_with_the_model(digits, tmp_path):
    named = Splits(digits.train, digits.val, digits.test, 10, preprocessing=digits.preprocessing,
                   class_names=[f"digit {k}" for k in range(10)])
    model = cnnframe.Sequential([Flatten(), Dense(10)], input_shape=digits.input_shape)
    trainer = Trainer(model, cnnframe.SoftmaxCrossEntropy(), cnnframe.SGD(model.parameters(), lr=0.1), named,
                      epochs=1, run_dir=str(tmp_path / "named"), quiet=True)
    assert model.preprocessing == digits.preprocessing and model.class_names[3] == "digit 3"
    trainer.fit()
    loaded, _, meta = load_checkpoint(os.path.join(str(tmp_path / "named"), "last.npz"))
    assert loaded.preprocessing == digits.preprocessing and meta["data"]["class_names"][9] == "digit 9"
    # arrays handed over as they are fed: the trainer records no preprocessing it does not know
    bare = Splits(digits.train, digits.val, digits.test, 10)
    model = cnnframe.Sequential([Flatten(), Dense(10)], input_shape=digits.input_shape)
    Trainer(model, cnnframe.SoftmaxCrossEntropy(), cnnframe.SGD(model.parameters(), lr=0.1), bare, epochs=1,
            run_dir=str(tmp_path / "bare"), quiet=True).fit()
    _, _, meta = load_checkpoint(os.path.join(str(tmp_path / "bare"), "last.npz"))
    assert "preprocessing" not in meta["data"] and "offset" not in meta["data"] and meta["data"]["num_classes"] == 10


def test_straight_equals_interrupted_and_resumed(tmp_path):
    """3 epochs straight == 1 epoch, stop + resume to 2, Ctrl-C in epoch 3, resume: identical weights."""
    straight = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=3", "trainer.name=a"), quiet=True)
    straight.fit()

    cfg = tiny_cfg(tmp_path, "trainer.epochs=3", "trainer.name=b")
    first = Trainer.from_config(cfg, quiet=True)
    assert first.fit(stop_after=1)["status"] == "paused"
    second = Trainer.resume(first.run_dir, quiet=True)
    assert second.epoch == 1
    # Ctrl-C in the middle of epoch 3: last.npz must hold the state after epoch 2.
    calls = {"n": 0}
    layer = second.model.layers[0]
    forward = layer.forward

    def interrupt_in_epoch_3(x):
        if second.epoch == 2:
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return forward(x)

    layer.forward = interrupt_in_epoch_3
    with pytest.raises(TrainingInterrupted, match="after epoch 2"):
        second.fit()
    assert calls["n"] == 5 and second.epoch == 2
    _, _, meta = weights(first.run_dir)
    assert meta["epoch"] == 2
    third = Trainer.resume(first.run_dir, quiet=True)
    summary = third.fit()
    assert summary["status"] == "completed" and third.epoch == 3

    a, a_opt, _ = weights(straight.run_dir)
    b, b_opt, _ = weights(first.run_dir)
    assert_same_state(a, b)
    assert_same_state(a_opt, b_opt)
    ra = [{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(straight.run_dir)]
    rb = [{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(first.run_dir)]
    assert ra == rb and len(ra) == 3
    assert weights(straight.run_dir, "best.npz")[2]["epoch"] == weights(first.run_dir, "best.npz")[2]["epoch"]


# the levers of the digits recipe together: a weight average, rotations and zooms, test-time shifts
LEVERS = ("trainer.ema_decay=0.9", "data.augment.rotate=12", "data.augment.scale=0.1", "data.tta.shift=1")


def test_weight_average_run_resumes_bit_identically_and_saves_the_averages(tmp_path):
    """3 epochs straight == 1 epoch + resume, with the weight average, affine augmentation and TTA on:
    checkpoints hold the averages as the model and the training weights under train/."""
    straight = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=3", "trainer.name=a", *LEVERS), quiet=True)
    summary = straight.fit()
    first = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=3", "trainer.name=b", *LEVERS), quiet=True)
    first.fit(stop_after=1)
    second = Trainer.resume(first.run_dir, quiet=True)
    assert second.ema.updates == first.ema.updates > 0
    second.fit()

    a, a_arrays, a_meta = weights(straight.run_dir)
    b, b_arrays, b_meta = weights(first.run_dir)
    assert_same_state(a, b)
    assert_same_state(a_arrays, b_arrays)
    assert a_meta["ema"] == b_meta["ema"] == {"decay": 0.9, "updates": straight.ema.updates}
    ra = [{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(straight.run_dir)]
    assert ra == [{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(first.run_dir)]
    # the file's model is the average; the training weights ride along and differ from it
    assert_same_state(a, straight.ema.average)
    live = {k[len("train/"):]: v for k, v in a_arrays.items() if k.startswith("train/")}
    assert_same_state(live, straight.model.state_dict())
    assert not np.array_equal(live["0.weight"], a["0.weight"])
    assert not np.array_equal(live["1.running_mean"], a["1.running_mean"])  # BatchNorm statistics averaged too
    # the reported test accuracy is the averaged model's, with the shifted copies
    model, _, _ = load_checkpoint(os.path.join(straight.run_dir, "last.npz"))
    X, y = straight.data.test
    res = evaluate_model(model.eval(), straight.loss, X, y, 10, tta_shift=1)
    assert res["acc"] == summary["test"]["acc"] and res["loss"] == summary["test"]["loss"]


def test_resume_refuses_a_changed_weight_average_setting(tmp_path):
    trainer = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=2", "trainer.ema_decay=0.9"), quiet=True)
    trainer.fit(stop_after=1)
    with pytest.raises(CheckpointError, match="with trainer.ema_decay set; resume it with the same"):
        Trainer.resume(trainer.run_dir, quiet=True, overrides=["trainer.ema_decay=null"])
    plain = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=2", "trainer.name=plain"), quiet=True)
    plain.fit(stop_after=1)
    with pytest.raises(CheckpointError, match="without trainer.ema_decay"):
        Trainer.resume(plain.run_dir, quiet=True, overrides=["trainer.ema_decay=0.9"])


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=3"), quiet=True)
    forward = trainer.loss.forward

    def poisoned(pred, target):
        value = forward(pred, target)
        return float("nan") if trainer.epoch == 1 else value

    trainer.loss.forward = poisoned
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 1/") as info:
        trainer.fit()
    assert "last.npz keeps the state after epoch 1" in str(info.value)
    state, _, meta = weights(trainer.run_dir)
    assert meta["epoch"] == 1
    assert_same_state(state, trainer.model.state_dict())  # the model was rolled back to epoch 1 too
    with open(os.path.join(trainer.run_dir, "summary.json")) as f:
        assert json.load(f)["status"] == "diverged"
    assert len(metric_rows(trainer.run_dir)) == 1


def test_early_stopping(tmp_path):
    cfg = tiny_cfg(tmp_path, "trainer.epochs=6", "trainer.early_stopping.patience=1",
                   "trainer.early_stopping.min_delta=100", "trainer.early_stopping.monitor=train_loss")
    trainer = Trainer.from_config(cfg, quiet=True)
    summary = trainer.fit()
    assert summary["status"] == "early_stopped" and trainer.epoch == 2
    assert summary["test"] is not None
    assert weights(trainer.run_dir)[2]["epoch"] == 2


def test_test_checkpoint_best_uses_best_weights(tmp_path):
    cfg = tiny_cfg(tmp_path, "trainer.epochs=3", "trainer.test_checkpoint=best", "trainer.checkpoint.monitor=val_acc")
    trainer = Trainer.from_config(cfg, quiet=True)
    summary = trainer.fit()
    best_state, _, meta = weights(trainer.run_dir, "best.npz")
    assert summary["test"]["checkpoint"] == "best" and summary["test"]["epoch"] == meta["epoch"]
    live = {k: v.copy() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(best_state)
    X, y = trainer.data.test
    assert trainer.evaluate(X, y)["acc"] == summary["test"]["acc"]
    trainer.model.load_state_dict(live)


def test_resume_rejects_a_mismatched_model(tmp_path):
    trainer = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=1"), quiet=True)
    trainer.fit()
    other = load_config(TINY, [f"trainer.run_dir={tmp_path}", "model.layers[0].out_channels=6"])
    with pytest.raises(ValueError, match="does not fit the configured model"):
        Trainer.resume(trainer.run_dir, other, quiet=True)


def test_mse_loss_trains_on_one_hot_targets(digits):
    model = cnnframe.Sequential([Flatten(), Dense(10)], input_shape=digits.input_shape)
    opt = cnnframe.SGD(model.parameters(), lr=0.5, momentum=0.5)
    trainer = Trainer(model, cnnframe.MSE(), opt, digits, epochs=2, batch_size=64, quiet=True)
    summary = trainer.fit()
    assert summary["test"]["acc"] > 0.8
    res = trainer.evaluate(*digits.val)
    assert res["probs"].shape == (len(digits.val[1]), 10)  # raw outputs for a non-softmax loss


@pytest.mark.parametrize("levers, chunks", [((), "null"), ((), "2"), (LEVERS, "null")],
                         ids=["plain", "chunks", "levers"])
def test_thread_count_does_not_change_a_run(tmp_path, monkeypatch, levers, chunks):
    """The kernels cut work into fixed spans, so 1 and 2 threads train to the same bits (small
    layers included: the size threshold that keeps them on one thread is lowered to zero here);
    so do runs computing each batch in chunks, as data-parallel runs do."""
    from cnnframe.ops import conv, pool

    monkeypatch.setattr(conv, "GRAIN_FLOPS", 1)
    monkeypatch.setattr(pool, "GRAIN_ELEMS", 1)
    monkeypatch.setattr(cnnframe.parallel, "_dynamic", False)
    monkeypatch.setattr(cnnframe.parallel, "_num_threads", cnnframe.get_num_threads())  # restored after
    sets = ("trainer.epochs=2", f"trainer.batch_chunks={chunks}", *levers)
    one = Trainer.from_config(tiny_cfg(tmp_path, *sets, "trainer.name=one", "trainer.threads=1"), quiet=True)
    one.fit()
    two = Trainer.from_config(tiny_cfg(tmp_path, *sets, "trainer.name=two", "trainer.threads=3"), quiet=True)
    two.fit()
    a, a_opt, _ = weights(one.run_dir)
    b, b_opt, _ = weights(two.run_dir)
    assert_same_state(a, b)
    assert_same_state(a_opt, b_opt)


def test_batch_chunks_must_fit_the_smallest_batch(tmp_path):
    # 1293 training samples in batches of 64: 21 batches of 61 or 62 samples
    with pytest.raises(cnnframe.ConfigError, match=r"trainer\.batch_chunks: 62 chunks .* smallest batch has 61"):
        Trainer.from_config(tiny_cfg(tmp_path, "trainer.batch_chunks=62"), quiet=True)
    assert os.listdir(tmp_path) == []  # checked before the run directory is made


# -- the API's errors; a config built once ---------------------------------------------------------------------
class _Halve(cnnframe.Layer):
    """Declares the input's shape but returns half the features: the trainer's self-check names it."""

    def forward(self, x):
        return x[:, : x.shape[1] // 2]

    def backward(self, g):
        return np.concatenate([g, g], axis=1)


def test_api_trainer_raises_the_apis_error(digits):
    model = cnnframe.Sequential([Flatten(), _Halve(), Dense(10)], input_shape=digits.input_shape)
    with pytest.raises(ValueError, match=r"layer 1 \(_Halve\): output_shape\(\(64,\)\) declares \(64,\) but "
                                         r"forward\(\) returned samples of shape \(32,\)") as info:
        Trainer(model, cnnframe.SoftmaxCrossEntropy(), cnnframe.SGD(model.parameters(), lr=0.1), digits, quiet=True)
    assert not isinstance(info.value, cnnframe.ConfigError) and info.value.layer_index == 1


def test_a_loaded_config_is_built_once(tmp_path, monkeypatch):
    built = []
    init = Conv2D.__init__

    def counting(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(Conv2D, "__init__", counting)
    setup = cnnframe.config.load(TINY, [f"trainer.run_dir={tmp_path}"])
    assert len(built) == 1
    trainer = Trainer.from_config(setup, quiet=True)
    assert len(built) == 1  # nothing built again: the trainer takes the setup's objects
    assert trainer.model is setup.model and trainer.model.layers[0] is built[0]
    assert trainer.optimizer is setup.optimizer and trainer.loss is setup.loss and trainer.schedule is setup.schedule


# -- a kill at any write of a commit ------------------------------------------------------------------------------
# Imports cnnframe once, then forks one process per kill point (forking before any kernel has run, so no
# OpenMP team exists yet), in two lanes side by side: the process trains with os.open (creating), its first
# write, os.fsync, os.replace and os.unlink counted from the start of Trainer.fit, sends itself the signal at
# the chosen one, and a second process resumes the run with `train --resume`.  Prints each pair's exit
# statuses as JSON.
KILL_DRIVER = r'''
import json
import os
import signal
import sys
import traceback

from cnnframe import cli
from cnnframe.trainer import Trainer

spec = json.loads(sys.argv[1])
real = {name: getattr(os, name) for name in ("open", "fsync", "replace", "unlink", "fdopen")}
state = {"armed": False, "n": 0, "at": None, "signal": None, "log": []}


def event(kind, what):
    if state["armed"]:
        state["n"] += 1
        state["log"].append(f"{kind} {what}")
        if state["n"] == state["at"]:
            os.kill(os.getpid(), state["signal"])


class CountedFile:
    """A file whose first write is an event (the moment a temporary file starts to fill)."""

    def __init__(self, f):
        self.f, self.written = f, False

    def write(self, data):
        if not self.written:
            self.written = True
            event("write", os.path.basename(self.f.name) if isinstance(self.f.name, str) else "fd")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def patch():
    def open_(path, flags, *a, **k):
        if flags & os.O_CREAT:
            event("create", os.path.basename(path))
        return real["open"](path, flags, *a, **k)

    def fsync(fd):
        event("fsync", "")
        return real["fsync"](fd)

    def replace(src, dst, *a, **k):
        event("rename", os.path.basename(dst))
        return real["replace"](src, dst, *a, **k)

    def unlink(path, *a, **k):
        event("unlink", os.path.basename(path))
        return real["unlink"](path, *a, **k)

    os.open, os.fsync, os.replace, os.unlink = open_, fsync, replace, unlink
    os.fdopen = lambda *a, **k: CountedFile(real["fdopen"](*a, **k))
    fit = Trainer.fit

    def armed_fit(self, *a, **k):
        state["armed"] = True
        return fit(self, *a, **k)

    Trainer.fit = armed_fit


def in_child(run):
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = run()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def kill_and_resume(point):
    def train():
        patch()
        state["at"], state["signal"] = point.get("at"), getattr(signal, point.get("signal") or "SIGKILL")
        code = cli.main(["train", spec["config"], "-q", "--run-dir", point["root"], *spec["sets"]])
        if point.get("log"):
            with open(point["log"], "w") as f:
                json.dump(state["log"], f)
        return code

    def resume():
        return cli.main(["train", "--resume", os.path.join(point["root"], "latest"), "-q", "--no-report"])

    first = in_child(train)
    return {"train": first, "resume": in_child(resume) if point.get("at") else None}


# Two lanes of points side by side (a lane forks its points' processes one after another).
points = list(enumerate(spec["points"]))
lanes = []
for lane in (points[0::2], points[1::2]):
    if lane:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                os.write(w, json.dumps([(i, kill_and_resume(p)) for i, p in lane]).encode())
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(w)
        lanes.append((pid, r))
results = [None] * len(points)
for pid, r in lanes:
    with os.fdopen(r, "rb") as f:
        done = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        sys.exit("a lane of kill points failed")
    for i, result in json.loads(done):
        results[i] = result
print(json.dumps(results))
'''


def _kill_points(log):
    """Event numbers (1-based) of the commit of epoch 2 (all of them) and of the summary, and three of epoch 1's."""
    ends = [i + 1 for i, e in enumerate(log) if e == "unlink .commit.json"]  # the run's opening commit, epochs 1-3
    assert len(ends) == 4 and log[-2] == "rename summary.json", log
    epoch1, epoch2 = range(ends[0] + 1, ends[1] + 1), range(ends[1] + 1, ends[2] + 1)
    return [epoch1[0], epoch1[len(epoch1) // 2], epoch1[-1], *epoch2, *range(ends[3] + 1, len(log) + 1)], epoch2


def test_a_kill_at_any_write_of_a_commit_resumes_to_the_uninterrupted_run(tmp_path):
    """SIGKILL before each file operation of epoch 2's commit and of the summary's (and a few of epoch 1's), SIGINT
    at some: after `train --resume`, every epoch's metrics row is there once, the weights and the optimizer
    state are the uninterrupted run's, best.npz holds the epoch summary.json and last.npz name as best, and no
    temporary file or journal is left."""
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # fsync costs nothing there; the events are the same
    base = tempfile.mkdtemp(prefix="cnnframe-kills-", dir=shm or str(tmp_path))
    spec = {"config": TINY, "sets": ["--set", "trainer.dtype=float64", "--set", "trainer.epochs=3",  # few steps:
                                    "--set", "trainer.batch_size=512", "--no-report"]}  # this is about the files

    def drive(points):
        r = subprocess.run([sys.executable, "-c", KILL_DRIVER, json.dumps({**spec, "points": points})],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    try:
        ref = os.path.join(base, "ref")
        assert drive([{"root": ref, "log": os.path.join(base, "log.json")}]) == [{"train": 0, "resume": None}]
        with open(os.path.join(base, "log.json")) as f:
            log = json.load(f)
        kills, epoch2 = _kill_points(log)
        points = [{"root": os.path.join(base, f"kill{k}"), "at": k, "signal": "SIGKILL"} for k in kills]
        points += [{"root": os.path.join(base, f"int{k}"), "at": k, "signal": "SIGINT"}
                   for k in (epoch2[0], epoch2[len(epoch2) // 2], epoch2[-1], len(log) - 1)]
        results = drive(points)

        ref_run = os.path.realpath(os.path.join(ref, "latest"))
        expected = {name: checkpoint.read(os.path.join(ref_run, name)) for name in ("last.npz", "best.npz")}
        with open(os.path.join(ref_run, "summary.json")) as f:
            ref_summary = json.load(f)
        summary_written = log.index("rename summary.json") + 1  # a kill after this event finds the run finished
        for point, result in zip(points, results):
            what = f"{point['signal']} before event {point['at']} ({log[point['at'] - 1]})"
            kill = point["signal"] == "SIGKILL"
            assert result["train"] == (-9 if kill else 130), what
            finished = kill and point["at"] > summary_written
            assert result["resume"] == (2 if finished else 0), what  # 2: "already completed"
            run = os.path.realpath(os.path.join(point["root"], "latest"))
            assert sorted(f for f in os.listdir(run) if f.startswith(".")) == [".lock"], what
            assert [r["epoch"] for r in metric_rows(run)] == ["1", "2", "3"], what
            assert ([{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(run)] ==
                    [{k: v for k, v in r.items() if k != "seconds"} for r in metric_rows(ref_run)]), what
            for name, want in expected.items():
                got = checkpoint.read(os.path.join(run, name))
                assert got.meta["epoch"] == want.meta["epoch"], (what, name)
                for k, v in {**want.params, **want.buffers, **want.arrays}.items():
                    assert np.array_equal(v, {**got.params, **got.buffers, **got.arrays}[k]), (what, name, k)
            with open(os.path.join(run, "summary.json")) as f:
                summary = json.load(f)
            assert summary["status"] == "completed" and summary["test"] == ref_summary["test"], what
            best_epoch = summary["best"]["best_epoch"]
            assert best_epoch == ref_summary["best"]["best_epoch"] == expected["best.npz"].meta["epoch"], what
            assert checkpoint.read(os.path.join(run, "last.npz")).meta["best"]["best_epoch"] == best_epoch, what
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_ctrl_c_during_an_epochs_commit_waits_for_it_and_names_the_saved_epoch(tmp_path, monkeypatch):
    """Ctrl-C as last.npz of epoch 2 is renamed into place: the commit ends first, so epoch 2's row, best.npz
    and last.npz are all there, and the message says the run stopped after epoch 2 (not during it)."""
    trainer = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=3"), quiet=True)
    replace, fired = os.replace, []

    def ctrl_c_at_last_of_epoch_2(src, dst):
        if os.path.basename(dst) == "last.npz" and trainer.epoch == 2 and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # arrives here, between two renames of one commit
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", ctrl_c_at_last_of_epoch_2)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    assert fired and str(info.value).startswith("interrupted after epoch 2; ")
    assert f"{trainer.run_dir}/last.npz holds the state after epoch 2" in str(info.value)
    assert [r["epoch"] for r in metric_rows(trainer.run_dir)] == ["1", "2"]
    last, best = weights(trainer.run_dir)[2], weights(trainer.run_dir, "best.npz")[2]
    assert last["epoch"] == 2 and best["epoch"] == last["best"]["best_epoch"]
    with open(os.path.join(trainer.run_dir, "summary.json")) as f:
        assert json.load(f)["status"] == "interrupted"
