"""2-D convolution (cross-correlation) on NCHW batches: shape checks, allocation, thread choice.

Equation numbers refer to docs/math.md.  The compiled kernels in ``cnnframe._ext.conv`` trust their
arguments, so every check happens here first.
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import conv as _conv
from cnnframe.checks import pair
from cnnframe.ops._checks import fits_int32, float_array, out_size, positive_int, same_dtype

# Multiply-adds per thread below which another thread costs more than it saves.
GRAIN_FLOPS = 500_000


def _threads(w_shape, out_shape):
    n, k, ho, wo = out_shape
    flops = 2 * n * k * ho * wo * w_shape[1] * w_shape[2] * w_shape[3]
    return parallel.threads_for(flops, GRAIN_FLOPS)


def conv2d_output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Output shape (N, K, Ho, Wo) of a convolution; raises ValueError when it would be empty.

    ``input_shape`` is (N, C, H, W); ``weight_shape`` is (K, C/groups, kh, kw).
    Ho = floor((H + 2p - d(kh-1) - 1) / s) + 1, and the same for Wo (docs/math.md, Notation).
    """
    sh, sw = pair(stride, "stride", 1)
    ph, pw = pair(padding, "padding", 0)
    dh, dw = pair(dilation, "dilation", 1)
    groups = positive_int(groups, "groups")
    if len(input_shape) != 4:
        raise ValueError(f"input must have 4 dimensions (N, C, H, W), got shape {tuple(input_shape)}")
    if len(weight_shape) != 4:
        raise ValueError(f"weight must have 4 dimensions (K, C/groups, kh, kw), got shape {tuple(weight_shape)}")
    n, c, h, w = input_shape
    k, cw, kh, kw = weight_shape
    if min(k, cw, kh, kw) < 1:
        raise ValueError(f"weight shape {tuple(weight_shape)} has an empty dimension")
    if c % groups or k % groups:
        raise ValueError(
            f"groups={groups} must divide both the input channels ({c}, input shape {tuple(input_shape)}) "
            f"and the output channels ({k}, weight shape {tuple(weight_shape)})"
        )
    if c != cw * groups:
        expect = "" if groups == 1 else f" (= {c} input channels / groups {groups})"
        raise ValueError(
            f"channel mismatch: input has {c} channels (shape {tuple(input_shape)}) but weight shape "
            f"{tuple(weight_shape)} expects {cw * groups}; weight.shape[1] must be {c // groups}{expect}"
        )
    ho = out_size(h, kh, sh, ph, dh)
    wo = out_size(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"output size would be {ho}x{wo} (< 1): input {h}x{w}, kernel {kh}x{kw}, stride {(sh, sw)}, "
            f"padding {(ph, pw)}, dilation {(dh, dw)}; the dilated kernel must fit in the padded input"
        )
    return (n, k, ho, wo)


def _prepare(x, weight, bias, stride, padding, dilation, groups):
    x = float_array(x, "input", 4)
    weight = float_array(weight, "weight", 4)
    if bias is not None:
        bias = float_array(bias, "bias", 1)
    same_dtype([("input", x), ("weight", weight), ("bias", bias)])
    s, p, d = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    out_shape = conv2d_output_shape(x.shape, weight.shape, s, p, d, groups)
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight {weight.shape}, got {bias.shape}")
    n, c, h, w = x.shape
    k, _, kh, kw = weight.shape
    fits_int32("conv2d", c * kh * kw, out_shape[2] * out_shape[3] * n, k, h * w)
    return x, weight, bias, s, p, d, out_shape


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Y = X ⋆ W + b, eq. (1):  Y[n,k,i,j] = b[k] + Σ_c Σ_m Σ_l Xp[n,c,i·s+m·d, j·s+l·d] · W[k,c,m,l];
    with ``groups`` = g, eq. (5): output channel k sees only the C/g input channels of its group.

    x: (N, C, H, W), weight: (K, C/g, kh, kw), bias: (K,) or None → (N, K, Ho, Wo), same dtype.
    Inputs may be read-only.  Computed by the kernels of ``cnnframe._ext.conv`` (im2col or
    implicit im2col + register-blocked products; depthwise loops when g = C = K).
    """
    x, weight, bias, s, p, d, out_shape = _prepare(x, weight, bias, stride, padding, dilation, groups)
    y = np.empty(out_shape, dtype=x.dtype)
    b = bias if bias is not None else np.zeros(weight.shape[0], dtype=x.dtype)
    parallel.pin_kernel_blas()
    _conv.forward(x, weight, b, y, s[0], s[1], p[0], p[1], d[0], d[1], groups, _threads(weight.shape, out_shape))
    return y


def conv2d_backward(x, weight, grad_out, stride=1, padding=0, dilation=1, groups=1, need_input_grad=True,
                    method="col2im"):
    """Gradients of eq. (1) (eq. (5) with ``groups``): returns (dX or None, dW, db).

    dW[k,c,m,l] = Σ_n Σ_i Σ_j G[n,k,i,j] · Xp[n,c,i·s+m·d, j·s+l·d]        eq. (2)
    db[k]       = Σ_n Σ_i Σ_j G[n,k,i,j]                                   eq. (3)
    dX          = full convolution of G with the 180°-rotated kernel          eq. (4)

    ``method="col2im"`` (default, fastest) lets the kernel choose: it forms dcol = G·Wr and
    scatter-adds it back into the image positions each column came from — the same sums of products
    as eq. (4), with no products of the zeros eq. (4) inserts for stride > 1 — except for float32
    stride-1 layers, where it computes eq. (4) itself as a stride-1 correlation of G padded by
    d(k-1) - p with the rotated kernel, reading G in place (see ``_ext/conv.pyx``).
    ``method="full"`` computes eq. (4) literally in Python with the forward kernel: dilate G by the
    stride, pad it by d(k-1), correlate with the rotated, channel-swapped kernel, crop the padding.
    All agree to rounding (tests/ops/test_conv.py).
    """
    x, weight, _, s, p, d, out_shape = _prepare(x, weight, None, stride, padding, dilation, groups)
    grad_out = float_array(grad_out, "grad_out", 4)
    same_dtype([("input", x), ("grad_out", grad_out)])
    if grad_out.shape != out_shape:
        raise ValueError(
            f"grad_out has shape {grad_out.shape} but the convolution of input {x.shape} with weight "
            f"{weight.shape} produces {out_shape}"
        )
    if method not in ("col2im", "full"):
        raise ValueError(f"method must be 'col2im' or 'full', got {method!r}")
    dw = np.zeros(weight.shape, dtype=x.dtype)
    db = np.zeros(weight.shape[0], dtype=x.dtype)
    # The kernel writes every element of dX.
    dx = np.empty(x.shape, dtype=x.dtype) if need_input_grad and method == "col2im" else None
    parallel.pin_kernel_blas()
    _conv.backward(x, weight, grad_out, dx, dw, db, s[0], s[1], p[0], p[1], d[0], d[1], groups,
                   _threads(weight.shape, out_shape))
    if need_input_grad and method == "full":
        dx = conv2d_input_grad_full(grad_out, weight, x.shape, s, p, d, groups)
    return dx, dw, db


def conv2d_input_grad_full(grad_out, weight, input_shape, stride=1, padding=0, dilation=1, groups=1):
    """dX by eq. (4) as written: a *full* convolution of G with the 180°-rotated kernel.

    1. dilate G by the stride (s-1 zeros between entries);
    2. pad it by d(k-1) on each side, plus the rows/columns of Xp no window read (they get zero);
    3. correlate with W rotated by 180° with K and C swapped (within each group), dilation d,
       stride 1 → dXp;
    4. crop the padding p from each side → dX.
    """
    n, c, h, w = input_shape
    k, cg, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw_) = pair(stride, "stride", 1), pair(padding, "padding", 0), pair(dilation, "dilation", 1)
    _, _, ho, wo = grad_out.shape
    hp, wp = h + 2 * ph, w + 2 * pw
    top, left = dh * (kh - 1), dw_ * (kw - 1)
    gpad = np.zeros((n, k, hp + top, wp + left), dtype=grad_out.dtype)
    gpad[:, :, top : top + (ho - 1) * sh + 1 : sh, left : left + (wo - 1) * sw + 1 : sw] = grad_out
    # w_rot[grp·Cg + c, k, m, l] = W[grp·Kg + k, c, kh-1-m, kw-1-l]
    w_rot = weight.reshape(groups, k // groups, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    w_rot = np.ascontiguousarray(w_rot.reshape(c, k // groups, kh, kw))
    dxp = conv2d_forward(gpad, w_rot, None, stride=1, padding=0, dilation=(dh, dw_), groups=groups)
    return np.ascontiguousarray(dxp[:, :, ph : ph + h, pw : pw + w])
