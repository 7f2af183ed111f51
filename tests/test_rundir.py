"""Run directories: the lock, commits that happen whole or not at all, recovery, the latest link, signals."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from cnnframe import io as cio
from cnnframe.cli import main
from cnnframe.config import load_config
from cnnframe.errors import RunDirLocked, UserError, WriteError
from cnnframe.rundir import JOURNAL, LATEST, RunDir, deferred_signals, resolve
from cnnframe.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")

# A process that takes a run directory's lock, says so, and keeps it until it is killed or its stdin closes.
HOLDER = ("import sys\nfrom cnnframe.rundir import RunDir\nrun = RunDir(sys.argv[1]).lock()\n"
          "print('locked', flush=True)\nsys.stdin.read()\n")


def holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def hidden(path):
    return sorted(f for f in os.listdir(path) if f.startswith(".") and f != ".lock")


# -- the lock ------------------------------------------------------------------------------------------------------
def test_a_second_process_is_refused_until_the_holder_is_killed(tmp_path):
    """`train --resume` of a run another process holds exits 2 naming it; once that process is killed (no
    chance to clean up: the lock file stays), the kernel has dropped its lock and the run resumes."""
    first = Trainer.from_config(load_config(TINY, [f"trainer.run_dir={tmp_path}"]), quiet=True)
    first.fit(stop_after=1)
    proc = holder(first.run_dir)
    try:
        with pytest.raises(RunDirLocked) as info:
            RunDir(first.run_dir).lock()
        assert info.value.holder["pid"] == proc.pid and isinstance(info.value, UserError)
        r = subprocess.run([sys.executable, "-m", "cnnframe", "train", "--resume", first.run_dir, "-q"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("cnnframe: error: ") and len(r.stderr.splitlines()) == 1
        assert f"pid {proc.pid}" in r.stderr and f"host {socket.gethostname()}" in r.stderr
        assert first.run_dir in r.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert os.path.exists(os.path.join(first.run_dir, ".lock"))
    assert main(["train", "--resume", first.run_dir, "-q", "--no-report"]) == 0
    with open(os.path.join(first.run_dir, "metrics.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_the_lock_is_held_while_training_and_free_after(tmp_path):
    trainer = Trainer.from_config(load_config(TINY, [f"trainer.run_dir={tmp_path}"]), quiet=True)
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):  # made and locked: not resumable meanwhile
        Trainer.resume(trainer.run_dir)
    trainer.fit(stop_after=1)
    with Trainer.resume(trainer.run_dir, quiet=True).rundir as run:  # free after fit; held by a resumed trainer
        assert run.locked
        with pytest.raises(RunDirLocked):
            RunDir(trainer.run_dir).lock()


def test_a_process_that_never_writes_takes_no_lock_and_writes_nothing(tmp_path):
    run = RunDir(tmp_path, writer=False)
    run.lock()
    run.commit({"a.txt": "x", "b.txt": "y"})
    assert not run.locked and os.listdir(tmp_path) == []
    assert RunDir.open(tmp_path, writer=False).recover() == []


# -- commits -------------------------------------------------------------------------------------------------------
def test_commit_replaces_every_file_or_none(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.commit({"a.txt": "a1", "b.bin": b"b1", "c.txt": lambda f: f.write(b"c1")})
    assert [(tmp_path / n).read_bytes() for n in ("a.txt", "b.bin", "c.txt")] == [b"a1", b"b1", b"c1"]
    assert hidden(tmp_path) == []

    def full(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="cannot write .*c.txt: No space left on device"):
        run.commit({"a.txt": "a2", "b.bin": b"b2", "c.txt": full})
    assert [(tmp_path / n).read_bytes() for n in ("a.txt", "b.bin", "c.txt")] == [b"a1", b"b1", b"c1"]
    assert hidden(tmp_path) == []  # the staged files went too


def test_recover_finishes_a_journaled_commit_and_removes_leftovers(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.commit({"a.txt": "old a", "b.txt": "old b"})
    real = os.replace

    def killed_after_first_rename(src, dst):
        if os.path.basename(dst) == "b.txt":
            raise SystemExit("killed")  # stands for SIGKILL: nothing after this runs
        return real(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_first_rename)
    with pytest.raises(SystemExit):
        run.commit({"a.txt": "new a", "b.txt": "new b"})
    monkeypatch.undo()
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "old b"
    assert os.path.exists(tmp_path / JOURNAL)
    (tmp_path / ".c.txt.0badf00d.tmp").write_text("from a killed write")
    notes = RunDir.open(tmp_path).recovered
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    assert hidden(tmp_path) == [] and len(notes) == 2 and "b.txt" in notes[0] and "1 temporary" in notes[1]


def test_a_commit_killed_before_its_journal_leaves_the_old_files(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.commit({"a.txt": "old a", "b.txt": "old b"})
    real = cio.atomic_write_text

    def killed(path, text):
        raise SystemExit("killed")

    monkeypatch.setattr(cio, "atomic_write_text", killed)
    with pytest.raises(SystemExit):
        run.commit({"a.txt": "new a", "b.txt": "new b"})
    monkeypatch.setattr(cio, "atomic_write_text", real)
    RunDir.open(tmp_path)
    assert (tmp_path / "a.txt").read_text() == "old a" and (tmp_path / "b.txt").read_text() == "old b"
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("files", [[[".x.tmp", "../outside"]], [["/etc/passwd", "a.txt"]], [[".x.tmp", ".lock"]], "x"])
def test_a_journal_that_names_anything_else_is_refused(tmp_path, files):
    (tmp_path / JOURNAL).write_text(json.dumps({"format": "cnnframe-commit/1", "files": files}))
    with pytest.raises(UserError, match="not a commit journal cnnframe wrote"):
        RunDir.open(tmp_path)
    assert RunDir(tmp_path).lock().locked  # the failed open let go of the lock


# -- making runs, the latest link ---------------------------------------------------------------------------------
def test_create_makes_unique_locked_runs_and_points_latest_at_the_newest(tmp_path):
    a = RunDir.create(str(tmp_path / "runs"), "digits")
    b = RunDir.create(str(tmp_path / "runs"), "digits")
    assert a.path != b.path and a.locked and b.locked
    link = tmp_path / "runs" / LATEST
    assert os.readlink(link) == os.path.basename(b.path)  # relative: the folder can move
    assert resolve(str(link)) == b.path and resolve(str(link) + "/") == b.path and resolve(a.path) == a.path
    with pytest.raises(RunDirLocked):
        RunDir.open(str(link))
    a.release()
    b.release()
    assert RunDir.open(str(link)).path == b.path


def test_a_latest_the_user_made_is_left_alone(tmp_path):
    (tmp_path / LATEST).write_text("mine")
    run = RunDir.create(str(tmp_path), "x")
    assert not run.link_latest() and (tmp_path / LATEST).read_text() == "mine"


def test_a_run_root_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "runs").write_text("")
    for root in (tmp_path / "runs", tmp_path / "runs" / "deeper"):
        with pytest.raises(UserError, match="is a file, not a directory"):
            RunDir.create(str(root), "x")


# -- signals -------------------------------------------------------------------------------------------------------
def test_ctrl_c_waits_until_the_block_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the signal")  # still running: the signal waits
    assert done == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_goes_to_the_previous_handler_after_the_block():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_error_in_the_block_wins_over_a_deferred_signal():
    with pytest.raises(ValueError):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block failed")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_reader_resumes_without_locking_or_writing(tmp_path):
    """writer=False (a data-parallel rank other than 0): the state is read, nothing is locked or written."""
    trainer = Trainer.from_config(load_config(TINY, [f"trainer.run_dir={tmp_path}", "trainer.epochs=3"]), quiet=True)
    trainer.fit(stop_after=1)
    writer = Trainer.resume(trainer.run_dir, quiet=True)  # holds the lock
    before = {f: os.path.getmtime(os.path.join(trainer.run_dir, f)) for f in os.listdir(trainer.run_dir)}
    reader = Trainer.resume(trainer.run_dir, quiet=True, writer=False)
    assert reader.epoch == 1 and not reader.rundir.locked
    reader.fit(stop_after=2)
    assert {f: os.path.getmtime(os.path.join(trainer.run_dir, f)) for f in os.listdir(trainer.run_dir)} == before
    writer.fit()
    with open(os.path.join(trainer.run_dir, "metrics.csv")) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]
