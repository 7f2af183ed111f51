"""The build must not silently lose OpenMP: a serial build is only accepted when declared."""
import os
import shutil
import subprocess
import sys

import pytest

from cnnframe._ext import _openmp


def test_openmp_compiled_in_unless_serial_build_declared():
    if os.environ.get("CNNFRAME_SERIAL_BUILD", "") not in ("", "0"):
        assert not _openmp.openmp_enabled(), "CNNFRAME_SERIAL_BUILD=1 but the kernels were built with OpenMP"
    else:
        assert _openmp.openmp_enabled(), (
            "the kernels were built without OpenMP; install a compiler with OpenMP support and rebuild, "
            "or set CNNFRAME_SERIAL_BUILD=1 if a serial build is intended"
        )


@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="serial build: no OpenMP runtime to ask")
def test_openmp_runtime_reports_threads():
    assert _openmp.openmp_max_threads() >= 1


def _unbuilt_copy(tmp_path):
    """The package's Python and Cython sources, without any compiled module."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(_openmp.__file__)))
    dst = tmp_path / "cnnframe"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    return tmp_path


@pytest.mark.parametrize("argv", [["-m", "cnnframe", "info"], ["-m", "cnnframe", "train", "x.yaml"]])
def test_unbuilt_source_tree_says_how_to_build(tmp_path, argv):
    root = _unbuilt_copy(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "not built" in lines[0] and "pip install -e ." in lines[0]
    assert r.stdout == ""


def test_unbuilt_source_tree_import_raises_importerror(tmp_path):
    root = _unbuilt_copy(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(root))
    code = "import cnnframe"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "KernelsNotBuilt" in r.stderr and "pip install -e ." in r.stderr
