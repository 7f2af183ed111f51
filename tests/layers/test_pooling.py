"""MaxPool2D / AvgPool2D against the loop references, GlobalAvgPool2D by hand, ties, shapes, errors."""
import numpy as np
import pytest

import cnnframe
from cnnframe.gradcheck import check_layer
from cnnframe.layers import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from cnnframe.ops import _reference as ref


# (kernel_size, stride, padding, per-sample input shape); several have overlapping windows (stride < kernel)
CONFIGS = [
    (2, None, 0, (2, 6, 6)),
    (3, 2, 1, (2, 7, 7)),
    (3, 1, 1, (1, 5, 6)),
    ((2, 3), (1, 2), (1, 1), (2, 5, 7)),
    (2, 1, 0, (3, 4, 3)),
    (3, 3, 0, (1, 8, 7)),  # floor: the last row/column are never read
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ks, s, p, shape", CONFIGS)
def test_maxpool_matches_reference(ks, s, p, shape, dtype):
    rng = np.random.default_rng(0)
    layer = MaxPool2D(ks, s, p, dtype=dtype)
    x = rng.standard_normal((2,) + shape).astype(dtype)
    y = layer.forward(x)
    y_ref, _ = ref.max_pool2d_forward_ref(x.astype(np.float64), ks, s, p)
    np.testing.assert_array_equal(y, y_ref.astype(dtype))
    assert y.shape == (2,) + layer.output_shape(shape)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(dx, ref.max_pool2d_backward_ref(x.astype(np.float64), g.astype(np.float64), ks, s, p), atol=tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("ks, s, p, shape", CONFIGS)
def test_avgpool_matches_reference(ks, s, p, shape, dtype):
    rng = np.random.default_rng(1)
    layer = AvgPool2D(ks, s, p, dtype=dtype)
    x = rng.standard_normal((2,) + shape).astype(dtype)
    y = layer.forward(x)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(y, ref.avg_pool2d_forward_ref(x.astype(np.float64), ks, s, p), atol=tol)
    assert y.shape == (2,) + layer.output_shape(shape)
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(
        layer.backward(g), ref.avg_pool2d_backward_ref(x.shape, g.astype(np.float64), ks, s, p), atol=tol
    )


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize("ks, s, p, shape", CONFIGS)
def test_gradcheck_overlapping_windows(cls, ks, s, p, shape, one_thread):
    report = check_layer(cls(ks, s, p, dtype="float64"), shape, batch_size=2, max_checks=80)
    assert report.passed, str(report)


def test_maxpool_ties_send_gradient_to_first_maximum():
    x = np.array([[[[1.0, 1.0], [1.0, 0.0]]]])
    layer = MaxPool2D(2, dtype="float64")
    assert layer.forward(x)[0, 0, 0, 0] == 1.0
    np.testing.assert_array_equal(layer.backward(np.array([[[[5.0]]]])), [[[[5.0, 0.0], [0.0, 0.0]]]])


def test_maxpool_overlap_adds_gradients_and_padding_never_wins():
    # All negative, padding 1: the -inf padding must never be selected.
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    layer = MaxPool2D(3, stride=1, padding=1, dtype="float64")
    y = layer.forward(x)
    np.testing.assert_array_equal(y[0, 0], [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]])
    dx = layer.backward(np.ones_like(y))
    # x[0,0] = -1 is the max of four windows; each window's gradient lands on its maximum.
    np.testing.assert_array_equal(dx[0, 0], [[4, 2, 0], [2, 1, 0], [0, 0, 0]])


def test_avgpool_counts_padding_in_divisor():
    x = np.ones((1, 1, 2, 2))
    y = AvgPool2D(3, stride=1, padding=1, dtype="float64").forward(x)
    np.testing.assert_allclose(y[0, 0], np.full((2, 2), 4 / 9))  # 4 real ones per window / 9


def test_globalavgpool_by_hand():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    layer = GlobalAvgPool2D(dtype="float64")
    y = layer.forward(x)
    expected = np.array([[x[n, c].sum() / 20 for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(y, expected, rtol=1e-14)
    g = rng.standard_normal((2, 3))
    dx = layer.backward(g)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(dx[n, c], np.full((4, 5), g[n, c] / 20), rtol=1e-14)
    assert layer.output_shape((7, 3, 3)) == (7,)


def test_pool_config_and_defaults():
    m = MaxPool2D(3)
    assert m.stride == (3, 3)
    assert m.get_config() == {"type": "maxpool2d", "dtype": "float32", "kernel_size": 3, "stride": 3, "padding": 0}
    a = AvgPool2D((2, 3), stride=(1, 2), padding=(1, 1), dtype="float64")
    cfg = a.get_config()
    assert cfg == {"type": "avgpool2d", "dtype": "float64", "kernel_size": [2, 3], "stride": [1, 2], "padding": 1}
    assert AvgPool2D.from_config(cfg).get_config() == cfg


def test_pool_errors():
    with pytest.raises(ValueError, match="MaxPool2D: padding .* at most half"):
        MaxPool2D(2, padding=2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        AvgPool2D(0)
    with pytest.raises(ValueError, match=r"MaxPool2D: .*output size would be"):
        MaxPool2D(3).output_shape((1, 2, 2))
    with pytest.raises(ValueError, match=r"MaxPool2D: .*output size would be"):
        MaxPool2D(3).forward(np.zeros((1, 1, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"AvgPool2D: expected input with 4 dimensions \(N, C, H, W\), got shape \(2, 8, 8\)"):
        AvgPool2D(2).forward(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"GlobalAvgPool2D: .*\(2, 8\)"):
        GlobalAvgPool2D().forward(np.zeros((2, 8), np.float32))
    with pytest.raises(TypeError, match="MaxPool2D: input must be a floating-point array, got dtype uint8"):
        MaxPool2D(2).forward(np.zeros((1, 1, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="per-sample input shape \\(C, H, W\\)"):
        MaxPool2D(2).output_shape((4, 4))


@pytest.mark.parametrize("layer", [MaxPool2D(2), MaxPool2D(3, stride=1, padding=1), AvgPool2D(2), AvgPool2D((3, 2)),
                                   GlobalAvgPool2D()])
def test_read_only_input(layer, tmp_path):
    """A memory-mapped (read-only) batch goes through forward and backward like any other."""
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    y = layer.forward(xm)
    np.testing.assert_array_equal(y, layer.forward(x.copy()))
    g = np.ones_like(y)
    g.flags.writeable = False
    assert layer.backward(g).shape == x.shape


def test_window_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"MaxPool2D: pooling output size would be 0x2"):
        MaxPool2D((3, 1)).forward(np.ones((1, 1, 2, 2), np.float32))
