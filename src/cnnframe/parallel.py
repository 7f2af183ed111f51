"""The thread budget: the one piece of global state cnnframe keeps.

Kernels run ``prange`` loops over ``get_num_threads()`` OpenMP threads.  BLAS calls made *inside*
those loops must run on one thread each, otherwise OpenBLAS starts its own pool inside every OpenMP
thread and a layer gets ~10x slower.  ``blas_single_threaded()`` pins every loaded BLAS to one thread
for the duration of a kernel call, through one cached threadpoolctl controller (building a new one
costs ~0.6 ms, more than a whole digits-sized layer).
"""
import os
import threading
from contextlib import contextmanager

_lock = threading.Lock()
_num_threads = None
_blas_libs = None


def _default_threads():
    env = os.environ.get("CNNFRAME_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"CNNFRAME_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"CNNFRAME_NUM_THREADS must be a positive integer, got {env!r}")
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


def get_num_threads():
    """The number of OpenMP threads kernels use (1 when the build has no OpenMP)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    from cnnframe._ext._openmp import openmp_enabled

    return _num_threads if openmp_enabled() else 1


def threads_for(work, grain):
    """Threads worth using for ``work`` units when each thread should get at least ``grain``.

    Starting a thread team costs microseconds on an idle machine and whole scheduler slices on a
    busy one, so small operations run on one thread.
    """
    n = get_num_threads()
    if n == 1:
        return 1
    return int(max(1, min(n, work // grain)))


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
    global _blas_libs
    if _blas_libs is None:
        with _lock:
            if _blas_libs is None:
                # The kernels call scipy's BLAS; import it so threadpoolctl sees that library too.
                import scipy.linalg.cython_blas  # noqa: F401
                from threadpoolctl import ThreadpoolController

                ctl = ThreadpoolController()
                _blas_libs = [lc for lc in ctl.lib_controllers if lc.user_api == "blas"]
    return _blas_libs


@contextmanager
def blas_single_threaded():
    """Run the body with every BLAS library limited to one thread, then restore the old limits."""
    libs = _blas_controllers()
    old = []
    for lc in libs:
        n = lc.get_num_threads()
        old.append(n)
        if n != 1:
            lc.set_num_threads(1)
    try:
        yield
    finally:
        for lc, n in zip(libs, old):
            if n != 1:
                lc.set_num_threads(n)


def blas_info():
    """A list of ``(internal_api, version, num_threads, filepath)`` for each loaded BLAS."""
    return [(lc.internal_api, lc.version, lc.get_num_threads(), lc.filepath) for lc in _blas_controllers()]
