# The per-plane pooling loops of pool.h (pool.pyx; norm.pyx fuses them after BatchNorm and ReLU).
cdef extern from "pool.h" nogil:
    void cnnframe_max2x2_f(const float* xp, int W, int Ho, int Wo, float* yp, int* ap) noexcept
    void cnnframe_max2x2_d(const double* xp, int W, int Ho, int Wo, double* yp, int* ap) noexcept
    void cnnframe_max_plane_f(const float* xp, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                              int ph, int pw, float* yp, int* ap) noexcept
    void cnnframe_max_plane_d(const double* xp, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                              int ph, int pw, double* yp, int* ap) noexcept
    long long cnnframe_max_grad_plane_f(const float* gy, const int* ap, long long hw, long long howo,
                                        float* dx) noexcept
    long long cnnframe_max_grad_plane_d(const double* gy, const int* ap, long long hw, long long howo,
                                        double* dx) noexcept
