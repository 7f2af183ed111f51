"""Plain loop implementations of docs/math.md, written for reading and for tests, not for speed.

Each function follows its equation literally, so a test that agrees with these agrees with the math.
"""
import numpy as np

from cnnframe.checks import pair
from cnnframe.ops._checks import out_size


def pad(x, ph, pw, value=0.0):
    """Xp: ``x`` (N, C, H, W) with ph rows and pw columns of ``value`` on each side."""
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def conv2d_forward_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Eq. (1): Y[n,k,i,j] = b[k] + Σ_c Σ_m Σ_l Xp[n, c, i·s + m·d, j·s + l·d] · W[k,c,m,l];
    with groups, eq. (5): c runs over the Cg = C/g channels of k's group, input channel grp(k)·Cg + c."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    n_, _, h, wd = x.shape
    k_, c_, kh, kw = w.shape
    kg = k_ // groups
    ho, wo = out_size(h, kh, sh, ph, dh), out_size(wd, kw, sw, pw, dw)
    xp = pad(x, ph, pw)
    y = np.zeros((n_, k_, ho, wo), dtype=np.float64)
    for n in range(n_):
        for k in range(k_):
            for i in range(ho):
                for j in range(wo):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(c_):
                        ci = (k // kg) * c_ + c
                        for m in range(kh):
                            for l in range(kw):
                                acc += xp[n, ci, i * sh + m * dh, j * sw + l * dw] * w[k, c, m, l]
                    y[n, k, i, j] = acc
    return y


def conv2d_weight_grad_ref(x, g, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """Eq. (2): dW[k,c,m,l] = Σ_n Σ_i Σ_j G[n,k,i,j] · Xp[n, c, i·s + m·d, j·s + l·d]
    (eq. 5: input channel grp(k)·Cg + c)."""
    (sh, sw), (ph, pw), (dh, dw) = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    k_, c_, kh, kw = w_shape
    xp = pad(x, ph, pw)
    n_, _, ho, wo = g.shape
    dW = np.zeros(w_shape, dtype=np.float64)
    for k in range(k_):
        for c in range(c_):
            for m in range(kh):
                for l in range(kw):
                    acc = 0.0
                    ci = (k // (k_ // groups)) * c_ + c
                    for n in range(n_):
                        for i in range(ho):
                            for j in range(wo):
                                acc += g[n, k, i, j] * xp[n, ci, i * sh + m * dh, j * sw + l * dw]
                    dW[k, c, m, l] = acc
    return dW


def conv2d_bias_grad_ref(g):
    """Eq. (3): db[k] = Σ_n Σ_i Σ_j G[n,k,i,j]."""
    db = np.zeros(g.shape[1], dtype=np.float64)
    for k in range(g.shape[1]):
        for n in range(g.shape[0]):
            for i in range(g.shape[2]):
                for j in range(g.shape[3]):
                    db[k] += g[n, k, i, j]
    return db


def conv2d_input_grad_ref(g, w, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """Eq. (4): dXp[n,c] = Σ_k correlate(pad(dilate(G[n,k], s), d(k-1)), rot180(W[k,c]) dilated by d);
    then crop p.  With groups (eq. 5), k runs over the Kg output channels of c's group.

    Written as the full convolution itself: dilate G by the stride, zero-pad by d·(kh-1) (plus the
    rows Xp has beyond the last window), flip the kernel, correlate with stride 1.
    """
    (sh, sw), (ph, pw), (dh, dw) = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    n_, c_, h, wd = x_shape
    k_, cg, kh, kw = w.shape
    kg = k_ // groups
    _, _, ho, wo = g.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    # Dilated G: s-1 zeros between neighbours.
    gd = np.zeros((n_, k_, (ho - 1) * sh + 1, (wo - 1) * sw + 1), dtype=np.float64)
    for i in range(ho):
        for j in range(wo):
            gd[:, :, i * sh, j * sw] = g[:, :, i, j]
    top, left = dh * (kh - 1), dw * (kw - 1)
    gpad = np.zeros((n_, k_, hp + top, wp + left), dtype=np.float64)
    gpad[:, :, top : top + gd.shape[2], left : left + gd.shape[3]] = gd
    w_rot = w[:, :, ::-1, ::-1]  # rot180: w_rot[m, l] = w[kh-1-m, kw-1-l]
    dxp = np.zeros((n_, c_, hp, wp), dtype=np.float64)
    for n in range(n_):
        for c in range(c_):
            for r in range(hp):
                for q in range(wp):
                    acc = 0.0
                    grp = c // cg
                    for k in range(grp * kg, (grp + 1) * kg):
                        for m in range(kh):
                            for l in range(kw):
                                acc += gpad[n, k, r + m * dh, q + l * dw] * w_rot[k, c - grp * cg, m, l]
                    dxp[n, c, r, q] = acc
    return dxp[:, :, ph : ph + h, pw : pw + wd]


def conv2d_backward_ref(x, w, g, stride=1, padding=0, dilation=1, groups=1):
    """(dX, dW, db) by eqs. (4), (2), (3) (eq. 5 with groups)."""
    return (
        conv2d_input_grad_ref(g, w, x.shape, stride, padding, dilation, groups),
        conv2d_weight_grad_ref(x, g, w.shape, stride, padding, dilation, groups),
        conv2d_bias_grad_ref(g),
    )


def _windows(h, wd, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = (
        pair(kernel_size, "kernel_size", 1),
        pair(kernel_size if stride is None else stride, "stride", 1),
        pair(padding, "padding", 0),
    )
    ho, wo = out_size(h, kh, sh, ph, 1), out_size(wd, kw, sw, pw, 1)
    for i in range(ho):
        for j in range(wo):
            cells = [
                (i * sh - ph + m, j * sw - pw + l)
                for m in range(kh)
                for l in range(kw)
            ]
            yield i, j, cells, kh * kw


def _out_hw(h, wd, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = (
        pair(kernel_size, "kernel_size", 1),
        pair(kernel_size if stride is None else stride, "stride", 1),
        pair(padding, "padding", 0),
    )
    return out_size(h, kh, sh, ph, 1), out_size(wd, kw, sw, pw, 1)


def max_pool2d_forward_ref(x, kernel_size, stride=None, padding=0):
    """Y = max over each window of Xp (padding is -inf); also the flat index of the first maximum."""
    n_, c_, h, wd = x.shape
    ho, wo = _out_hw(h, wd, kernel_size, stride, padding)
    y = np.zeros((n_, c_, ho, wo), dtype=np.float64)
    arg = np.zeros((n_, c_, ho, wo), dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for i, j, cells, _ in _windows(h, wd, kernel_size, stride, padding):
                best, best_idx = -np.inf, -1
                for r, q in cells:  # row-major order: the first maximum wins ties
                    if 0 <= r < h and 0 <= q < wd and x[n, c, r, q] > best:
                        best, best_idx = x[n, c, r, q], r * wd + q
                y[n, c, i, j], arg[n, c, i, j] = best, best_idx
    return y, arg


def max_pool2d_backward_ref(x, g, kernel_size, stride=None, padding=0):
    """Each window's gradient goes to its (first) maximum; overlapping windows add."""
    _, arg = max_pool2d_forward_ref(x, kernel_size, stride, padding)
    dx = np.zeros(x.shape, dtype=np.float64)
    n_, c_, ho, wo = g.shape
    for n in range(n_):
        for c in range(c_):
            for i in range(ho):
                for j in range(wo):
                    r, q = divmod(int(arg[n, c, i, j]), x.shape[3])
                    dx[n, c, r, q] += g[n, c, i, j]
    return dx


def avg_pool2d_forward_ref(x, kernel_size, stride=None, padding=0):
    """Y = Σ window / (kh·kw), padded zeros counted (PyTorch's count_include_pad=True)."""
    n_, c_, h, wd = x.shape
    ho, wo = _out_hw(h, wd, kernel_size, stride, padding)
    y = np.zeros((n_, c_, ho, wo), dtype=np.float64)
    for n in range(n_):
        for c in range(c_):
            for i, j, cells, size in _windows(h, wd, kernel_size, stride, padding):
                y[n, c, i, j] = sum(x[n, c, r, q] for r, q in cells if 0 <= r < h and 0 <= q < wd) / size
    return y


def avg_pool2d_backward_ref(x_shape, g, kernel_size, stride=None, padding=0):
    """Every input in a window receives G / (kh·kw)."""
    n_, c_, h, wd = x_shape
    dx = np.zeros(x_shape, dtype=np.float64)
    for n in range(n_):
        for c in range(c_):
            for i, j, cells, size in _windows(h, wd, kernel_size, stride, padding):
                for r, q in cells:
                    if 0 <= r < h and 0 <= q < wd:
                        dx[n, c, r, q] += g[n, c, i, j] / size
    return dx
