"""train's report at the end: written when matplotlib is installed, a note (not a failed run) when drawing it
fails, one line naming the extra without matplotlib, nothing with --no-report."""
import glob
import json
import os

import pytest

from cnnframe import optional
from cnnframe.cli import main
from cnnframe.commands import train as train_command
from cnnframe.model import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")


def train(capsys, tmp_path, *extra):
    code = main(["train", TINY, "--set", "trainer.epochs=1", "--run-dir", str(tmp_path), *extra])
    out, err = capsys.readouterr()
    (run,) = glob.glob(os.path.join(str(tmp_path), "digits-tiny-*"))
    return code, out, err, run


def assert_run_intact(run):
    with open(os.path.join(run, "summary.json")) as f:
        assert json.load(f)["status"] == "completed"
    assert load_checkpoint(os.path.join(run, "last.npz"))[2]["epoch"] == 1


def test_a_failing_report_is_a_note_and_the_run_stands(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(train_command, "report_run", broken)
    code, out, err, run = train(capsys, tmp_path)
    assert code == 0 and "run directory:" in out and "report:" not in out
    assert err.count("\n") == 1 and "cnnframe: note: the run report could not be written (RuntimeError: the disk is " \
                                   f"full); the run in {run} is complete; try again with: python -m cnnframe report " \
                                   f"{run}" in err
    assert_run_intact(run)
    assert not os.path.exists(os.path.join(run, "report.html"))


def test_without_matplotlib_one_line_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(optional, "available", lambda module: module != "matplotlib")
    code, out, err, run = train(capsys, tmp_path)
    assert code == 0 and err == ""
    lines = [line for line in out.splitlines() if "report" in line.replace(str(tmp_path), "")]
    assert lines == ['no run report: pip install "cnnframe[plot]" (matplotlib) and train writes report.html with '
                     f'plots; for this run: python -m cnnframe report {run}']
    assert_run_intact(run)


def test_no_report_and_stop_after_write_none(tmp_path, capsys):
    code, out, _, run = train(capsys, tmp_path / "a", "--no-report")
    assert code == 0 and "report:" not in out and "no run report" not in out
    assert not glob.glob(os.path.join(run, "*.png")) and not os.path.exists(os.path.join(run, "report.html"))
    code, out, _, run = train(capsys, tmp_path / "b", "--set", "trainer.epochs=2", "--stop-after", "1", "-q")
    assert code == 0 and not os.path.exists(os.path.join(run, "report.html"))  # the run is not over yet
