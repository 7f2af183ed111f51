"""The training loop: Python API, determinism, resume, interruption, divergence, early stopping."""
import csv
import json
import os

import numpy as np
import pytest

import cnnframe
from cnnframe.config import load_config
from cnnframe.data import load_dataset
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
    assert sorted(os.listdir(run)) == ["best.npz", "config.yaml", "last.npz", "metrics.csv", "summary.json"]
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


@pytest.mark.parametrize("levers", [(), LEVERS], ids=["plain", "levers"])
def test_thread_count_does_not_change_a_run(tmp_path, monkeypatch, levers):
    """The kernels cut work into fixed spans, so 1 and 2 threads train to the same bits (small
    layers included: the size threshold that keeps them on one thread is lowered to zero here)."""
    from cnnframe.ops import conv, pool

    monkeypatch.setattr(conv, "GRAIN_FLOPS", 1)
    monkeypatch.setattr(pool, "GRAIN_ELEMS", 1)
    monkeypatch.setattr(cnnframe.parallel, "_dynamic", False)
    monkeypatch.setattr(cnnframe.parallel, "_num_threads", cnnframe.get_num_threads())  # restored after
    one = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=2", "trainer.name=one", "trainer.threads=1", *levers),
                              quiet=True)
    one.fit()
    two = Trainer.from_config(tiny_cfg(tmp_path, "trainer.epochs=2", "trainer.name=two", "trainer.threads=3", *levers),
                              quiet=True)
    two.fit()
    a, a_opt, _ = weights(one.run_dir)
    b, b_opt, _ = weights(two.run_dir)
    assert_same_state(a, b)
    assert_same_state(a_opt, b_opt)


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
