"""Image shifts against the loop reference: both dtypes, shifts beyond the image, threads, read-only inputs."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
from cnnframe.ops import _reference as ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 2, 4, 7), (3, 3, 9, 2)])
def test_matches_reference(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.integers(-shape[2] - 1, shape[2] + 2, shape[0])  # includes shifts past the edge
    dx = rng.integers(-shape[3] - 1, shape[3] + 2, shape[0])
    out = ops.shift_images(x, dy, dx)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, ref.shift_images_ref(x, dy, dx))


def test_threads_and_read_only_input(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    dy, dx = rng.integers(-2, 3, 9), rng.integers(-2, 3, 9)
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            outs.append(ops.shift_images(xm, dy, dx))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    np.testing.assert_array_equal(outs[0], ref.shift_images_ref(x, dy, dx))


@pytest.mark.parametrize("dy, dx, word", [
    (np.zeros(2, int), np.zeros(3, int), "dx"),
    (np.zeros(2), np.zeros(2, int), "dy"),
    (np.zeros((2, 1), int), np.zeros(2, int), "dy"),
])
def test_bad_shifts(dy, dx, word):
    with pytest.raises(ValueError, match=word):
        ops.shift_images(np.ones((2, 1, 3, 3)), dy, dx)
