"""A plain NumPy im2col convolution: the baseline the Cython kernels are measured against."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _cols(x, kh, kw, s, p, d):
    """(N, C, kh, kw, Ho, Wo) view of the padded input: the im2col matrix before reshaping."""
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(xp, ((kh - 1) * d + 1, (kw - 1) * d + 1), axis=(2, 3))
    win = win[:, :, ::s, ::s, ::d, ::d]  # (N, C, Ho, Wo, kh, kw)
    return win.transpose(0, 1, 4, 5, 2, 3)


def forward(x, w, b, s=1, p=0, d=1):
    n, c = x.shape[:2]
    f, _, kh, kw = w.shape
    cols = _cols(x, kh, kw, s, p, d)
    ho, wo = cols.shape[-2:]
    col = np.ascontiguousarray(cols).reshape(n, c * kh * kw, ho * wo)
    y = np.matmul(w.reshape(f, -1), col)  # (N, F, P)
    y += b[None, :, None]
    return y.reshape(n, f, ho, wo)


def backward(x, w, g, s=1, p=0, d=1):
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    ho, wo = g.shape[2:]
    col = np.ascontiguousarray(_cols(x, kh, kw, s, p, d)).reshape(n, c * kh * kw, ho * wo)
    g2 = g.reshape(n, f, ho * wo)
    dw = np.einsum("nfp,nkp->fk", g2, col, optimize=True).reshape(w.shape)
    db = g2.sum(axis=(0, 2))
    dcol = np.matmul(w.reshape(f, -1).T, g2).reshape(n, c, kh, kw, ho, wo)
    dxp = np.zeros((n, c, h + 2 * p, wd + 2 * p), dtype=x.dtype)
    for m in range(kh):
        for l in range(kw):
            dxp[:, :, m * d : m * d + s * (ho - 1) + 1 : s, l * d : l * d + s * (wo - 1) + 1 : s] += dcol[:, :, m, l]
    return dxp[:, :, p : p + h, p : p + wd], dw, db
