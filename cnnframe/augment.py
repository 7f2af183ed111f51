"""Training-time random affine augmentation, and the fixed shifts of test-time augmentation.

``random_affine`` moves each image by its own small rotation, scale and integer shift, sampled
bilinearly with zero fill; ``shift_image_batch`` moves a whole batch by one fixed (dy, dx), as
test-time augmentation does (``cnnframe.tta``).  Both know nothing of models or configs.

Random stream.  ``random_affine`` draws from the generator in a fixed order: dy (N), dx (N) -- the
same draws as ``cnnframe.data.random_shift`` -- then the angles (N) when ``rotate`` > 0, then the
scales (N) when ``scale`` > 0.  So adding rotations to a config keeps every shift of the run, and
with ``rotate = scale = 0`` the trainer keeps using ``random_shift`` itself.
"""
import numpy as np

__all__ = ["random_affine", "affine_sources", "bilinear_sample", "shift_image_batch"]

_GRIDS = {}  # (H, W) → the output pixel centres relative to the image centre, (2, H·W) float64


def _centred_grid(h, w):
    """(2, H·W): row and column of every output pixel minus the image centre ((H−1)/2, (W−1)/2)."""
    grid = _GRIDS.get((h, w))
    if grid is None:
        rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        grid = np.stack([rows.ravel() - (h - 1) / 2.0, cols.ravel() - (w - 1) / 2.0])
        grid.setflags(write=False)
        _GRIDS[(h, w)] = grid
    return grid


def affine_sources(h, w, dy, dx, angle, zoom):
    """Where each output pixel of each image reads its input: (N, 2, H·W) source (row, column).

    Image n is turned by ``angle[n]`` (radians), scaled by ``zoom[n]`` about its centre c and shifted by
    t = (dy[n], dx[n]):  out(p) = in(c + A⁻¹ (p − c − t)),  A = zoom · R(angle),  p = (row, column).
    With angle 0 and zoom 1 the sources are whole pixels: out[i, j] = in[i − dy, j − dx] exactly.
    """
    grid = _centred_grid(h, w)
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    u = grid[0][None, :] - np.asarray(dy, np.float64)[:, None]  # p − c − t, rows
    v = grid[1][None, :] - np.asarray(dx, np.float64)[:, None]  # columns
    # A⁻¹ = R(−θ)/zoom:  row' = (cos θ·u − sin θ·v)/zoom,  column' = (sin θ·u + cos θ·v)/zoom.
    src_r = cos[:, None] * u - sin[:, None] * v + (h - 1) / 2.0
    src_c = sin[:, None] * u + cos[:, None] * v + (w - 1) / 2.0
    return np.stack([src_r, src_c], axis=1)


def bilinear_sample(x, src):
    """Sample x (N, C, H, W) at the source points src (N, 2, H·W), bilinearly, zero outside → (N, C, H, W).

    out = (1−fr)(1−fc)·x[r, c] + (1−fr)fc·x[r, c+1] + fr(1−fc)·x[r+1, c] + fr·fc·x[r+1, c+1] with
    (r, c) = ⌊src⌋ and (fr, fc) the fractions; whole-pixel sources give x itself, bit for bit.
    """
    n, c, h, w = x.shape
    hp, wp = h + 2, w + 2
    # A one-pixel zero border: a corner index clipped to [−1, H] (or [−1, W]) lands on it exactly when it
    # lies outside the image, so no per-corner masks are needed.
    padded = np.zeros((n, c, hp, wp), dtype=x.dtype)
    padded[:, :, 1:-1, 1:-1] = x
    flat = padded.reshape(-1)
    whole = np.floor(src)
    frac = (src - whole).astype(x.dtype)
    fr, fc = frac[:, None, 0], frac[:, None, 1]  # (N, 1, H·W)
    r, col = whole[:, 0].astype(np.intp), whole[:, 1].astype(np.intp)
    rows = [(np.clip(r + k, -1, h) + 1) * wp for k in (0, 1)]
    cols = [np.clip(col + k, -1, w) + 1 for k in (0, 1)]
    base = (np.arange(n * c, dtype=np.intp) * (hp * wp)).reshape(n, c, 1)

    def at(i, j):
        return flat[base + (rows[i] + cols[j])[:, None, :]]

    one = x.dtype.type(1)
    out = (one - fr) * ((one - fc) * at(0, 0) + fc * at(0, 1)) + fr * ((one - fc) * at(1, 0) + fc * at(1, 1))
    return out.reshape(n, c, h, w)


def random_affine(x, rng, shift=0, rotate=0.0, scale=0.0):
    """Each image moved by its own random affine map, bilinear, zero fill: x (N, C, H, W) → a new array.

    Per image: (dy, dx) uniform integers in [−shift, shift]², an angle uniform in [−rotate, rotate]
    degrees, a zoom uniform in [1 − scale, 1 + scale]; drawn in that order, each for the whole batch
    (see the module docstring), then applied as ``affine_sources`` says.
    """
    n, _, h, w = x.shape
    k = int(shift)
    dy = rng.integers(-k, k + 1, size=n) if k > 0 else np.zeros(n, np.int64)
    dx = rng.integers(-k, k + 1, size=n) if k > 0 else np.zeros(n, np.int64)
    angle = np.deg2rad(rng.uniform(-rotate, rotate, size=n)) if rotate > 0 else np.zeros(n)
    zoom = rng.uniform(1.0 - scale, 1.0 + scale, size=n) if scale > 0 else np.ones(n)
    return bilinear_sample(x, affine_sources(h, w, dy, dx, angle, zoom))


def shift_image_batch(x, dy, dx):
    """The whole batch x (N, C, H, W) moved by one (dy, dx): out[..., i, j] = x[..., i − dy, j − dx], 0 outside."""
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out
