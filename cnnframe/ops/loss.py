"""Softmax cross-entropy in one pass over the logits: loss, probabilities and gradient (docs/math.md,
Softmax cross-entropy).

With label smoothing ε the target row is t = (1 − ε)·onehot(y) + ε/classes:

    L = −(1/N) Σ_n Σ_c t[n,c]·log softmax(z_n)[c],      dL/dz = (softmax(z) − t) / N

Each row is computed in double precision with its maximum subtracted first.
"""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import loss as _loss
from cnnframe.ops._checks import float_array

# Logits per thread below which another thread costs more than it saves.
GRAIN_ELEMS = 100_000


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Returns (mean loss as a float, softmax(z), dL/dz) for logits (N, classes) and integer labels (N,)."""
    if getattr(logits, "ndim", None) != 2:
        raise ValueError(f"logits must have shape (N, classes), got shape {np.shape(logits)}")
    z = float_array(logits, "logits", 2)
    n, classes = z.shape
    if n == 0:
        raise ValueError("empty batch (N = 0)")
    if classes == 0:
        raise ValueError(f"logits have no classes (shape {z.shape})")
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match logits of shape {z.shape}, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"label {int(y[i])} at index {i} is out of range for {classes} classes "
                         f"(labels must be in [0, {classes}))")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    y = np.ascontiguousarray(y, dtype=np.int64)
    probs = np.empty_like(z)
    grad = np.empty_like(z)
    losses = np.empty(n, dtype=np.float64)
    _loss.softmax_cross_entropy(z, y, float(label_smoothing), probs, grad, losses,
                                parallel.threads_for(z.size, GRAIN_ELEMS))
    return float(losses.mean()), probs, grad
