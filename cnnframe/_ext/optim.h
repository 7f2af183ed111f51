/* One optimizer step over a run of a parameter (optim.pyx splits each parameter into runs).

   Each update is written operation by operation as the formulas in cnnframe/optim/sgd.py and
   adam.py, in the parameter's dtype, so a step gives the same bits as those formulas evaluated
   with NumPy arrays.  The gradient g is first scaled by the clipping factor (when clipping) and
   given the L2 term wd·w (when the parameter decays). */
#ifndef CNNFRAME_OPTIM_H
#define CNNFRAME_OPTIM_H

#include <math.h>
#include <stddef.h>

#define CNNFRAME_DEFINE_OPTIM(S, T, SQRT)                                                       \
static inline T cnnframe_step_grad_##S(T g, T w, T scale, T wd, int scaled, int decay) {        \
    if (scaled) g = g * scale;                                                                  \
    if (decay) g = g + wd * w;                                                                  \
    return g;                                                                                   \
}                                                                                               \
/* SGD: v ← μ·v + g;  d = g + μ·v (Nesterov) or v;  w ← w − lr·d   (d = g without momentum) */  \
static inline void cnnframe_sgd_##S(T *w, const T *grad, T *buf, ptrdiff_t n, T lr, T mu, T scale, T wd, \
                                    int scaled, int decay, int momentum, int nesterov) {        \
    if (!momentum) {                                                                            \
        for (ptrdiff_t i = 0; i < n; ++i)                                                       \
            w[i] = w[i] - lr * cnnframe_step_grad_##S(grad[i], w[i], scale, wd, scaled, decay); \
    } else if (nesterov) {                                                                      \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                     \
            T g = cnnframe_step_grad_##S(grad[i], w[i], scale, wd, scaled, decay);              \
            T b = buf[i] * mu + g;                                                              \
            buf[i] = b;                                                                         \
            w[i] = w[i] - lr * (g + mu * b);                                                    \
        }                                                                                       \
    } else {                                                                                    \
        for (ptrdiff_t i = 0; i < n; ++i) {                                                     \
            T g = cnnframe_step_grad_##S(grad[i], w[i], scale, wd, scaled, decay);              \
            T b = buf[i] * mu + g;                                                              \
            buf[i] = b;                                                                         \
            w[i] = w[i] - lr * b;                                                               \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
/* Adam: m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  w ← w − lr_t·m / (√v / c2 + eps) */         \
static inline void cnnframe_adam_##S(T *w, const T *grad, T *m, T *v, ptrdiff_t n, T lr_t, T b1, T b2, \
                                     T one_b1, T one_b2, T c2, T eps, T scale, T wd,            \
                                     int scaled, int decay) {                                   \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                         \
        T g = cnnframe_step_grad_##S(grad[i], w[i], scale, wd, scaled, decay);                  \
        T mi = m[i] * b1 + one_b1 * g;                                                          \
        T vi = v[i] * b2 + one_b2 * (g * g);                                                    \
        m[i] = mi;                                                                              \
        v[i] = vi;                                                                              \
        w[i] = w[i] - lr_t * (mi / (SQRT(vi) / c2 + eps));                                      \
    }                                                                                           \
}

CNNFRAME_DEFINE_OPTIM(f, float, sqrtf)
CNNFRAME_DEFINE_OPTIM(d, double, sqrt)

#endif
