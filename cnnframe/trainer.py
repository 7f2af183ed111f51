"""The training loop: seeded and resumable, with a run directory of checkpoints and metrics.

Determinism.  Everything random is derived from ``seed``: the model's initial weights
(``model.initialize(seed)``); per epoch e, the batch order and the augmentation (shifts, angles, zooms:
``cnnframe/augment.py``) come from a generator seeded by (seed, e), and the model is reseeded (Dropout
masks) from (seed, e).  The learning rate of step i of epoch e is ``schedule.lr_at(e + i / steps)``.
So the state after an epoch (weights, BatchNorm statistics, optimizer slots, the weight average,
early-stopping counters) is all a resume needs: ten epochs straight and five + resume five give
bit-identical weights (the kernels' results do not depend on the thread count).

Evaluation.  With ``ema_decay`` the trainer keeps a moving average of the weights
(``cnnframe/ema.py``) and evaluates it instead of the weights it trains: validation metrics, the test
report and the checkpoints' model are the average's (the trained weights go into the checkpoints as
``train/`` arrays).  With ``tta_shift`` every evaluation averages over shifted copies (``cnnframe/tta.py``).

Run directory ``<run_dir>/<name>-<YYYYmmdd-HHMMSS>/`` (``cnnframe/rundir.py``: locked while a process
trains it; ``<run_dir>/latest`` names the newest):

    config.yaml    the resolved config          metrics.csv   one row per completed epoch
    last.npz       state after the latest epoch  best.npz      the best model by the monitored metric
    summary.json   final metrics, written at the end (and on interruption)

The files an epoch changes (its metrics row, ``best.npz`` when it improved, ``last.npz`` when due --
always together with ``best.npz``) are committed as one step, and Ctrl-C waits until a commit ends, so
``best.npz``, ``last.npz`` and ``metrics.csv`` always tell the same story, even after a kill.  Ctrl-C and
a non-finite loss both write ``last.npz`` with the state of the last *completed* epoch (the interrupted
epoch is discarded), so ``--resume`` continues exactly.

Data-parallel (``group``, docs/distributed.md): every process draws the same batch order and
augmentation for the global batch and computes its own samples of it (``cnnframe.shards``); gradients,
BatchNorm statistics and the batch loss are summed over the processes in a fixed order before they are
used.  The root process alone has a run directory (so it alone writes files and prints), validates
and tests, and sends the others its training state when ``fit`` starts and its metrics each epoch.
"""
import contextlib
import csv
import io as _io
import math
import os
import sys
import time

import numpy as np
from sklearn.metrics import confusion_matrix
from tqdm import tqdm

from cnnframe import checkpoint, distributed, parallel, runinfo
from cnnframe import io as cio
from cnnframe.augment import random_affine
from cnnframe.config import Setup, dump_config, load, resolve
from cnnframe.config.model_section import layer_errors
from cnnframe.data import batches, random_shift
from cnnframe.ema import WeightAverage, swapped
from cnnframe.errors import CheckpointError, ConfigError, UserError, WriteError
from cnnframe.rundir import RunDir, deferred_signals
from cnnframe.optim.schedules import Constant
from cnnframe.seeds import derive_seed
from cnnframe.shards import ChunkError, check_chunks, concat, gather_chunks, plan_shard, tree_sum, use_shard
from cnnframe.tta import outputs
from cnnframe.version import __version__

METRIC_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")
# Purposes of the per-epoch seeds (seeds.derive_seed): batch order and augmentation, dropout masks.
_SHUFFLE, _RESEED = 0x5EED, 0xD0
# Checkpoint arrays holding the training weights when the file's parameters are the weight averages.
_TRAIN = "train/"


class TrainingError(Exception):
    """Training stopped abnormally; ``status`` is 'diverged', 'interrupted' or 'write_failed'."""

    status = "failed"


class TrainingDiverged(TrainingError):
    status = "diverged"


class TrainingInterrupted(TrainingError):
    status = "interrupted"


class OutputClosed(TrainingInterrupted):
    """The reader of the progress lines went away (``train ... | head``); the run was saved as on Ctrl-C."""


class TrainingWriteFailed(TrainingError):
    """The run directory could not be written (a full disk, ...); its files hold the last committed epoch."""

    status = "write_failed"


class Monitor:
    """Tracks the best value of one metric: 'min' for losses, 'max' for accuracies."""

    def __init__(self, metric, min_delta=0.0):
        self.metric = metric
        self.mode = "max" if metric.endswith("acc") else "min"
        self.min_delta = float(min_delta)
        self.best = None
        self.best_epoch = None
        self.bad_epochs = 0

    def update(self, metrics):
        """Record an epoch's metrics; returns True when the monitored value improved."""
        value = metrics.get(self.metric)
        ok = value is not None and math.isfinite(value)
        if ok and (self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                         else value > self.best + self.min_delta)):
            self.best, self.best_epoch, self.bad_epochs = float(value), int(metrics["epoch"]), 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self):
        return {"metric": self.metric, "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], int(state["bad_epochs"])


class Trainer:
    """Train ``model`` with ``loss`` and ``optimizer`` on ``data`` (a ``cnnframe.data.Splits``).

    Python use (no YAML)::

        data = cnnframe.data.load_dataset("digits", seed=0)
        model = cnnframe.Sequential([...], input_shape=data.input_shape)
        opt = cnnframe.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        trainer = Trainer(model, cnnframe.SoftmaxCrossEntropy(), opt, data, epochs=20, shift=1)
        summary = trainer.fit()          # summary["test"]["acc"]

    The trainer re-initialises the model's weights from ``seed`` (``initialize=False`` keeps them) and
    first runs two samples through the model (``Sequential.check``: a layer that does not keep its
    declared shapes raises ValueError naming it).  ``run_dir`` (optional) is the directory to write
    checkpoints and metrics into; ``config``, when the run comes from YAML, is the resolved config saved
    with it.

    Data-parallel: ``group`` is the ``cnnframe.distributed`` group of processes training together (default:
    this one alone); ``batch_size`` is the global batch.  ``batch_chunks`` (default: the number of
    processes) cuts each batch into that many fixed sample ranges whose sums are added in a fixed order,
    so runs on any number of processes that is a power of two dividing it give bit-identical results.
    """

    def __init__(self, model, loss, optimizer, data, *, schedule=None, epochs=10, batch_size=64, seed=0, shift=0,
                 rotate=0.0, scale=0.0, tta_shift=0, ema_decay=None, early_stopping=None, checkpoint=None,
                 test_checkpoint="last", run_dir=None, config=None, threads=None, quiet=False, initialize=True,
                 out=None, group=None, batch_chunks=None):
        if threads is not None:
            parallel.set_num_threads(threads)
        self.threads = threads
        self.group = group if group is not None else distributed.SINGLE
        self.batch_chunks = check_chunks(batch_chunks, self.group.size, len(data.train[1]), int(batch_size))
        self._flat_grads = None  # the gradients' one buffer while several processes train (fit)
        self.model, self.loss, self.optimizer, self.data = model, loss, optimizer, data
        self.epochs, self.batch_size, self.seed, self.shift = int(epochs), int(batch_size), int(seed), int(shift)
        self.rotate, self.scale, self.tta_shift = float(rotate), float(scale), int(tta_shift)
        self.schedule = schedule if schedule is not None else Constant(optimizer.lr, self.epochs)
        es = dict(early_stopping or {})
        self.patience = es.get("patience")
        self.early_stopping = Monitor(es.get("monitor", "val_loss"), es.get("min_delta", 0.0))
        ck = dict(checkpoint or {})
        self.every = int(ck.get("every", 1))
        self.keep_best = bool(ck.get("best", True))
        self.best = Monitor(ck.get("monitor", "val_loss"))
        self.test_checkpoint = test_checkpoint
        self.run_dir = run_dir if self.group.is_root else None  # the root alone writes (and prints)
        self.rundir = None  # the RunDir while this trainer holds the run directory (cnnframe/rundir.py)
        self.config = config
        self.quiet = quiet or not self.group.is_root
        self.out = out if out is not None else sys.stdout
        self.epoch = 0  # completed epochs
        self.history = []
        self.best_state = None
        self.status = "new"
        self._training = None  # the epoch being trained, None between epochs
        self._last_saved = None  # the epoch last.npz holds
        if not model.built:
            model.build(data.input_shape)
        # what raw inputs go through and what the classes are called travel with the model into its checkpoints
        if getattr(data, "preprocessing", None) is not None:
            model.preprocessing = data.preprocessing
        if getattr(data, "class_names", None) is not None:
            model.class_names = data.class_names
        if initialize:
            model.initialize(self.seed)
        model.check(data.input_shape, data.train[0].dtype)
        # the averaged weights evaluate and are saved; the model keeps training its own (cnnframe/ema.py)
        self.ema = WeightAverage(model, ema_decay) if ema_decay is not None else None

    # -- construction from a resolved config -----------------------------------------------------
    @classmethod
    def from_config(cls, cfg, run_root=None, quiet=False, out=None, create_run_dir=True, group=None):
        """A trainer for a config: a ``Setup`` (``cnnframe.config.load(path)``, used as built) or a
        resolved config dict (resolved and built here).  Loads the data; makes the run directory (on the
        root process of ``group`` only)."""
        setup = cfg if isinstance(cfg, Setup) else resolve(cfg)
        cfg = setup.config
        tr = cfg["trainer"]
        if tr["threads"] is not None:
            parallel.set_num_threads(tr["threads"])
        data = setup.load_data()
        with layer_errors(), _chunk_errors():
            trainer = cls(setup.model, setup.loss, setup.optimizer, data, schedule=setup.schedule,
                          epochs=tr["epochs"], batch_size=tr["batch_size"], seed=tr["seed"],
                          **augment_options(cfg), ema_decay=tr["ema_decay"], early_stopping=tr["early_stopping"],
                          checkpoint=tr["checkpoint"], test_checkpoint=tr["test_checkpoint"], config=cfg,
                          quiet=quiet, out=out, threads=tr["threads"], group=group,
                          batch_chunks=tr["batch_chunks"])
        if create_run_dir:  # only once everything is built, so a failure leaves no empty run directory
            trainer.make_run_dir(run_root)
        return trainer

    def make_run_dir(self, run_root=None):
        """Make the run directory of a run from a config (``<run_root or trainer.run_dir>/<name>-<time>``),
        locked, with its ``config.yaml``; only the root process of a group has one."""
        if not self.group.is_root:
            return
        tr = self.config["trainer"]
        self.rundir = RunDir.create(run_root or tr["run_dir"], tr["name"])
        self.run_dir = self.rundir.path
        try:  # from here on the run can be resumed, even before its first epoch ends
            self.rundir.commit({"config.yaml": dump_config(self.config)})
        except BaseException:
            self.rundir.release()
            raise

    @classmethod
    def resume(cls, run_dir, cfg=None, quiet=False, out=None, plugins=(), overrides=(), writer=True, group=None):
        """Continue the run in ``run_dir`` (a ``latest`` link is followed) from its ``last.npz``, or from the
        start when it was stopped before its first checkpoint.

        The run directory is locked first (RunDirLocked when another process has it), then a commit a
        stopped process left half done is finished and its temporary files removed (``rundir.recovered``
        says what was done).  The config is ``cfg`` (a ``Setup`` or a config dict you give), else the run's
        ``config.yaml`` with ``overrides`` (``--set``), which is a stored file: its ``plugins`` are not
        imported, and its types resolve from the registry and ``plugins`` (the files and modules you name)
        only.  The checkpoints are read as arrays into the model the config builds; nothing is built from them.

        ``writer=False``: a process that reads the run but never writes, locks or recovers it; open it only
        after the writing process has, since its recovery may be renaming.  With several processes
        (``group``) the command line has only the root resume, and ``fit`` sends the others the state it read.
        """
        run = RunDir.open(run_dir, writer)
        try:
            return cls._resume(run, cfg, quiet, out, plugins, overrides, group)
        except BaseException:
            run.release()
            raise

    @classmethod
    def _resume(cls, run, cfg, quiet, out, plugins, overrides, group):
        last, stored = run.file("last.npz"), run.file("config.yaml")
        saved = checkpoint.read(last) if os.path.exists(last) else None
        if saved is None and (cfg is None and not os.path.exists(stored)):
            raise FileNotFoundError(f"{run.path} has no last.npz to resume from (and no config.yaml: is it a run "
                                    f"directory?)")
        if cfg is None:
            cfg = load(stored, overrides, safe=True, plugins=plugins,
                       parameter_bytes=saved.build_budget if saved is not None else None)
        elif not isinstance(cfg, Setup):
            cfg = resolve(cfg, plugins=plugins)
        trainer = cls.from_config(cfg, quiet=quiet, out=out, create_run_dir=False, group=group)
        trainer.run_dir, trainer.rundir = run.path, run
        if saved is None:  # stopped during the first epoch: start again, as the seed makes it the same
            return trainer
        best_path = run.file("best.npz")
        if trainer.keep_best and os.path.exists(best_path):
            checkpoint.read(best_path).load_into(trainer.model)
            trainer.best_state = _copy_state(trainer.model.state_dict())
        saved.load_into(trainer.model)
        _load_weight_average(trainer, saved)
        trainer.optimizer.load_state_dict({k[len("optim/"):]: v for k, v in saved.arrays.items()
                                           if k.startswith("optim/")})
        try:
            trainer.epoch = int(saved.meta["epoch"])
            trainer.early_stopping.load_state_dict(saved.meta["early_stopping"])
            trainer.best.load_state_dict(saved.meta["best"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{last} is not a trainer's checkpoint: its meta lacks {e}") from None
        trainer._last_saved = trainer.epoch
        trainer.history = _read_metrics(run.file("metrics.csv"), upto=trainer.epoch)
        trainer.status = "resumed"
        return trainer

    def finished(self):
        """Why the run has nothing left to do (a sentence), or None: it would stop before another epoch (all
        epochs done, or early stopping) and its ``summary.json`` already records that end."""
        if self.epoch >= self.epochs:
            why = (f"has already completed {self.epoch} of {self.epochs} epochs; to train longer, resume with "
                   f"--set trainer.epochs=N")
        elif self.patience is not None and self.early_stopping.bad_epochs >= self.patience:
            why = (f"stopped early after epoch {self.epoch} ({self.early_stopping.metric} did not improve for "
                   f"{self.early_stopping.bad_epochs} epochs); to train on, resume with "
                   f"--set trainer.early_stopping.patience=N")
        else:
            return None
        try:
            summary = runinfo.read_summary(self.run_dir) if self.run_dir else None
        except UserError:
            summary = None
        done = (summary or {}).get("status") in ("completed", "early_stopped")
        return why if done and summary.get("epochs_completed") == self.epoch else None

    # -- helpers ---------------------------------------------------------------------------------------
    def _say(self, text=""):
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def _targets(self, y):
        return self.loss.targets(y, self.data.num_classes, self.data.train[0].dtype)

    def _snapshot(self):
        return {"epoch": self.epoch, "model": _copy_state(self.model.state_dict()),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optim": self.optimizer.state_dict(), "early_stopping": self.early_stopping.state_dict(),
                "best": self.best.state_dict(), "best_state": self.best_state}

    def _evaluated(self):
        """A context in which the model holds the weights evaluations use: the averages with ``ema_decay``."""
        return self.ema.swapped_in() if self.ema is not None else swapped(self.model, None)

    def _restore(self, snap):
        """Go back to the state of ``snap`` (the last committed epoch): model, optimizer, monitors, history."""
        self.model.load_state_dict(snap["model"])
        if self.ema is not None:
            self.ema.load_state_dict(snap["ema"])
        self.optimizer.load_state_dict(snap["optim"])
        self.early_stopping.load_state_dict(snap["early_stopping"])
        self.best.load_state_dict(snap["best"])
        self.best_state = snap["best_state"]
        self.epoch = snap["epoch"]
        self.history = self.history[: self.epoch]

    def _meta(self, snap, kind):
        return {"kind": kind, "epoch": snap["epoch"], "epochs": self.epochs, "seed": self.seed,
                "early_stopping": snap["early_stopping"], "best": snap["best"],
                "data": {"name": self.data.name, "num_classes": self.data.num_classes,
                         "input_shape": list(self.data.input_shape)},  # model.save adds preprocessing, class names
                "threads": parallel.get_num_threads(), "processes": self.group.size,
                "cnnframe_version": __version__, "config": self.config,
                **({"ema": {"decay": self.ema.decay, "updates": snap["ema"]["updates"]}} if snap["ema"] else {})}

    def _checkpoint(self, kind, snap):
        """A writer of ``<kind>.npz``: the model (which must hold ``snap``'s state) and ``snap``.

        With a weight average the file's parameters and buffers are the averages (what ``evaluate``,
        ``predict`` and ``export`` use) and the training weights go with the optimizer state (``train/``)."""
        arrays = {f"optim/{k}": v for k, v in snap["optim"].items()}
        state = None
        if snap["ema"] is not None:
            arrays.update({f"{_TRAIN}{k}": v for k, v in snap["model"].items()})
            state = snap["ema"]["average"]
        return self.model.checkpoint_writer(arrays=arrays, meta=self._meta(snap, kind), state=state)

    def _commit(self, snap, last=False, best=False, summary=None):
        """Write the run directory's files for ``snap`` as one step: metrics.csv always, and as asked
        ``best.npz``, ``last.npz`` and ``summary.json`` (RunDir.commit)."""
        if self.rundir is None:
            return
        files = {"metrics.csv": _metrics_text(self.history[: snap["epoch"]])}
        if best:
            files["best.npz"] = self._checkpoint("best", snap)
        if last:
            files["last.npz"] = self._checkpoint("last", snap)
        if summary is not None:
            files["summary.json"] = _summary_text(summary)
        self.rundir.commit(files)
        if last:
            self._last_saved = snap["epoch"]

    # -- the loop ------------------------------------------------------------------------------------
    def train_epoch(self, epoch):
        """One pass over the training part; returns (mean loss, accuracy, lr at the epoch's start)."""
        X, y = self.data.train
        rng = np.random.default_rng(derive_seed(_SHUFFLE, self.seed, epoch))
        self.model.reseed(derive_seed(_RESEED, self.seed, epoch))
        self.model.train()
        parts = batches(len(y), self.batch_size, rng)
        steps = len(parts)
        total_loss, correct, seen = 0.0, 0, 0
        lr0 = self.schedule.lr_at(epoch)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                   disable=True if self.quiet else None, file=sys.stderr, dynamic_ncols=True)
        try:
            for i, idx in enumerate(parts):
                lr = self.schedule.lr_at(epoch + i / steps)
                self.optimizer.lr = lr
                # the whole global batch: every process makes the same draws, then keeps its own samples
                xb = self._augment(X[idx], rng)
                yb = y[idx]
                shard = self._shard(len(idx))
                if shard is not None:
                    xb, yb = xb[shard.start:shard.stop], yb[shard.start:shard.stop]
                self.optimizer.zero_grad()
                with use_shard(shard):
                    out = self.model.forward(xb)
                    loss_sum, hits, grad = self._loss_step(out, yb, shard)
                    loss = loss_sum / len(idx)
                    if not math.isfinite(loss):
                        raise TrainingDiverged(
                            f"the loss became {loss} at epoch {epoch + 1}, step {i + 1}/{steps} (lr {lr:.4g}); "
                            f"training stopped. Try a smaller optimizer.lr or optimizer.clip_norm"
                        )
                    self.model.backward(grad, input_grad=False)
                if self._flat_grads is not None:
                    self._flat_grads.sum(self.group)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update()
                total_loss += loss_sum
                correct += hits
                seen += len(idx)
                bar.update(1)
                if i % 4 == 3 or i == steps - 1:
                    bar.set_postfix_str(f"loss {total_loss / seen:.4f} acc {100.0 * correct / seen:.2f}%",
                                        refresh=False)
        finally:
            bar.close()
        return total_loss / seen, correct / seen, lr0

    def _augment(self, x, rng):
        """A training batch as augmented (same draws as ``random_shift`` when only shifts are asked for)."""
        if self.rotate or self.scale:
            return random_affine(x, rng, self.shift, self.rotate, self.scale)
        return random_shift(x, self.shift, rng) if self.shift else x

    def _shard(self, n):
        """This process's part of a global batch of ``n`` (None: one process computing it as one batch)."""
        return plan_shard(n, self.batch_chunks, self.group.rank, self.group.size,
                          self.group.gather if self.group.size > 1 else None)

    def _loss_step(self, out, yb, shard):
        """(Σ loss over the global batch, correct predictions in it, dL/dout for this process's samples).

        With a shard the loss runs per chunk (a mean over the chunk), its gradient scaled by
        chunk/global samples, and every chunk's sums are added in chunk order on every process."""
        if shard is None:
            loss = self.loss.forward(out, self._targets(yb))
            return loss * len(yb), int(np.count_nonzero(out.argmax(axis=1) == yb)), self.loss.backward()
        rows, grads = [], []
        for a, b in shard.bounds:
            loss = self.loss.forward(out[a:b], self._targets(yb[a:b]))
            g = self.loss.backward()
            grads.append(g * g.dtype.type((b - a) / shard.total))
            rows.append([loss * (b - a), np.count_nonzero(out[a:b].argmax(axis=1) == yb[a:b])])
        total = tree_sum(list(gather_chunks(np.array(rows, dtype=np.float64))))
        return float(total[0]), int(total[1]), concat(grads)

    def evaluate(self, X, y, batch_size=500):
        """Eval-mode pass with the evaluated weights and test-time shifts → {"loss", "acc", "pred", "probs"}
        (see ``evaluate_model``)."""
        with self._evaluated():
            return evaluate_model(self.model, self.loss, X, y, self.data.num_classes, batch_size, self.tta_shift)

    def fit(self, stop_after=None):
        """Train until ``epochs`` (or early stopping, or ``stop_after`` completed epochs); returns the summary.

        Holds the run directory's lock while it runs.  Raises TrainingInterrupted (Ctrl-C; OutputClosed when
        stdout's reader went away) or TrainingDiverged after saving the last completed epoch, and
        TrainingWriteFailed when the run directory cannot be written (its files keep the last committed epoch).
        """
        self._open_run_dir()
        try:
            self.join()
            return self._fit(stop_after)
        finally:
            if self.rundir is not None:
                self.rundir.release()

    def _open_run_dir(self):
        if self.run_dir is None:
            return
        if self.rundir is None:  # a run directory given in Python: made if needed, then like a resumed one
            os.makedirs(self.run_dir, exist_ok=True)
            self.rundir = RunDir.open(self.run_dir)
        else:
            self.rundir.lock()
        # Rows after the checkpoint's epoch belong to an epoch that will be re-run: drop them.
        self.history = self.history[: self.epoch]
        files = {"metrics.csv": _metrics_text(self.history)}
        if self.config is not None:
            files["config.yaml"] = dump_config(self.config)
        self.rundir.commit(files)

    def _fit(self, stop_after):
        Xv, yv = self.data.val
        snap = self._snapshot()
        t_start = time.perf_counter()
        self.status = "running"
        try:
            while self.epoch < self.epochs:
                if self.patience is not None and self.early_stopping.bad_epochs >= self.patience:
                    self.status = "early_stopped"
                    break
                if stop_after is not None and self.epoch >= stop_after:
                    self.status = "paused"
                    break
                e = self.epoch
                self._training = e + 1
                t0 = time.perf_counter()
                tr_loss, tr_acc, lr = self.train_epoch(e)
                val = self.group.from_root(lambda: _metrics(self.evaluate(Xv, yv)))
                with deferred_signals():  # Ctrl-C waits until the epoch is recorded and committed
                    row = {"epoch": e + 1, "lr": lr, "train_loss": tr_loss, "train_acc": tr_acc,
                           "val_loss": val["loss"], "val_acc": val["acc"], "seconds": time.perf_counter() - t0}
                    snap = self._end_epoch(row, stop_after)
                self._say(_epoch_line(row, self.epochs, val_part=len(yv) > 0))
            else:
                self.status = "completed"
            summary = self._finish(time.perf_counter() - t_start)
        except KeyboardInterrupt:
            self._abort(snap, "interrupted")
            raise TrainingInterrupted(self._stopped("interrupted", snap)) from None
        except BrokenPipeError:
            self._abort(snap, "interrupted")
            raise OutputClosed(self._stopped("output closed (broken pipe)", snap)) from None
        except TrainingDiverged as err:
            self._abort(snap, "diverged")
            where = f"; {self.run_dir}/last.npz keeps the state after epoch {snap['epoch']}" if self.run_dir else ""
            raise TrainingDiverged(str(err) + where) from None
        except WriteError as err:
            self._restore(snap)
            self.status = "write_failed"
            raise TrainingWriteFailed(f"{err}; {self._kept()}; make room and continue with: "
                                      f"python -m cnnframe train --resume {self.run_dir}") from None
        if summary["test"] is not None:
            self._say(format_test(summary["test"], self.data.name))
        if self.run_dir is not None:
            self._say(f"run directory: {self.run_dir}")
        return summary

    def join(self):
        """With several processes (once; ``fit`` calls it): the threads per process (``trainer.threads``, else
        ``CNNFRAME_NUM_THREADS``, else the node's cores shared by its processes); the root's training state
        on every process (the same initial or resumed weights, optimizer state, epoch, counters, history);
        one flat gradient buffer."""
        if self.group.size == 1 or self._flat_grads is not None:
            return
        if self.threads is None and parallel.env_threads() is None:
            parallel.set_num_threads(self.group.threads_per_process())
        state = self.group.from_root(lambda: {**self._snapshot(), "best_state": None, "history": self.history})
        if not self.group.is_root:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optim"])
            self.epoch, self.history = state["epoch"], state["history"]
            self.early_stopping.load_state_dict(state["early_stopping"])
            self.best.load_state_dict(state["best"])
        self._flat_grads = distributed.FlatGradients(self.optimizer.params)

    def _end_epoch(self, row, stop_after):
        """Record a completed epoch and commit it; returns its snapshot."""
        self.epoch = row["epoch"]
        self.history.append(row)
        self.early_stopping.update(row)
        improved = self.best.update(row) and self.keep_best
        snap = self._snapshot()
        if improved:
            self.best_state = snap["best_state"] = snap["ema"]["average"] if snap["ema"] else snap["model"]
        finishing = (self.epoch == self.epochs or self.epoch == stop_after or
                     (self.patience is not None and self.early_stopping.bad_epochs >= self.patience))
        # best.npz never gets ahead of last.npz: both record the same best epoch
        self._commit(snap, last=improved or self.epoch % self.every == 0 or finishing, best=improved)
        self._training = None
        return snap

    def _stopped(self, what, snap):
        when = f"during epoch {self._training}" if self._training else f"after epoch {snap['epoch']}"
        if not self.run_dir:
            return f"{what} {when}; the model holds the state after the last completed epoch"
        return (f"{what} {when}; {self.run_dir}/last.npz holds the state after epoch {snap['epoch']}; "
                f"continue with: python -m cnnframe train --resume {self.run_dir}")

    def _kept(self):
        if self._last_saved is None:
            return f"{self.run_dir} has no checkpoint yet (resuming starts from the first epoch)"
        return f"{self.run_dir}/last.npz still holds the state after epoch {self._last_saved}"

    def _abort(self, snap, status):
        self._restore(snap)
        self._training = None
        self.status = status
        self._commit(snap, last=self._last_saved != snap["epoch"], summary=self._summary(None))

    def _finish(self, elapsed):
        """The test report (when the run stopped as planned) and the summary, committed; returns the summary."""
        test = self.group.from_root(self.test) if self.status in ("completed", "early_stopped") else None
        summary = self._summary(test, elapsed)
        if self.rundir is not None:
            self.rundir.commit({"summary.json": _summary_text(summary)})
        return summary

    def test(self, split="test"):
        """Metrics of the test checkpoint ('last' = the current model, or 'best') on a data split."""
        X, y = getattr(self.data, split)
        use_best = self.test_checkpoint == "best" and self.best_state is not None
        with swapped(self.model, self.best_state) if use_best else self._evaluated():
            return test_report(self.model, self.loss, X, y, self.data.num_classes, split,
                               "best" if use_best else "last", self.best.best_epoch if use_best else self.epoch,
                               self.tta_shift)

    def _summary(self, test, elapsed=None):
        last = self.history[-1] if self.history else None
        return {"name": os.path.basename(self.run_dir) if self.run_dir else None, "status": self.status,
                "epochs_completed": self.epoch, "epochs": self.epochs,
                "best": {**self.best.state_dict()} if self.keep_best else None,
                "early_stopping": {**self.early_stopping.state_dict(), "patience": self.patience},
                "final": last, "test": test,
                "train_seconds": sum(r["seconds"] for r in self.history),
                "wall_seconds_this_session": elapsed, "threads": parallel.get_num_threads(), "seed": self.seed,
                "processes": self.group.size,
                "data": {"name": self.data.name, "train": int(len(self.data.train[1])),
                         "val": int(len(self.data.val[1])), "test": int(len(self.data.test[1]))},
                "cnnframe_version": __version__}


# -- evaluation ---------------------------------------------------------------------------------------
def evaluate_model(model, loss, X, y, num_classes, batch_size=500, tta_shift=0):
    """Eval-mode pass over (X, y) → {"loss": mean loss, "acc", "pred" (N,), "probs" (N, classes)}.

    probs = ``loss.class_scores(outputs)``: softmax of the logits for softmax cross-entropy, else the outputs.
    With ``tta_shift`` k > 0 the outputs are those of the scores averaged over the (2k+1)² shifted copies
    (``cnnframe.tta``): loss, accuracy and probs are the averaged prediction's.
    """
    if len(y) == 0:
        return {"loss": float("nan"), "acc": float("nan"), "pred": np.zeros(0, np.int64), "probs": None}
    was = model.training
    model.eval()
    try:
        total, outs = 0.0, []
        for start in range(0, len(y), batch_size):
            xb, yb = X[start:start + batch_size], y[start:start + batch_size]
            out = outputs(model, xb, tta_shift, loss.score_activation)
            total += loss.forward(out, loss.targets(yb, num_classes, out.dtype)) * len(yb)
            outs.append(out)
    finally:
        model.train(was)
    out = np.concatenate(outs)
    probs = loss.class_scores(out)
    pred = out.argmax(axis=1)
    return {"loss": total / len(y), "acc": float(np.mean(pred == y)), "pred": pred, "probs": probs}


def test_report(model, loss, X, y, num_classes, split="test", checkpoint="last", epoch=None, tta_shift=0):
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) as a JSON-ready dict."""
    res = evaluate_model(model, loss, X, y, num_classes, tta_shift=tta_shift)
    k = num_classes
    cm = confusion_matrix(y, res["pred"], labels=list(range(k))) if len(y) else np.zeros((k, k), int)
    return {"split": split, "checkpoint": checkpoint, "epoch": epoch, "loss": res["loss"], "acc": res["acc"],
            "samples": int(len(y)), "confusion_matrix": cm.tolist()}


# -- module helpers -------------------------------------------------------------------------------------
def augment_options(cfg):
    """The trainer's augmentation keywords from a resolved config: training shifts, rotations, zooms; test shifts."""
    aug = cfg["data"]["augment"]
    return {"shift": aug["shift"], "rotate": aug["rotate"], "scale": aug["scale"],
            "tta_shift": cfg["data"]["tta"]["shift"]}


def _load_weight_average(trainer, saved):
    """After ``saved.load_into(model)``: with ``ema_decay`` the model got the averages; move them into the
    trainer's average and the training weights (``train/`` arrays) into the model."""
    live = {k[len(_TRAIN):]: v for k, v in saved.arrays.items() if k.startswith(_TRAIN)}
    info = saved.meta.get("ema")
    if trainer.ema is None:
        if info is not None or live:
            raise CheckpointError(f"{saved.path} holds a run with trainer.ema_decay set; resume it with the same "
                                  f"trainer.ema_decay")
        return
    if not isinstance(info, dict) or not live:
        raise CheckpointError(f"{saved.path} holds a run without trainer.ema_decay; resume it without one")
    try:
        trainer.ema.load_state_dict({"updates": info["updates"], "average": trainer.model.state_dict()})
        trainer.model.load_state_dict(live)
    except (KeyError, TypeError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise CheckpointError(f"{saved.path}: its training weights do not fit the configured model: {message}") from None


def _metrics(res):
    """The loss and accuracy of an ``evaluate_model`` result (what other processes are sent)."""
    return {"loss": res["loss"], "acc": res["acc"]}


@contextlib.contextmanager
def _chunk_errors():
    try:
        yield
    except ChunkError as e:
        raise ConfigError(str(e), key="trainer.batch_chunks") from None


def _copy_state(state):
    return {k: np.array(v, copy=True) for k, v in state.items()}


def _nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _metrics_text(rows):
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(_csv_row(row))
    return buf.getvalue()


def _summary_text(summary):
    # Strict JSON: NaN (e.g. the metrics of an empty validation part) is written as null.
    return cio.json_text(_nan_to_none(summary), indent=2, allow_nan=False) + "\n"


def _csv_row(row):
    # repr() keeps every bit of a float, so two identical runs give byte-identical files.
    return {k: (repr(float(v)) if k not in ("epoch",) else int(v)) for k, v in row.items()}


def _read_metrics(path, upto):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            try:
                row = {k: (int(r[k]) if k == "epoch" else float(r[k])) for k in METRIC_FIELDS}
            except (KeyError, TypeError, ValueError):
                continue
            if row["epoch"] <= upto:
                rows.append(row)
    return rows


def _pct(v):
    return "  n/a " if v is None or not math.isfinite(v) else f"{100.0 * v:6.2f}%"


def _epoch_line(row, epochs, val_part=True):
    width = len(str(epochs))
    text = (f"epoch {row['epoch']:>{width}}/{epochs}  lr {row['lr']:.4g}  "
            f"train loss {row['train_loss']:.4f} acc {_pct(row['train_acc'])}")
    if val_part:
        text += f"  val loss {row['val_loss']:.4f} acc {_pct(row['val_acc'])}"
    return text + f"  {row['seconds']:.2f}s"


def format_confusion(cm):
    """A confusion matrix as text: rows are true classes, columns predicted classes."""
    cm = np.asarray(cm)
    k = cm.shape[0]
    w = max(3, len(str(int(cm.max()))) if cm.size else 1, len(str(k - 1)))
    head = "true\\pred " + " ".join(f"{j:>{w}}" for j in range(k))
    lines = [head] + [f"{i:>9} " + " ".join(f"{int(v):>{w}}" for v in cm[i]) for i in range(k)]
    return "\n".join(lines)


def format_test(test, name="data"):
    what = f"{test['split']} ({test['samples']} samples, {test['checkpoint']} model"
    what += f", epoch {test['epoch']})" if test.get("epoch") is not None else ")"
    return (f"{name} {what}: accuracy {100.0 * test['acc']:.2f}%  loss {test['loss']:.4f}\n"
            f"confusion matrix:\n{format_confusion(test['confusion_matrix'])}")
