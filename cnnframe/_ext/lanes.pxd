# The fixed-order reductions of lanes.h, for the kernels that cimport them.
cdef extern from "lanes.h" nogil:
    void cnnframe_lanes_zero(double* acc) noexcept
    double cnnframe_lanes_total(const double* acc) noexcept
    void cnnframe_sum_f(const float* x, Py_ssize_t n, double* acc) noexcept
    void cnnframe_sum_d(const double* x, Py_ssize_t n, double* acc) noexcept
    void cnnframe_sqdev_f(const float* x, Py_ssize_t n, float c, double* acc) noexcept
    void cnnframe_sqdev_d(const double* x, Py_ssize_t n, double c, double* acc) noexcept
    void cnnframe_dots_f(const float* g, const float* x, Py_ssize_t n, float mean, float inv,
                         double* ag, double* agx) noexcept
    void cnnframe_dots_d(const double* g, const double* x, Py_ssize_t n, double mean, double inv,
                         double* ag, double* agx) noexcept
