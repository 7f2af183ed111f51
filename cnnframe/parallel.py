"""The thread budget: the one piece of global state cnnframe keeps.

Kernels run ``prange`` loops over ``get_num_threads()`` OpenMP threads.  The BLAS they call
(SciPy's, through ``scipy.linalg.cython_blas``) must then run on one thread per call, otherwise
OpenBLAS starts its own pool inside every OpenMP thread and a layer gets ~10x slower.
``pin_kernel_blas()`` limits that library to one thread, once per process, through threadpoolctl.
It is pinned for good rather than around each call: raising OpenBLAS's thread count again wakes
its worker threads, which then spin and steal the cores the OpenMP threads need.  NumPy's BLAS
(used by ``Dense`` and by user code) is left alone.
"""
import os
import threading
from contextlib import contextmanager

from cnnframe.cpuload import CpuLoad

_lock = threading.RLock()
_num_threads = None
_blas_libs = None


def env_threads():
    """``CNNFRAME_NUM_THREADS`` as an int, None when it is unset or empty; ValueError naming the variable
    when it is not a positive integer (the command line checks it before anything else)."""
    env = os.environ.get("CNNFRAME_NUM_THREADS", "").strip()
    if not env:
        return None
    try:
        n = int(env)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"the environment variable CNNFRAME_NUM_THREADS must be a positive integer, got {env!r}")
    return n


def _default_threads():
    n = env_threads()
    if n is not None:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Set how many OpenMP threads the kernels use (default: ``CNNFRAME_NUM_THREADS`` or all cores)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive integer, got {n!r}")
    _num_threads = n


_openmp = None


def get_num_threads():
    """The number of OpenMP threads kernels use (1 when the build has no OpenMP)."""
    global _num_threads, _openmp
    if _num_threads is None:
        _num_threads = _default_threads()
    if _openmp is None:
        from cnnframe._ext._openmp import openmp_enabled

        _openmp = openmp_enabled()
    return _num_threads if _openmp else 1


def threads_for(work, grain):
    """Threads worth using for ``work`` units when each thread should get at least ``grain``.

    Starting a thread team costs microseconds on an idle machine and whole scheduler slices on a
    busy one, so small operations run on one thread; and while other processes keep cores busy,
    threads are limited to the cores left (see ``set_dynamic``).  The kernels give bit-identical
    results for any thread count, so this never changes a result.
    """
    n = get_num_threads()
    if n == 1:
        return 1
    if _dynamic:
        n = min(n, _LOAD.free_cores(n))
    return int(max(1, min(n, work // grain)))


_LOAD = CpuLoad()
_dynamic = os.environ.get("CNNFRAME_DYNAMIC_THREADS", "1").strip() not in ("0", "false", "no", "off")


def set_dynamic(on):
    """Let kernels use fewer threads while other processes keep cores busy (default: on, or
    ``CNNFRAME_DYNAMIC_THREADS=0`` for off).  Results do not depend on it."""
    global _dynamic
    _dynamic = bool(on)


def get_dynamic():
    return _dynamic


@contextmanager
def num_threads(n):
    """Temporarily use ``n`` threads: ``with cnnframe.num_threads(1): ...``."""
    global _num_threads
    old = _num_threads
    set_num_threads(n)
    try:
        yield
    finally:
        _num_threads = old


def _blas_controllers():
    """threadpoolctl controllers of every loaded BLAS (SciPy's included)."""
    global _blas_libs
    if _blas_libs is None:
        with _lock:
            if _blas_libs is None:
                # The kernels call SciPy's BLAS; import it so threadpoolctl sees that library too.
                import scipy.linalg.cython_blas  # noqa: F401
                from threadpoolctl import ThreadpoolController

                ctl = ThreadpoolController()
                _blas_libs = [lc for lc in ctl.lib_controllers if lc.user_api == "blas"]
    return _blas_libs


def kernel_blas():
    """The controllers of the BLAS the kernels call: the one shipped with or linked by SciPy.

    When it cannot be told apart (e.g. SciPy and NumPy share one system BLAS), every BLAS counts.
    """
    import scipy

    scipy_dir = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    libs = _blas_controllers()
    mine = [lc for lc in libs if os.path.abspath(lc.filepath).startswith(os.path.join(scipy_dir, "scipy"))]
    return mine or libs


_pinned = False


def pin_kernel_blas():
    """Limit the kernels' BLAS to one thread (once; later calls cost a flag check)."""
    global _pinned
    if not _pinned:
        with _lock:
            if not _pinned:
                for lc in kernel_blas():
                    lc.set_num_threads(1)
                _pinned = True


def blas_info():
    """A list of ``(internal_api, version, num_threads, filepath)`` for each loaded BLAS."""
    return [(lc.internal_api, lc.version, lc.get_num_threads(), lc.filepath) for lc in _blas_controllers()]
