# The fixed-order reductions of lanes.h, for the kernels that cimport them.
cdef extern from "lanes.h" nogil:
    ctypedef struct cnnframe_acc:
        pass
    void cnnframe_acc_zero(cnnframe_acc* a) noexcept
    double cnnframe_acc_total(cnnframe_acc* a) noexcept
    void cnnframe_lanes_sum_f(const float* x, Py_ssize_t n, cnnframe_acc* a) noexcept
    void cnnframe_lanes_sum_d(const double* x, Py_ssize_t n, cnnframe_acc* a) noexcept
    void cnnframe_lanes_sqdev_f(const float* x, Py_ssize_t n, float c, cnnframe_acc* a) noexcept
    void cnnframe_lanes_sqdev_d(const double* x, Py_ssize_t n, double c, cnnframe_acc* a) noexcept
    void cnnframe_lanes_dots_f(const float* g, const float* x, Py_ssize_t n, float mean, float inv,
                               cnnframe_acc* ag, cnnframe_acc* agx) noexcept
    void cnnframe_lanes_dots_d(const double* g, const double* x, Py_ssize_t n, double mean, double inv,
                               cnnframe_acc* ag, cnnframe_acc* agx) noexcept
