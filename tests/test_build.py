"""The build must not silently lose OpenMP: a serial build is only accepted when declared."""
import os

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
