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


def global_avg_pool2d_ref(x):
    """y[n, c] = (1/(H·W)) Σ_h Σ_w x[n, c, h, w]."""
    n_, c_, h, wd = x.shape
    y = np.zeros((n_, c_), dtype=np.float64)
    for n in range(n_):
        for c in range(c_):
            y[n, c] = sum(float(x[n, c, r, q]) for r in range(h) for q in range(wd)) / (h * wd)
    return y


def _channel_values(x, c):
    """The m = N·(H·W) values of channel c of x (N, C, ...) as float64."""
    return [float(v) for n in range(x.shape[0]) for v in np.ravel(x[n, c])]


def batch_norm_forward_ref(x, gamma, beta, eps, relu=False):
    """Training-mode BatchNorm over axis 1: μ = (1/m) Σ x, σ² = (1/m) Σ (x − μ)², x̂ = (x − μ)/√(σ² + eps),
    y = γ x̂ + β (then max(y, 0) with ``relu``).  Returns (y, μ, σ²)."""
    y = np.zeros(x.shape, dtype=np.float64)
    mean, var = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        vals = _channel_values(x, c)
        mean[c] = sum(vals) / len(vals)
        var[c] = sum((v - mean[c]) ** 2 for v in vals) / len(vals)
        inv = 1.0 / np.sqrt(var[c] + eps)
        for n in range(x.shape[0]):
            for idx in np.ndindex(x.shape[2:]):
                v = float(gamma[c]) * (float(x[(n, c) + idx]) - mean[c]) * inv + float(beta[c])
                y[(n, c) + idx] = max(v, 0.0) if relu else v
    return y, mean, var


def batch_norm_backward_ref(x, g, gamma, beta, eps, relu=False):
    """Training-mode BatchNorm gradients (with ``relu``, g is the gradient of max(y, 0): G = g·[y > 0]):
    dγ = Σ G x̂, dβ = Σ G, dx = γ/√(σ² + eps) · (G − mean(G) − x̂ · mean(G x̂)) per channel."""
    y, mean, var = batch_norm_forward_ref(x, gamma, beta, eps)
    G = np.where(y > 0, g, 0.0) if relu else np.asarray(g, dtype=np.float64)
    dx = np.zeros(x.shape, dtype=np.float64)
    dgamma, dbeta = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        inv = 1.0 / np.sqrt(var[c] + eps)
        cells = [(n, c) + idx for n in range(x.shape[0]) for idx in np.ndindex(x.shape[2:])]
        xhat = {k: (float(x[k]) - mean[c]) * inv for k in cells}
        dbeta[c] = sum(float(G[k]) for k in cells)
        dgamma[c] = sum(float(G[k]) * xhat[k] for k in cells)
        m = len(cells)
        for k in cells:
            dx[k] = float(gamma[c]) * inv * (float(G[k]) - dbeta[c] / m - xhat[k] * dgamma[c] / m)
    return dx, dgamma, dbeta


def dense_ref(x, w, b=None):
    """y[n, o] = b[o] + Σ_i x[n, i] · W[o, i]."""
    y = np.zeros((x.shape[0], w.shape[0]), dtype=np.float64)
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            y[n, o] = (0.0 if b is None else float(b[o])) + sum(float(x[n, i]) * float(w[o, i]) for i in range(x.shape[1]))
    return y


def dense_backward_ref(x, w, g):
    """dW[o, i] = Σ_n G[n, o] x[n, i],  db[o] = Σ_n G[n, o],  dx[n, i] = Σ_o G[n, o] W[o, i]."""
    N, I, O = x.shape[0], x.shape[1], w.shape[0]
    dw = np.array([[sum(float(g[n, o]) * float(x[n, i]) for n in range(N)) for i in range(I)] for o in range(O)])
    db = np.array([sum(float(g[n, o]) for n in range(N)) for o in range(O)])
    dx = np.array([[sum(float(g[n, o]) * float(w[o, i]) for o in range(O)) for i in range(I)] for n in range(N)])
    return dx.reshape(x.shape), dw.reshape(w.shape), db


def softmax_cross_entropy_ref(z, y, smoothing=0.0):
    """Mean of −Σ_c t[n,c] log softmax(z_n)[c] with t = (1 − ε) onehot + ε/classes; softmax; (softmax − t)/N."""
    N, K = z.shape
    probs, grad, total = np.zeros((N, K)), np.zeros((N, K)), 0.0
    for n in range(N):
        row = [float(v) for v in z[n]]
        mx = max(row)
        lse = mx + np.log(sum(np.exp(v - mx) for v in row))
        for c in range(K):
            t = (1.0 - smoothing) * (c == y[n]) + smoothing / K
            total -= t * (row[c] - lse)
            probs[n, c] = np.exp(row[c] - lse)
            grad[n, c] = (probs[n, c] - t) / N
    return total / N, probs, grad


def shift_images_ref(x, dy, dx):
    """out[n, c, i, j] = x[n, c, i − dy[n], j − dx[n]], 0 outside the image."""
    out = np.zeros_like(x)
    n_, c_, h, wd = x.shape
    for n in range(n_):
        for c in range(c_):
            for i in range(h):
                for j in range(wd):
                    r, q = i - dy[n], j - dx[n]
                    if 0 <= r < h and 0 <= q < wd:
                        out[n, c, i, j] = x[n, c, r, q]
    return out
