"""Data augmentation on NCHW batches: checks, allocation, threads."""
import numpy as np

from cnnframe import parallel
from cnnframe._ext import augment as _augment
from cnnframe.ops._checks import float_array

# Elements per thread below which another thread costs more than it saves.
GRAIN_ELEMS = 100_000


def shift_images(x, dy, dx):
    """out[n, c, i, j] = x[n, c, i − dy[n], j − dx[n]], 0 where that falls outside the image.

    x: (N, C, H, W) float32/float64; dy, dx: (N,) integers → a new array like x.
    """
    x = float_array(x, "input", 4)
    shifts = []
    for name, d in (("dy", dy), ("dx", dx)):
        d = np.asarray(d)
        if d.shape != (x.shape[0],) or d.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold one integer shift per image, shape ({x.shape[0]},); "
                             f"got {d.dtype} of shape {d.shape}")
        shifts.append(np.ascontiguousarray(d, dtype=np.int64))
    out = np.empty_like(x)
    _augment.shift(x, shifts[0], shifts[1], out, parallel.threads_for(x.size, GRAIN_ELEMS))
    return out
