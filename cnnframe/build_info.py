"""What this cnnframe runs with: its version, how the kernels were compiled, threads and BLAS.

The one place outside ``ops/`` and ``parallel.py`` that asks the compiled kernels anything, and only
about how they were built.
"""
import platform

import numpy as np

from cnnframe import parallel
from cnnframe._ext import _openmp
from cnnframe._ext import conv as _conv
from cnnframe.version import __version__

__all__ = ["build_info"]


def build_info():
    """A dict: ``version``, ``python``, ``numpy``, ``openmp`` (compiled in), ``openmp_threads`` (the
    runtime's default), ``threads`` (what the kernels use), ``dynamic_threads``, ``microkernel`` (the
    AVX-512 float32 path is available on this CPU), ``blas`` (``[(api, version, threads, path), ...]``)."""
    return {
        "version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "openmp": bool(_openmp.openmp_enabled()),
        "openmp_threads": int(_openmp.openmp_max_threads()),
        "threads": parallel.get_num_threads(),
        "dynamic_threads": parallel.get_dynamic(),
        "microkernel": bool(_conv.microkernel_available()),
        "blas": parallel.blas_info(),
    }
