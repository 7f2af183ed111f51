import os
import subprocess
import sys

import numpy as np
import pytest

import cnnframe
from cnnframe import parallel


def test_set_and_get_num_threads():
    old = cnnframe.get_num_threads()
    try:
        cnnframe.set_num_threads(3)
        assert cnnframe.get_num_threads() == 3
    finally:
        cnnframe.set_num_threads(old)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        cnnframe.set_num_threads(bad)


def test_num_threads_context_restores():
    old = cnnframe.get_num_threads()
    with cnnframe.num_threads(1):
        assert cnnframe.get_num_threads() == 1
    assert cnnframe.get_num_threads() == old


def _threads_in_subprocess(env_value, tmp_path):
    env = dict(os.environ, CNNFRAME_NUM_THREADS=env_value)
    code = "import cnnframe; print(cnnframe.get_num_threads())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)


def test_environment_variable_sets_default(tmp_path):
    out = _threads_in_subprocess("1", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_bad_environment_variable_is_reported(tmp_path):
    out = _threads_in_subprocess("many", tmp_path)
    assert out.returncode != 0
    assert "CNNFRAME_NUM_THREADS must be a positive integer" in out.stderr


def test_threads_for_small_work_uses_one_thread(monkeypatch):
    monkeypatch.setattr(parallel, "_dynamic", False)
    with cnnframe.num_threads(2):
        if cnnframe.get_num_threads() == 2:  # serial builds always report 1
            assert parallel.threads_for(10, 100) == 1
            assert parallel.threads_for(10_000, 100) == 2


def test_dynamic_threads_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(parallel._LOAD, "free_cores", lambda n: 1)
    with cnnframe.num_threads(2):
        if cnnframe.get_num_threads() == 2:
            cnnframe.set_dynamic(True)
            assert parallel.threads_for(10**9, 1) == 1
            cnnframe.set_dynamic(False)
            try:
                assert parallel.threads_for(10**9, 1) == 2
            finally:
                cnnframe.set_dynamic(True)


def test_kernel_blas_pinned_to_one_thread_numpy_blas_untouched():
    libs = parallel._blas_controllers()
    assert libs, "threadpoolctl found no BLAS library"
    kernel = parallel.kernel_blas()
    others = [lc for lc in libs if lc not in kernel]
    before = [lc.get_num_threads() for lc in others]
    x = np.ones((2, 3, 5, 5))
    cnnframe.ops.conv2d_backward(x, np.ones((2, 3, 3, 3)), np.ones((2, 2, 3, 3)))
    assert all(lc.get_num_threads() == 1 for lc in kernel)
    assert [lc.get_num_threads() for lc in others] == before
