/* Elementwise activations over a flat run (activation.pyx splits the array into runs per thread). */
#ifndef CNNFRAME_ACTIVATION_H
#define CNNFRAME_ACTIVATION_H

#include <stddef.h>

#define CNNFRAME_DEFINE_ACTIVATION(S, T)                                                        \
/* y = max(x, 0); a NaN stays NaN (as np.maximum and PyTorch) */                                \
static inline void cnnframe_relu_##S(const T *x, ptrdiff_t n, T *y) {                                  \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                         \
        T v = x[i];                                                                             \
        y[i] = (v > 0 || v != v) ? v : (T)0;                                                    \
    }                                                                                           \
}                                                                                               \
/* dx = G·[y > 0] (a product, so a NaN or infinite G still shows where the unit is off) */      \
static inline void cnnframe_relu_grad_##S(const T *g, const T *y, ptrdiff_t n, T *dx) {                \
    for (ptrdiff_t i = 0; i < n; ++i) dx[i] = g[i] * (T)(y[i] > 0);                             \
}                                                                                               \
/* y = x if x > 0 else a·x */                                                                   \
static inline void cnnframe_leaky_##S(const T *x, ptrdiff_t n, T a, T *y) {                            \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                         \
        T v = x[i];                                                                             \
        y[i] = v > 0 ? v : v * a;                                                               \
    }                                                                                           \
}                                                                                               \
/* dx = G if x > 0 else a·G */                                                                  \
static inline void cnnframe_leaky_grad_##S(const T *g, const T *x, ptrdiff_t n, T a, T *dx) {          \
    for (ptrdiff_t i = 0; i < n; ++i) dx[i] = x[i] > 0 ? g[i] : g[i] * a;                       \
}

CNNFRAME_DEFINE_ACTIVATION(f, float)
CNNFRAME_DEFINE_ACTIVATION(d, double)

#endif
