"""Data-parallel training: launch detection, the group helpers, and whole runs under ``mpiexec -n 2``.

The runs use the tiny digits config in float64 with one thread per process.  What "equal" means in
each assert:
- 2 processes and 1 process with the same chunks (``trainer.batch_chunks: 2``): bit-identical weights,
  optimizer state and metrics.csv (every column but the seconds);
- 2 processes and 1 process with default chunks (2 and 1): per-epoch losses within 1e-5 relative and
  the same test accuracy;
- a run resumed with another number of processes: bit-identical to the uninterrupted run.
"""
import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnnframe import checkpoint, cli, distributed
from cnnframe.commands.common import exit_code
from cnnframe.distributed import FlatGradients, Group, abort_on_failure, agreement, detect_launch
from cnnframe.errors import JobStopped, UserError
from cnnframe.layers.base import Parameter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
_LAUNCH = {v for pair in distributed.LAUNCH_VARIABLES for v in pair}


# -- launch detection and the group helpers (no MPI needed) --------------------------------------------------
@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"PMI_RANK": "1", "PMI_SIZE": "4"}, (1, 4)),  # MPICH / Hydra, srun --mpi=pmi2
    ({"PMI_RANK": "0", "PMI_SIZE": "1"}, None),  # mpiexec -n 1: a single process
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8"}, (3, 8)),
    ({"PMIX_RANK": "2", "SLURM_STEP_NUM_TASKS": "16"}, (2, 16)),
    ({"PMIX_RANK": "2"}, (2, None)),  # several processes, size not said: MPI tells
    ({"PMI_RANK": "x", "PMI_SIZE": "2"}, None),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, None),  # srun without an MPI process manager
])
def test_detect_launch(env, expected):
    assert detect_launch(env) == expected


def test_no_launcher_means_one_process():
    """(Every single-process run below also checks that it imported nothing from MPI: ``_run``.)"""
    assert distributed.group_from_environment({}) is distributed.SINGLE


def test_launched_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py → ImportError
    with pytest.raises(UserError, match=r'pip install "cnnframe\[mpi\]"'):
        distributed.group_from_environment({"PMI_RANK": "0", "PMI_SIZE": "2"})
    with pytest.raises(JobStopped) as stopped:  # the other ranks stop silently with the same status
        distributed.group_from_environment({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert stopped.value.code == 2


class FakeGroup(Group):
    """Rank ``rank`` of a group whose other ranks report ``codes``; records an abort instead of ending."""

    def __init__(self, rank, codes):
        self.rank, self.size, self.is_root = rank, len(codes), rank == 0
        self.codes, self.aborted = list(codes), None

    def exit_codes(self, code):
        self.codes[self.rank] = code
        return self.codes

    def abort(self, code):
        self.aborted = code


def test_agreement_one_message_from_the_lowest_failing_rank():
    with agreement(FakeGroup(0, [0, 0]), exit_code):  # nobody failed
        pass
    with pytest.raises(ValueError, match="bad key"):  # rank 0 failed first: it reports
        with agreement(FakeGroup(0, [0, 2]), exit_code):
            raise ValueError("bad key")
    with pytest.raises(JobStopped) as stopped:  # rank 1 failed too, but rank 0 reports for both
        with agreement(FakeGroup(1, [2, 0]), exit_code):
            raise ValueError("bad key")
    assert stopped.value.code == 2
    with pytest.raises(JobStopped) as stopped:  # rank 0 is fine; rank 1's failure stops it
        with agreement(FakeGroup(0, [0, 1]), exit_code):
            pass
    assert stopped.value.code == 1


def test_abort_on_failure_ends_the_job_with_the_status(capsys):
    group = FakeGroup(1, [0, 0])
    with abort_on_failure(group, exit_code):
        raise RuntimeError("kernel bug")
    assert group.aborted == 1 and "error on process 1 of 2: kernel bug" in capsys.readouterr().err
    with abort_on_failure(group, exit_code):
        raise FileNotFoundError("data.npz")
    assert group.aborted == 2
    with pytest.raises(KeyError):  # one process: just the exception
        with abort_on_failure(FakeGroup(0, [0]), exit_code):
            raise KeyError("alone")
    root = FakeGroup(0, [0, 0])  # a failure only the root saw (its disk, its stdout): it ends the job
    assert distributed.end_job(root, 74) == 74 and root.aborted == 74
    assert distributed.end_job(distributed.SINGLE, 74) == 74  # one process just exits with it


def test_flat_gradients_share_one_buffer():
    params = {"a": Parameter(np.ones((2, 3))), "b": Parameter(np.zeros(4)), "c": Parameter(np.ones(2, np.float32))}
    for i, p in enumerate(params.values()):
        p.grad[...] = i + 1
    flat = FlatGradients(params)
    assert sorted(str(d) for d in flat.buffers) == ["float32", "float64"]
    assert np.array_equal(flat.buffers[np.dtype(np.float64)], [1] * 6 + [2] * 4)
    params["a"].grad += 1  # in place: seen through the buffer
    params["b"].grad = np.full(4, 7.0)  # replaced by a layer: copied back in

    class Doubling(Group):
        def sum(self, a):
            a *= 2
            return a

    flat.sum(Doubling())
    assert np.array_equal(params["a"].grad, np.full((2, 3), 4.0)) and np.array_equal(params["b"].grad, [14.0] * 4)
    assert np.array_equal(params["c"].grad, [6, 6]) and params["b"].grad.base is flat.buffers[np.dtype(np.float64)]


# -- whole runs under mpiexec --------------------------------------------------------------------------------------
def _env():
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH}
    env["CNNFRAME_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _needs_mpi():
    pytest.importorskip("mpi4py", reason="data-parallel runs need the [mpi] extra (mpi4py and mpich)")
    if MPIEXEC is None:
        pytest.skip("no mpiexec next to the Python executable or on PATH")


# One process: the command line, then a check that nothing from MPI was imported.
_ONE = ("import sys; from cnnframe import cli; code = cli.main(sys.argv[1:]); "
        "assert not [m for m in sys.modules if m.startswith('mpi4py')], 'a single process imported MPI'; "
        "sys.exit(code)")


def _run(processes, *args, env=None, timeout=120):
    if processes > 1:
        cmd = [MPIEXEC, "-n", str(processes), sys.executable, "-m", "cnnframe", *args]
    else:
        cmd = [sys.executable, "-c", _ONE, *args]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env or _env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    res.seconds = time.perf_counter() - t0
    return res


def _train(processes, run_root, *sets, extra=()):
    args = ["train", TINY, "-q", "--no-report", "--set", f"trainer.run_dir={run_root}", "--set", "trainer.epochs=3",
            "--set", "trainer.dtype=float64", *[a for s in sets for a in ("--set", s)], *extra]
    res = _run(processes, *args)
    assert res.returncode == 0, res.stderr
    return _run_dir(run_root)


def _run_dir(run_root):
    found = {os.path.realpath(p) for p in glob.glob(os.path.join(str(run_root), "*", "config.yaml"))}  # and latest/
    assert len(found) == 1, found
    return os.path.dirname(found.pop())


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _assert_bit_identical(a, b):
    ca, cb = checkpoint.read(os.path.join(a, "last.npz")), checkpoint.read(os.path.join(b, "last.npz"))
    for part in ("params", "buffers", "arrays"):
        x, y = getattr(ca, part), getattr(cb, part)
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(x[k], y[k]), (part, k)
    assert _rows(a) == _rows(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, three epochs, each batch in 2 chunks: the run every 2-process result must equal."""
    _needs_mpi()
    return _train(1, tmp_path_factory.mktemp("one-chunked"), "trainer.batch_chunks=2")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    _needs_mpi()
    return _train(2, tmp_path_factory.mktemp("two"))


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def test_two_processes_are_bit_identical_to_one_with_the_same_chunks(reference, two_processes):
    _assert_bit_identical(two_processes, reference)
    assert _summary(two_processes)["processes"] == 2
    assert _summary(two_processes)["test"]["acc"] == _summary(reference)["test"]["acc"]


def test_two_processes_match_one_plain_process_to_rounding(two_processes, tmp_path):
    plain = _train(1, tmp_path)  # batch_chunks null: one chunk in one process
    for a, b in zip(_rows(two_processes), _rows(plain)):
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (a["epoch"], key)
    assert _summary(two_processes)["test"]["acc"] == _summary(plain)["test"]["acc"]


def test_resume_with_another_number_of_processes_continues_exactly(reference, tmp_path):
    """Started on 2 processes, resumed by 1; started on 1, resumed by 2: both as if never interrupted."""
    for first, then, after in ((2, 1, 1), (1, 2, 2)):
        run_dir = _train(first, tmp_path / f"{first}-{then}", "trainer.batch_chunks=2", extra=("--stop-after", str(after)))
        assert _summary(run_dir)["status"] == "paused"
        res = _run(then, "train", "--resume", run_dir, "-q", "--no-report")
        assert res.returncode == 0, res.stderr
        _assert_bit_identical(run_dir, reference)


def test_commands_use_a_run_trained_on_two_processes(two_processes, tmp_path, capsys):
    assert cli.main(["evaluate", two_processes]) == 0
    acc = _summary(two_processes)["test"]["acc"]
    assert f"accuracy {100 * acc:.2f}%" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", load_digits().images[:5])
    assert cli.main(["predict", two_processes, "--input", str(tmp_path / "x.npy"), "--output",
                     str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 6  # header + 5 samples
    res = _run(2, "validate", os.path.join(two_processes, "config.yaml"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": OK") == 1 and "data-parallel: 2 processes (MPI), each batch in 2 chunks" in res.stdout


def test_bad_config_exits_2_once(tmp_path):
    _needs_mpi()
    res = _run(2, "train", TINY, "--set", f"trainer.run_dir={tmp_path}", "--set", "trainer.batch_sise=3")
    assert res.returncode == 2
    assert res.stderr.count("cnnframe: error:") == 1 and "trainer.batch_sise" in res.stderr
    assert os.listdir(tmp_path) == []  # no run directory left behind


def test_launched_without_mpi4py_exits_2_once(tmp_path):
    if MPIEXEC is None:
        pytest.skip("no mpiexec next to the Python executable or on PATH")
    hidden = tmp_path / "hide" / "mpi4py"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named mpi4py (hidden by a test)')\n")
    env = _env()
    env["PYTHONPATH"] = str(tmp_path / "hide") + os.pathsep + env["PYTHONPATH"]
    res = _run(2, "train", TINY, "--set", f"trainer.run_dir={tmp_path / 'runs'}", env=env)
    assert res.returncode == 2
    assert res.stderr.count('pip install "cnnframe[mpi]"') == 1, res.stderr


_PLUGIN = '''
import os
import numpy as np
import cnnframe
from cnnframe.layers import Layer


@cnnframe.register_layer("fail_on_rank_1")
class FailOnRank1(Layer):
    """The identity; on process 1, training forward number ``at`` raises (what: raise) or gives NaN (what: nan)."""

    def __init__(self, at=5, what="raise", dtype="float32"):
        super().__init__(dtype)
        self.at, self.what, self.calls = at, what, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK")) == "1" and self.calls == self.at:
                if self.what == "raise":
                    raise RuntimeError("failing on purpose")
                return x * np.nan
        return x

    def backward(self, grad_out):
        return grad_out

    def get_config(self):
        return {**super().get_config(), "at": self.at, "what": self.what}
'''


def _failing_config(tmp_path, what, at):
    (tmp_path / "fail_on_rank_1.py").write_text(_PLUGIN)
    path = tmp_path / "fail.yaml"
    path.write_text(textwrap.dedent(f"""\
        plugins: [fail_on_rank_1.py]
        data: {{dataset: digits}}
        model:
          layers:
            - {{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}}
            - {{type: fail_on_rank_1, at: {at}, what: {what}}}
            - {{type: flatten}}
            - {{type: dense, out_features: 10}}
        trainer: {{epochs: 3, batch_size: 64, run_dir: {tmp_path / 'runs'}}}
        """))
    return str(path)


def test_a_process_raising_mid_epoch_ends_the_job(tmp_path):
    _needs_mpi()
    res = _run(2, "train", _failing_config(tmp_path, "raise", 30), "-q", "--no-report", timeout=60)
    assert res.returncode != 0 and res.seconds < 30
    assert res.stderr.count("error on process 1 of 2: failing on purpose") == 1
    run_dir = _run_dir(tmp_path / "runs")
    assert checkpoint.read(os.path.join(run_dir, "last.npz")).meta["epoch"] == 1  # epoch 2 died at step 9


def test_a_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    _needs_mpi()
    res = _run(2, "train", _failing_config(tmp_path, "nan", 30), "-q", "--no-report", timeout=60)
    assert res.returncode == 1 and res.seconds < 30
    assert res.stderr.count("the loss became nan at epoch 2, step 9/21") == 1
    run_dir = _run_dir(tmp_path / "runs")
    assert _summary(run_dir)["status"] == "diverged" and _summary(run_dir)["epochs_completed"] == 1


def test_ctrl_c_ends_the_job(tmp_path):
    _needs_mpi()
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "cnnframe", "train", TINY, "-q", "--no-report", "--set",
           f"trainer.run_dir={tmp_path}", "--set", "trainer.epochs=1000"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not glob.glob(os.path.join(str(tmp_path), "*", "last.npz")) and time.time() < deadline:
            time.sleep(0.1)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does: mpiexec passes it to every process
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and time.perf_counter() - t0 < distributed.INTERRUPT_GRACE + 5, err
    assert checkpoint.read(glob.glob(os.path.join(str(tmp_path), "*", "last.npz"))[0]).meta["epoch"] >= 1


def test_sums_over_processes_are_ordered_and_the_same_by_either_path(tmp_path):
    """Three processes: the one-collective gather and the slice exchange both give tree_sum over the ranks."""
    _needs_mpi()
    script = tmp_path / "sums.py"
    script.write_text(textwrap.dedent("""\
        import numpy as np
        from cnnframe import distributed
        from cnnframe.shards import tree_sum
        g = distributed.group_from_environment()
        rng = np.random.default_rng(0)
        data = [(rng.standard_normal(1001) * 10.0 ** rng.integers(-4, 5, 1001)).astype(np.float32) for _ in range(3)]
        for dt in (np.float32, np.float64):
            expect = tree_sum([d.astype(dt) for d in data])
            for limit in (1 << 20, 0):
                g.gather_bytes = limit
                got = g.sum(data[g.rank].astype(dt))
                assert np.array_equal(got, expect), (dt, limit)
        assert np.array_equal(g.gather(np.full(2, g.rank)), [[0, 0], [1, 1], [2, 2]])
        assert g.size == 3 and g.from_root(lambda: g.rank) == 0
        print("ok")
        """))
    res = subprocess.run([MPIEXEC, "-n", "3", sys.executable, str(script)], env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.count("ok") == 3, res.stderr
