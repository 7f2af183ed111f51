"""OpenMP facts known only at compile time: whether the kernels were built with it, and its default team size."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CNNFRAME_OPENMP 1
    static int cnnframe_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define CNNFRAME_OPENMP 0
    static int cnnframe_max_threads(void) { return 1; }
    #endif
    """
    int CNNFRAME_OPENMP
    int cnnframe_max_threads() noexcept nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (``-fopenmp``)."""
    return bool(CNNFRAME_OPENMP)


def openmp_max_threads():
    """The OpenMP runtime's default team size (1 for a serial build)."""
    return cnnframe_max_threads()
