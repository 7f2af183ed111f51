"""Conv2D against the loop reference of math.md eq. (1)-(4), shape inference, init and input errors."""
import math

import numpy as np
import pytest

import cnnframe
from cnnframe import LAYERS
from cnnframe.gradcheck import check_layer
from cnnframe.layers import Conv2D
from cnnframe.ops import _reference as ref


# (out_channels, kernel_size, stride, padding, dilation, bias, per-sample input shape)
CONFIGS = [
    (4, 3, 1, 0, 1, True, (3, 6, 6)),
    (3, 3, 2, 1, 1, True, (2, 7, 8)),
    (2, (3, 2), (2, 1), (1, 0), (1, 2), True, (3, 7, 8)),
    (3, 2, 3, 2, 2, False, (2, 9, 7)),  # stride leaves the last rows of Xp unread
    (2, (1, 4), 1, (0, 2), 1, True, (1, 3, 6)),
    (5, 1, 1, 0, 1, True, (4, 3, 2)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k, ks, s, p, d, bias, shape", CONFIGS)
def test_matches_loop_reference(k, ks, s, p, d, bias, shape, dtype):
    rng = np.random.default_rng(0)
    layer = Conv2D(k, ks, stride=s, padding=p, dilation=d, bias=bias, seed=1, dtype=dtype)
    x = rng.standard_normal((2,) + shape).astype(dtype)
    y = layer.forward(x)
    w = layer.parameters()["weight"].data.astype(np.float64)
    b = layer.parameters()["bias"].data.astype(np.float64) if bias else None
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, ref.conv2d_forward_ref(x.astype(np.float64), w, b, s, p, d), **tol)
    assert y.dtype == np.dtype(dtype)
    assert y.shape == (2,) + layer.output_shape(shape)

    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x.astype(np.float64), w, g.astype(np.float64), s, p, d)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(layer.parameters()["weight"].grad, dw_ref, **tol)
    if bias:
        np.testing.assert_allclose(layer.parameters()["bias"].grad, db_ref, **tol)
    else:
        assert list(layer.parameters()) == ["weight"]


@pytest.mark.parametrize("k, ks, s, p, d, bias, shape", CONFIGS)
def test_gradcheck_all_configs(k, ks, s, p, d, bias, shape, one_thread):
    layer = Conv2D(k, ks, stride=s, padding=p, dilation=d, bias=bias, seed=2, dtype="float64")
    report = check_layer(layer, shape, batch_size=2, max_checks=60)
    assert report.passed, str(report)
    assert set(report.tensors) == ({"input", "weight", "bias"} if bias else {"input", "weight"})


def test_shapes_and_parameters_pytorch_layout():
    layer = Conv2D(8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    assert not layer.parameters()  # in_channels unknown: nothing allocated yet
    assert layer.output_shape((3, 10, 11)) == (8, 5, 7)  # pure: still nothing allocated
    assert not layer.parameters()
    layer.build((3, 10, 11))
    assert layer.in_channels == 3
    w, b = layer.parameters()["weight"], layer.parameters()["bias"]
    assert w.shape == (8, 3, 3, 5) and b.shape == (8,)
    assert w.dtype == np.float32 and w.grad.shape == w.shape
    assert w.weight_decay and not b.weight_decay
    # in_channels given: parameters exist right away; other H x W still work (fully convolutional)
    layer = Conv2D(4, 3, in_channels=2, padding=1)
    assert layer.parameters()["weight"].shape == (4, 2, 3, 3)
    for hw in [(5, 5), (8, 3)]:
        assert layer.forward(np.zeros((1, 2) + hw, np.float32)).shape == (1, 4) + hw


def test_init_is_pytorch_default_and_seeded():
    layer = Conv2D(64, 3, in_channels=16, seed=3)
    bound = 1 / math.sqrt(16 * 9)
    w = layer.parameters()["weight"].data
    b = layer.parameters()["bias"].data
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound  # uniform: std = bound/√3
    assert np.abs(b).max() <= bound
    same = Conv2D(64, 3, in_channels=16, seed=3)
    np.testing.assert_array_equal(same.parameters()["weight"].data, w)
    other = Conv2D(64, 3, in_channels=16, seed=4)
    assert not np.array_equal(other.parameters()["weight"].data, w)
    # a float64 layer with the same seed holds the same values before rounding
    w64 = Conv2D(64, 3, in_channels=16, seed=3, dtype="float64").parameters()["weight"].data
    np.testing.assert_array_equal(w64.astype(np.float32), w)
    # lazily built layers draw from the seed at build time
    lazy = Conv2D(64, 3, seed=3)
    lazy.build((16, 5, 5))
    np.testing.assert_array_equal(lazy.parameters()["weight"].data, w)


def test_reset_parameters_with_generator():
    a = Conv2D(4, 3, in_channels=2)
    b = Conv2D(4, 3, in_channels=2)
    a.reset_parameters(np.random.default_rng(11))
    b.reset_parameters(np.random.default_rng(11))
    np.testing.assert_array_equal(a.parameters()["weight"].data, b.parameters()["weight"].data)
    np.testing.assert_array_equal(a.parameters()["bias"].data, b.parameters()["bias"].data)
    # before build, the generator is kept and used when the sizes become known
    c = Conv2D(4, 3)
    c.reset_parameters(np.random.default_rng(11))
    c.build((2, 4, 4))
    np.testing.assert_array_equal(c.parameters()["weight"].data, a.parameters()["weight"].data)


def test_need_input_grad_false_skips_dx_but_keeps_param_grads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 5, 5))
    a = Conv2D(3, 3, seed=0, dtype="float64")
    b = Conv2D(3, 3, seed=0, dtype="float64")
    b.need_input_grad = False
    g = rng.standard_normal((2, 3, 3, 3))
    a.forward(x), b.forward(x)
    assert a.backward(g) is not None
    assert b.backward(g) is None
    np.testing.assert_allclose(b.parameters()["weight"].grad, a.parameters()["weight"].grad, rtol=1e-13)


def test_config_round_trip_keeps_inferred_channels():
    layer = Conv2D(6, (3, 1), stride=2, padding=(1, 0), bias=False, seed=5, dtype="float64")
    layer.build((4, 9, 9))
    cfg = layer.get_config()
    assert cfg == {
        "type": "conv2d", "dtype": "float64", "out_channels": 6, "kernel_size": [3, 1], "in_channels": 4,
        "stride": 2, "padding": [1, 0], "dilation": 1, "groups": 1, "bias": False, "seed": 5,
    }
    again = LAYERS.get("conv2d").from_config(cfg)
    assert again.get_config() == cfg
    assert again.parameters()["weight"].shape == (6, 4, 3, 1)


def test_float64_input_to_float32_layer_is_cast():
    layer = Conv2D(2, 3, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 1, 5, 5))
    y = layer.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, layer.forward(x.astype(np.float32)))
    assert layer.backward(np.ones_like(y, dtype=np.float64)).dtype == np.float32


@pytest.mark.parametrize(
    "x, exc, words",
    [
        (np.zeros((2, 3, 6), np.float32), ValueError, ["Conv2D", "(N, C, H, W)", "(2, 3, 6)"]),
        (np.zeros((2, 4, 6, 6), np.float32), ValueError, ["Conv2D", "4 channels", "3 channels"]),
        (np.zeros((2, 3, 6, 6), np.int64), TypeError, ["Conv2D", "int64", "astype"]),
        (np.zeros((2, 3, 2, 2), np.float32), ValueError, ["Conv2D", "output size", "kernel 3x3"]),
        ([[1.0]], TypeError, ["Conv2D", "numpy array"]),
    ],
)
def test_bad_inputs_are_named(x, exc, words):
    layer = Conv2D(2, 3, in_channels=3)
    with pytest.raises(exc) as info:
        layer.forward(x)
    for w in words:
        assert w in str(info.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="out_channels"):
        Conv2D(0, 3)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        Conv2D(2, 3, stride=0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        Conv2D(2, 3, padding=-1)
    with pytest.raises(TypeError, match="kernel_size"):
        Conv2D(2, (3, 3, 3))
    with pytest.raises(TypeError, match="dtype"):
        Conv2D(2, 3, dtype="int32")
    with pytest.raises(TypeError):  # PyTorch's positional Conv2d(in, out, k) is not silently misread
        Conv2D(1, 16, 3)
    with pytest.raises(ValueError, match="in_channels is 3"):
        Conv2D(2, 3, in_channels=3).output_shape((4, 8, 8))


def test_backward_errors():
    layer = Conv2D(2, 3, in_channels=1)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 2, 3, 3), np.float32))
    layer.forward(np.zeros((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 2, 4, 4\).*\(1, 2, 3, 3\)"):
        layer.backward(np.zeros((1, 2, 4, 4), np.float32))


# (out_channels, groups, kernel_size, stride, padding, per-sample input shape)
GROUPED = [
    (6, 3, 3, 1, 1, (3, 6, 5)),  # depthwise with channel multiplier 2
    (4, 4, (3, 2), (2, 1), (1, 0), (4, 7, 6)),  # depthwise
    (6, 2, 2, 1, 0, (4, 5, 5)),  # two groups of 2 -> 3
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("k, grp, ks, s, p, shape", GROUPED)
def test_grouped_matches_loop_reference(k, grp, ks, s, p, shape, dtype):
    rng = np.random.default_rng(1)
    layer = Conv2D(k, ks, stride=s, padding=p, groups=grp, seed=3, dtype=dtype)
    x = rng.standard_normal((2,) + shape).astype(dtype)
    y = layer.forward(x)
    w = layer.parameters()["weight"].data.astype(np.float64)
    b = layer.parameters()["bias"].data.astype(np.float64)
    assert w.shape == (k, shape[0] // grp) + layer.kernel_size
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, ref.conv2d_forward_ref(x.astype(np.float64), w, b, s, p, 1, grp), **tol)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(g)
    dx_ref, dw_ref, db_ref = ref.conv2d_backward_ref(x.astype(np.float64), w, g.astype(np.float64), s, p, 1, grp)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    np.testing.assert_allclose(layer.parameters()["weight"].grad, dw_ref, **tol)
    np.testing.assert_allclose(layer.parameters()["bias"].grad, db_ref, **tol)


@pytest.mark.parametrize("k, grp, ks, s, p, shape", GROUPED)
def test_grouped_gradcheck(k, grp, ks, s, p, shape, one_thread):
    layer = Conv2D(k, ks, stride=s, padding=p, groups=grp, seed=4, dtype="float64")
    report = check_layer(layer, shape, batch_size=2, max_checks=60)
    assert report.passed, str(report)


def test_grouped_config_round_trip_and_init():
    layer = Conv2D(8, 3, in_channels=4, groups=4, padding=1, seed=6)
    cfg = layer.get_config()
    assert cfg["groups"] == 4 and cfg["in_channels"] == 4
    again = LAYERS.get("conv2d").from_config(cfg)
    assert again.get_config() == cfg
    assert again.parameters()["weight"].shape == (8, 1, 3, 3)
    np.testing.assert_array_equal(again.parameters()["weight"].data, layer.parameters()["weight"].data)
    # fan_in counts one group's input channels, as in PyTorch: bound 1/sqrt(1·3·3)
    assert np.abs(layer.parameters()["weight"].data).max() <= 1 / 3
    assert np.abs(layer.parameters()["weight"].data).max() > 0.25


def test_bad_groups_are_named():
    with pytest.raises(ValueError, match="Conv2D: out_channels \\(6\\) must be a multiple of groups \\(4\\)"):
        Conv2D(6, 3, groups=4)
    with pytest.raises(ValueError, match="Conv2D: in_channels \\(6\\) must be a multiple of groups \\(4\\)"):
        Conv2D(8, 3, in_channels=6, groups=4)
    with pytest.raises(ValueError, match="groups must be a positive integer"):
        Conv2D(8, 3, groups=0)
    layer = Conv2D(8, 3, groups=4)
    with pytest.raises(ValueError, match="Conv2D: input has 6 channels, not a multiple of groups \\(4\\)"):
        layer.forward(np.zeros((1, 6, 5, 5), np.float32))


def test_read_only_input(tmp_path):
    """A memory-mapped (read-only) batch goes through forward and backward unchanged."""
    rng = np.random.default_rng(7)
    np.save(tmp_path / "x.npy", rng.standard_normal((2, 4, 6, 6)).astype(np.float32))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    layer = Conv2D(4, 3, padding=1, groups=2, seed=8)
    y = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    fresh = Conv2D(4, 3, padding=1, groups=2, seed=8)
    np.testing.assert_array_equal(y, fresh.forward(np.array(x)))
    np.testing.assert_array_equal(dx, fresh.backward(np.ones_like(y)))
