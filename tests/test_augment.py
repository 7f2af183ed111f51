"""Random affine augmentation and fixed shifts: loop references, exact special cases, the random stream."""
import math

import numpy as np
import pytest

from cnnframe.augment import affine_sources, bilinear_sample, random_affine, shift_image_batch
from cnnframe.data import random_shift


def affine_reference(x, dy, dx, angle, zoom):
    """out(p) = in(c + A⁻¹(p − c − t)), A = zoom·R(angle), bilinear, zero outside: one pixel at a time."""
    n, ch, h, w = x.shape
    out = np.zeros(x.shape, dtype=np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    for s in range(n):
        cos, sin = math.cos(angle[s]), math.sin(angle[s])
        for i in range(h):
            for j in range(w):
                u, v = i - cy - dy[s], j - cx - dx[s]
                sr = (cos * u - sin * v) / zoom[s] + cy
                sc = (sin * u + cos * v) / zoom[s] + cx
                for r in (math.floor(sr), math.floor(sr) + 1):
                    for c in (math.floor(sc), math.floor(sc) + 1):
                        if 0 <= r < h and 0 <= c < w:
                            out[s, :, i, j] += (1 - abs(sr - r)) * (1 - abs(sc - c)) * x[s, :, r, c]
    return out


def shift_reference(x, dy, dx):
    out = np.zeros_like(x)
    h, w = x.shape[2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[:, :, i, j] = x[:, :, i - dy, j - dx]
    return out


def test_random_affine_matches_loop_reference_and_draws_in_the_documented_order():
    x = np.random.default_rng(0).standard_normal((12, 2, 6, 7)).astype(np.float32)
    before = x.copy()
    out = random_affine(x, np.random.default_rng(4), shift=1, rotate=15.0, scale=0.2)
    rng = np.random.default_rng(4)  # dy, dx, then angles, then zooms
    dy, dx = rng.integers(-1, 2, size=12), rng.integers(-1, 2, size=12)
    angle = np.deg2rad(rng.uniform(-15.0, 15.0, size=12))
    zoom = rng.uniform(0.8, 1.2, size=12)
    np.testing.assert_allclose(out, affine_reference(x, dy, dx, angle, zoom), rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32 and np.array_equal(x, before)
    assert np.all(np.abs(angle) > 0) and not np.allclose(zoom, 1)


def test_without_rotation_or_zoom_the_shifts_are_random_shifts_own():
    x = np.random.default_rng(1).standard_normal((30, 1, 8, 8))
    np.testing.assert_array_equal(random_affine(x, np.random.default_rng(9), shift=2),
                                  random_shift(x, 2, np.random.default_rng(9)))
    # adding rotations keeps every shift: the shifts are drawn first
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    random_affine(x, rng_a, shift=2, rotate=10.0)
    random_shift(x, 2, rng_b)
    rng_b.uniform(size=30)  # the angles
    assert rng_a.integers(1 << 30) == rng_b.integers(1 << 30)


def test_quarter_turn_is_exact_and_zoom_in_keeps_a_constant_image():
    x = np.random.default_rng(2).standard_normal((3, 1, 5, 5))
    src = affine_sources(5, 5, np.zeros(3), np.zeros(3), np.full(3, np.pi / 2), np.ones(3))
    np.testing.assert_allclose(bilinear_sample(x, src), np.rot90(x, -1, axes=(2, 3)), atol=1e-12)
    ones = np.ones((2, 1, 8, 8), np.float32)
    zoomed = bilinear_sample(ones, affine_sources(8, 8, np.zeros(2), np.zeros(2), np.zeros(2), np.full(2, 1.5)))
    np.testing.assert_allclose(zoomed, 1.0, rtol=1e-6)
    shrunk = bilinear_sample(ones, affine_sources(8, 8, np.zeros(2), np.zeros(2), np.zeros(2), np.full(2, 0.5)))
    assert shrunk[0, 0, 0, 0] == 0 and shrunk[0, 0, 4, 4] == 1  # borders fall outside the input: zero fill


@pytest.mark.parametrize("dy,dx", [(0, 0), (1, -1), (-2, 3), (0, 9)])
def test_shift_image_batch_matches_loop_reference(dy, dx):
    x = np.random.default_rng(3).standard_normal((4, 2, 6, 7)).astype(np.float32)
    out = shift_image_batch(x, dy, dx)
    np.testing.assert_array_equal(out, shift_reference(x, dy, dx))
    assert out.dtype == x.dtype and out is not x
