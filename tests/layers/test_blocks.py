"""Residual and Concat blocks: the contract battery, agreement with the math of docs/math.md (5)–(8) composed
by hand from the children, float64 finite differences at random parameters, nested names and state,
modes and seeds reaching every child, configs, shape errors, and PyTorch."""
import copy
import json

import numpy as np
import pytest

import cnnframe
from cnnframe import layers as L
from cnnframe.gradcheck import check_layer, kink_free_input
from cnnframe.layers.blocks import build_children
from cnnframe.testing import check_layer_contract


def _bottleneck(d, c=4, stride=1, seed=0):
    """conv-bn-relu-conv-bn body; a projection shortcut when the stride or channels change."""
    body = [L.Conv2D(c, 3, stride=stride, padding=1, seed=seed, dtype=d), L.BatchNorm2D(dtype=d), L.ReLU(dtype=d),
            L.Conv2D(c, 3, padding=1, seed=seed + 1, dtype=d), L.BatchNorm2D(dtype=d)]
    return body


# (id, factory(dtype), per-sample input shape)
CASES = [
    ("residual_identity", lambda d: L.Residual([L.Conv2D(3, 3, padding=1, seed=0, dtype=d), L.Tanh(dtype=d),
                                                L.Conv2D(3, 3, padding=1, seed=1, dtype=d)], dtype=d), (3, 5, 5)),
    ("residual_identity_relu", lambda d: L.Residual([L.Conv2D(3, 3, padding=1, seed=2, dtype=d)], activation="relu",
                                                    dtype=d), (3, 5, 4)),
    ("residual_projection_bn", lambda d: L.Residual(
        _bottleneck(d, c=4, stride=2), shortcut=[L.Conv2D(4, 1, stride=2, seed=3, dtype=d), L.BatchNorm2D(dtype=d)],
        activation="relu", dtype=d), (3, 6, 6)),
    ("residual_features", lambda d: L.Residual([L.Dense(5, seed=4, dtype=d), L.Tanh(dtype=d)],
                                               shortcut=[L.Dense(5, seed=5, dtype=d)], dtype=d), (7,)),
    ("residual_dropout", lambda d: L.Residual([L.Conv2D(2, 3, padding=1, seed=6, dtype=d), L.Dropout(0.3, dtype=d)],
                                              shortcut=[L.Dropout(0.5, dtype=d)], dtype=d), (2, 4, 4)),
    ("concat_2", lambda d: L.Concat([[L.Conv2D(2, 1, seed=0, dtype=d)],
                                     [L.Conv2D(3, 3, padding=1, seed=1, dtype=d), L.ReLU(dtype=d)]], dtype=d),
     (3, 5, 5)),
    ("concat_3_pool_identity", lambda d: L.Concat([[L.Conv2D(2, 1, seed=2, dtype=d)], [],
                                                   [L.MaxPool2D(3, stride=1, padding=1, dtype=d),
                                                    L.Conv2D(2, 1, seed=3, dtype=d)]], dtype=d), (3, 5, 6)),
    ("concat_strided", lambda d: L.Concat([[L.Conv2D(2, 3, stride=2, padding=1, seed=4, dtype=d)],
                                           [L.AvgPool2D(2, dtype=d)]], dtype=d), (3, 6, 6)),
    ("concat_of_residual", lambda d: L.Concat([
        [L.Residual(_bottleneck(d, c=3, seed=5), activation="relu", dtype=d)],
        [L.Conv2D(2, 3, padding=1, seed=7, dtype=d)]], dtype=d), (3, 5, 5)),
    ("residual_of_concat", lambda d: L.Residual([
        L.Concat([[L.Conv2D(2, 1, seed=8, dtype=d)], [L.Conv2D(2, 3, padding=1, seed=9, dtype=d)]], dtype=d),
        L.BatchNorm2D(dtype=d), L.ReLU(dtype=d), L.Conv2D(3, 1, seed=10, dtype=d)], activation="relu", dtype=d),
        (3, 5, 5)),
]


@pytest.mark.parametrize("factory, input_shape", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_block_passes_contract(factory, input_shape, one_thread):
    report = check_layer_contract(factory, input_shape)
    assert report.passed
    layer = factory("float64")
    layer.build(input_shape)
    assert set(report.tensors) == {"input"} | set(layer.parameters())  # every nested parameter was checked


# -- the math, composed by hand from the children -----------------------------------------------------
def _randomize(layer, seed):
    """Random parameter values (BatchNorm scales and shifts included), away from the initial ones."""
    rng = np.random.default_rng(seed)
    for p in layer.parameters().values():
        p.data[...] = rng.standard_normal(p.data.shape)


def _run(layers, x):
    for layer in layers:
        x = layer.forward(x)
    return x


def _back(layers, g):
    for layer in reversed(layers):
        g = layer.backward(g)
    return g


def _projection_block(d="float64"):
    return L.Residual(_bottleneck(d, c=4, stride=2), shortcut=[L.Conv2D(4, 1, stride=2, seed=3, dtype=d),
                                                                 L.BatchNorm2D(dtype=d)], activation="relu", dtype=d)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_residual_equals_the_math_composed_by_hand(mode):
    block = _projection_block()
    block.build((3, 6, 6))
    _randomize(block, 1)
    getattr(block, mode)()
    body, short = copy.deepcopy(block.layers), copy.deepcopy(block.shortcut)  # same weights, own caches
    act = L.ReLU(dtype="float64")
    x = kink_free_input((4, 3, 6, 6), 2)
    g = np.random.default_rng(3).standard_normal((4, 4, 3, 3))

    y = block.forward(x)
    dx = block.backward(g)

    z = _run(body, x) + _run(short, x)  # eq. (5)
    y_ref = act.forward(z)
    gz = act.backward(g)
    dx_ref = _back(body, gz) + _back(short, gz)  # eqs. (6), (7)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    ref_grads = {**{f"layers.{i}.{n}": p.grad for i, c in enumerate(body) for n, p in c.parameters().items()},
                 **{f"shortcut.{i}.{n}": p.grad for i, c in enumerate(short) for n, p in c.parameters().items()}}
    grads = {n: p.grad for n, p in block.parameters().items()}
    assert list(grads) == list(ref_grads)
    for n in grads:
        np.testing.assert_array_equal(grads[n], ref_grads[n], err_msg=n)
    assert np.abs(dx).max() > 0 and all(np.abs(v).max() > 0 for v in grads.values())


def test_identity_shortcut_adds_the_gradient_itself():
    block = L.Residual([L.Conv2D(3, 3, padding=1, seed=0, dtype="float64")])
    x = kink_free_input((2, 3, 4, 4), 0)
    g = np.random.default_rng(1).standard_normal((2, 3, 4, 4))
    y = block.forward(x)
    conv = copy.deepcopy(block.layers[0])
    np.testing.assert_array_equal(y, conv.forward(x) + x)
    np.testing.assert_array_equal(block.backward(g), conv.backward(g) + g)  # eq. (7), S = identity


def test_concat_equals_the_math_composed_by_hand():
    block = L.Concat([[L.Conv2D(2, 1, seed=0, dtype="float64")], [],
                      [L.MaxPool2D(3, stride=1, padding=1, dtype="float64"), L.Conv2D(3, 3, padding=1, seed=1,
                                                                                  dtype="float64")]])
    block.build((3, 5, 5))
    _randomize(block, 2)
    branches = copy.deepcopy(block.branches)
    x = kink_free_input((2, 3, 5, 5), 3)
    g = np.random.default_rng(4).standard_normal((2, 8, 5, 5))
    y = block.forward(x)
    dx = block.backward(g)
    outs = [_run(b, x) for b in branches]
    np.testing.assert_array_equal(y, np.concatenate(outs, axis=1))
    bounds = np.cumsum([0] + [o.shape[1] for o in outs])
    dx_ref = sum(_back(b, g[:, lo:hi]) for b, lo, hi in zip(branches, bounds[:-1], bounds[1:]))  # eq. (8)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-14, atol=0)
    for i, b in enumerate(branches):
        for j, c in enumerate(b):
            for n, p in c.parameters().items():
                np.testing.assert_array_equal(block.parameters()[f"branches.{i}.{j}.{n}"].grad, p.grad)


@pytest.mark.parametrize("make, shape", [
    (_projection_block, (3, 6, 6)),
    (lambda: L.Concat([[L.Residual(_bottleneck("float64", c=3), dtype="float64")],
                       [L.Conv2D(2, 3, padding=1, seed=7, dtype="float64"), L.BatchNorm2D(dtype="float64")],
                       []]), (3, 5, 5)),
], ids=["residual", "concat"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_finite_differences_at_random_parameters(make, shape, mode, one_thread):
    block = make()
    block.build(shape)
    _randomize(block, 5)
    for name, b in block.buffers().items():  # eval mode: non-trivial running statistics
        b[...] = np.random.default_rng(6).uniform(0.5, 1.5, b.shape) if "var" in name else 0.1
    getattr(block, mode)()
    report = check_layer(block, shape, batch_size=3, seed=7)
    assert report.passed, str(report)
    assert set(report.tensors) == {"input"} | set(block.parameters())


def test_threads_do_not_change_results():
    def run(threads):
        block = _projection_block("float32")
        with cnnframe.num_threads(threads):
            y = block.forward(kink_free_input((3, 3, 6, 6), 0).astype(np.float32))
            dx = block.backward(np.ones_like(y))
        return [y, dx] + [p.grad for p in block.parameters().values()]

    for a, b in zip(run(1), run(2)):
        np.testing.assert_array_equal(a, b)


# -- names, state, modes, seeds -------------------------------------------------------------------------
def test_nested_names_for_parameters_buffers_and_state():
    block = L.Concat([[L.Conv2D(2, 1)], [L.Residual([L.Conv2D(3, 3, padding=1), L.BatchNorm2D()],
                                                    shortcut=[L.Conv2D(3, 1), L.BatchNorm2D()], activation="relu")]])
    block.build((3, 4, 4))
    assert list(block.parameters()) == [
        "branches.0.0.weight", "branches.0.0.bias",
        "branches.1.0.layers.0.weight", "branches.1.0.layers.0.bias",
        "branches.1.0.layers.1.weight", "branches.1.0.layers.1.bias",
        "branches.1.0.shortcut.0.weight", "branches.1.0.shortcut.0.bias",
        "branches.1.0.shortcut.1.weight", "branches.1.0.shortcut.1.bias",
    ]
    assert list(block.buffers()) == [
        "branches.1.0.layers.1.running_mean", "branches.1.0.layers.1.running_var",
        "branches.1.0.shortcut.1.running_mean", "branches.1.0.shortcut.1.running_var",
    ]
    assert list(block.state_dict()) == [
        "branches.0.0.weight", "branches.0.0.bias",
        "branches.1.0.layers.0.weight", "branches.1.0.layers.0.bias",
        "branches.1.0.layers.1.weight", "branches.1.0.layers.1.bias",
        "branches.1.0.layers.1.running_mean", "branches.1.0.layers.1.running_var",
        "branches.1.0.shortcut.0.weight", "branches.1.0.shortcut.0.bias",
        "branches.1.0.shortcut.1.weight", "branches.1.0.shortcut.1.bias",
        "branches.1.0.shortcut.1.running_mean", "branches.1.0.shortcut.1.running_var",
    ]
    # the names point at the children's own objects
    inner = block.branches[1][0]
    assert block.parameters()["branches.1.0.shortcut.1.bias"] is inner.shortcut[1].parameters()["bias"]
    assert block.num_parameters() == sum(p.data.size for p in block.parameters().values()) == 8 + 84 + 6 + 12 + 6


def test_load_state_dict_reaches_every_child_and_names_bad_entries():
    a, b = _projection_block(), _projection_block()
    a.build((3, 6, 6))
    b.build((3, 6, 6))
    _randomize(a, 0)
    a.forward(kink_free_input((2, 3, 6, 6), 0))  # running statistics move
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    state = dict(a.state_dict())
    state["shortcut.0.weight"] = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"shortcut\.0.*'weight' has shape \(4, 3, 3, 3\), expected \(4, 3, 1, 1\)"):
        b.load_state_dict(state)
    del state["shortcut.0.weight"]
    with pytest.raises(KeyError, match=r"shortcut\.0.*no entry 'weight'"):
        b.load_state_dict(state)
    with pytest.raises(KeyError, match="does not have.*layers.9.weight"):
        b.load_state_dict({**a.state_dict(), "layers.9.weight": np.zeros(1)})


def test_eval_mode_batchnorm_inside_a_block():
    block = L.Residual([L.Conv2D(3, 3, padding=1, seed=0, dtype="float64"), L.BatchNorm2D(dtype="float64")],
                       shortcut=[L.BatchNorm2D(dtype="float64")], activation="relu")
    x = kink_free_input((6, 3, 4, 4), 1)
    for _ in range(3):
        block.forward(x * 2 + 1)  # training passes move the running statistics away from (0, 1)
    stats = {k: v.copy() for k, v in block.buffers().items()}
    assert not np.allclose(stats["layers.1.running_mean"], 0)
    block.eval()
    assert not block.training and all(not c.training for _, c in block.named_children())
    y = block.forward(x)
    for k, v in block.buffers().items():
        np.testing.assert_array_equal(v, stats[k])  # evaluation leaves them alone
    # eval mode uses the running statistics: eq. (5) with x̂ = (x − running_mean)/√(running_var + eps)
    conv, bn, sbn = block.layers[0], block.layers[1], block.shortcut[0]

    def norm(v, layer):
        rm, rv = layer.buffers()["running_mean"], layer.buffers()["running_var"]
        w, b = layer.parameters()["weight"].data, layer.parameters()["bias"].data
        return ((v - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)) * w[:, None, None] + b[:, None, None]

    np.testing.assert_allclose(y, np.maximum(norm(conv.forward(x), bn) + norm(x, sbn), 0), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(block.forward(x[2:3]), y[2:3])  # a sample alone gives the same output
    block.train()
    assert block.training and all(c.training for _, c in block.named_children())


def test_zero_grad_reaches_every_child():
    block = _projection_block()
    y = block.forward(kink_free_input((2, 3, 6, 6), 0))
    block.backward(np.ones_like(y))
    assert all(np.abs(p.grad).max() > 0 for p in block.parameters().values())
    block.zero_grad()
    assert all(not p.grad.any() for p in block.parameters().values())


def test_reset_parameters_is_deterministic_and_distinct_per_child():
    def weights(seed, extra_shortcut=False):
        short = [L.Conv2D(4, 3, padding=1)] if extra_shortcut else None
        block = L.Residual([L.Conv2D(4, 3, padding=1), L.Conv2D(4, 3, padding=1)], shortcut=short)
        block.build((4, 5, 5))
        block.reset_parameters(np.random.default_rng(seed))
        return {k: p.data.copy() for k, p in block.parameters().items()}

    a, b, c = weights(0), weights(0), weights(1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    assert not np.array_equal(a["layers.0.weight"], a["layers.1.weight"])  # same shape, own draws
    with_short = weights(0, extra_shortcut=True)
    for k in a:  # adding a child does not change what the others draw
        np.testing.assert_array_equal(with_short[k], a[k])
    # through a model: Sequential.initialize(seed) reaches the nested children
    m1 = cnnframe.Sequential([L.Residual([L.Conv2D(4, 3, padding=1)])], input_shape=(4, 5, 5), seed=3)
    m2 = cnnframe.Sequential([L.Residual([L.Conv2D(4, 3, padding=1)])], input_shape=(4, 5, 5), seed=3)
    np.testing.assert_array_equal(m1.parameters()["0.layers.0.weight"].data, m2.parameters()["0.layers.0.weight"].data)


def test_reseed_gives_each_child_its_own_seed():
    block = L.Concat([[L.Dropout(0.5)], [L.Dropout(0.5)], [L.Residual([L.Dropout(0.5)])]])
    x = np.ones((4, 2, 5, 5), dtype=np.float32)
    block.reseed(3)
    y = block.forward(x)
    parts = [y[:, 0:2], y[:, 2:4], y[:, 4:6] - x[:, :2]]  # the residual adds x back
    assert not np.array_equal(parts[0], parts[1]) and not np.array_equal(parts[0], parts[2])
    block.reseed(3)
    np.testing.assert_array_equal(block.forward(x), y)
    block.reseed(4)
    assert not np.array_equal(block.forward(x), y)
    with pytest.raises(TypeError, match="seed must be"):
        block.reseed(-1)


def test_need_input_grad_false_skips_the_first_children_only():
    block = L.Residual([L.Conv2D(3, 3, padding=1, seed=0)], shortcut=[L.Conv2D(3, 1, seed=1)])
    x = kink_free_input((2, 2, 4, 4), 0).astype(np.float32)
    y = block.forward(x)
    block.backward(np.ones_like(y))
    ref = {k: p.grad.copy() for k, p in block.parameters().items()}
    block.zero_grad()
    block.need_input_grad = False
    block.forward(x)
    assert block.backward(np.ones_like(y)) is None
    for k, p in block.parameters().items():
        np.testing.assert_array_equal(p.grad, ref[k])
    assert block.layers[0].need_input_grad and block.shortcut[0].need_input_grad  # restored
    # a child that was told to skip its input gradient cannot feed the block's
    block.need_input_grad = True
    block.layers[0].need_input_grad = False
    block.forward(x)
    with pytest.raises(RuntimeError, match=r"layers\[0\] \(Conv2D\) returned no input gradient"):
        block.backward(np.ones_like(y))


# -- dtype, config, construction -----------------------------------------------------------------------
def test_dtype_reaches_every_child():
    block = L.Residual([{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": 1}, L.ReLU("float64")],
                       shortcut=[{"type": "batchnorm2d"}], activation="relu")
    assert block.dtype == np.float64  # from the first child given as a layer
    assert all(c.dtype == np.float64 for _, c in block.named_children())
    assert L.Concat([[{"type": "relu"}]]).dtype == np.float32
    y = block.forward(np.ones((2, 3, 4, 4), dtype=np.float32))
    assert y.dtype == np.float64 and all(p.data.dtype == np.float64 for p in block.parameters().values())
    with pytest.raises(ValueError, match=r"layers\[0\] \(Conv2D\) has dtype float32 but the block's dtype is float64"):
        L.Residual([L.Conv2D(3, 3)], dtype="float64")
    with pytest.raises(ValueError, match=r"branches\[0\]\[0\]: a child takes its block's dtype"):
        L.Concat([[{"type": "relu", "dtype": "float64"}]], dtype="float64")
    # a config with another dtype rebuilds every child in it (what gradcheck does with a float32 model)
    cfg = _projection_block("float32").get_config()
    new = L.Residual.from_config({**cfg, "dtype": "float64"})
    assert all(c.dtype == np.float64 for _, c in new.named_children())


def test_config_round_trip_with_nested_children():
    block = L.Residual([L.Conv2D(4, 3, stride=2, padding=1, seed=1), L.BatchNorm2D(), L.ReLU(),
                        L.Concat([[L.Conv2D(2, 1, seed=2)], [L.Conv2D(2, 3, padding=1, seed=3)]])],
                       shortcut=[L.Conv2D(4, 1, stride=2, seed=4)], activation="leakyrelu")
    block.build((3, 6, 6))
    cfg = json.loads(json.dumps(block.get_config()))
    assert cfg["type"] == "residual" and cfg["activation"] == "leakyrelu" and cfg["dtype"] == "float32"
    assert [c["type"] for c in cfg["layers"]] == ["conv2d", "batchnorm2d", "relu", "concat"]
    assert cfg["layers"][3]["branches"][1][0]["kernel_size"] == 3
    assert cfg["shortcut"] == [{"type": "conv2d", "out_channels": 4, "kernel_size": 1, "in_channels": 3, "stride": 2,
                                "padding": 0, "dilation": 1, "groups": 1, "bias": True, "seed": 4}]  # no per-child dtype
    new = cnnframe.LAYERS.get(cfg["type"]).from_config(cfg)
    assert new.get_config() == cfg
    new.load_state_dict(block.state_dict())
    x = kink_free_input((2, 3, 6, 6), 0).astype(np.float32)
    np.testing.assert_array_equal(new.forward(x), block.forward(x))
    assert L.Residual([L.ReLU()]).get_config() == {"type": "residual", "dtype": "float32",
                                                   "layers": [{"type": "relu"}], "shortcut": None, "activation": None}
    assert L.Residual([L.ReLU()], shortcut=[]).get_config()["shortcut"] is None  # [] is the identity too
    assert L.Concat([[], [L.ReLU()]]).get_config() == {"type": "concat", "dtype": "float32",
                                                       "branches": [[], [{"type": "relu"}]]}


class _Unregistered(L.ReLU):
    pass


@pytest.mark.parametrize("make, error, match", [
    (lambda: L.Residual(L.ReLU()), TypeError, "Residual: layers must be a list of layers or layer configs, got ReLU"),
    (lambda: L.Residual([]), ValueError, "at least one layer"),
    (lambda: L.Residual([L.ReLU()], shortcut={"type": "relu"}), TypeError, "shortcut must be a list"),
    (lambda: L.Residual([cnnframe.Sequential([L.ReLU()])]), TypeError, r"layers\[0\] must be a cnnframe Layer"),
    (lambda: L.Residual([{"kernel_size": 3}]), ValueError, r"layers\[0\]: a layer config needs a 'type'"),
    (lambda: L.Residual([{"type": "cnnframe.layers.activations:ReLU"}]), ValueError,
     r"registered name, not as 'module:Class'"),
    (lambda: L.Residual([{"type": "rleu"}]), ValueError, r"layers\[0\]: unknown layer 'rleu'; did you mean 'relu'"),
    (lambda: L.Residual([{"type": "conv2d", "out_channels": 2}]), TypeError,
     r"layers\[0\] \(conv2d\):.*kernel_size"),
    (lambda: L.Residual([{"type": "conv2d", "out_channels": 0, "kernel_size": 1}]), ValueError,
     r"layers\[0\] \(conv2d\): Conv2D: out_channels must be a positive integer"),
    (lambda: L.Residual([_Unregistered()]), ValueError, r"_Unregistered is not a registered layer"),
    (lambda: L.Residual([L.ReLU()], activation="rleu"), ValueError, "did you mean 'relu'"),
    (lambda: L.Residual([L.ReLU()], activation=L.ReLU()), ValueError, "activation must be a registered activation"),
    (lambda: L.Residual([L.ReLU()], activation="x:y"), ValueError, "activation must be a registered activation"),
    (lambda: L.Residual([L.ReLU()], activation="conv2d"), ValueError,
     "activation 'conv2d' cannot be built from its name alone"),
    (lambda: L.Concat([]), TypeError, "non-empty list"),
    (lambda: L.Concat([L.ReLU()]), TypeError, r"Concat: branches\[0\] must be a list"),
], ids=lambda v: None)
def test_construction_errors_are_clear(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_layer_object_may_appear_once():
    relu = L.ReLU()
    with pytest.raises(ValueError, match=r"shortcut\.0 is the same layer object as layers\.1"):
        L.Residual([L.Conv2D(2, 1), relu], shortcut=[relu])


def test_build_children_resolves_registered_names_only():
    dt = np.dtype("float64")
    conv, relu = build_children([{"type": "Conv2D", "out_channels": 2, "kernel_size": 1}, {"type": "relu"}], dt)
    assert isinstance(conv, L.Conv2D) and isinstance(relu, L.ReLU) and conv.dtype == relu.dtype == dt
    with pytest.raises(ValueError, match=r"branch\[0\]: type .*'module:Class'"):
        build_children([{"type": "cnnframe.layers.conv:Conv2D"}], dt, "branch")


# -- shapes ----------------------------------------------------------------------------------------------
def test_output_shape_is_pure_and_build_infers_children():
    block = L.Residual([L.Conv2D(4, 3, stride=2, padding=1)], shortcut=[L.Conv2D(4, 1, stride=2)])
    assert block.output_shape((3, 7, 7)) == (4, 4, 4)
    assert not block.built and not block.parameters()
    block.build((3, 7, 7))
    assert block.built and block.layers[0].in_channels == 3 and block.shortcut[0].in_channels == 3
    cat = L.Concat([[L.Conv2D(2, 1)], [], [L.MaxPool2D(3, stride=1, padding=1)]])
    assert cat.output_shape((5, 4, 3)) == (12, 4, 3)


@pytest.mark.parametrize("make, shape, match", [
    (lambda: L.Residual([L.Conv2D(8, 3, padding=1)]), (3, 6, 6),
     r"body \(layers\) outputs \(8, 6, 6\) per sample but the identity shortcut passes the input \(3, 6, 6\)"
     r".*projection shortcut"),
    (lambda: L.Residual([L.Conv2D(4, 3, stride=2, padding=1)], shortcut=[L.Conv2D(4, 1)]), (3, 6, 6),
     r"body \(layers\) outputs \(4, 3, 3\) per sample but the shortcut outputs \(4, 6, 6\)"),
    (lambda: L.Concat([[L.Conv2D(2, 1)], [L.Conv2D(2, 3)]]), (3, 6, 6),
     r"branches\[0\] outputs \(2, 6, 6\) but branches\[1\] outputs \(2, 4, 4\)"),
    (lambda: L.Concat([[L.Conv2D(2, 1)], [L.Flatten()]]), (3, 6, 6),
     r"branches\[1\] outputs \(108,\) per sample .* images \(C, H, W\)"),
    (lambda: L.Concat([[L.ReLU()]]), (6,), r"Concat: expects per-sample input shape \(C, H, W\)"),
    (lambda: L.Residual([L.Conv2D(4, 1), L.Conv2D(4, 5)]), (3, 3, 3),
     r"Residual: layers\[1\] \(Conv2D\) with input shape \(4, 3, 3\): Conv2D"),
    (lambda: L.Concat([[L.Residual([L.Conv2D(4, 1)])]]), (3, 3, 3),
     r"Concat: branches\[0\]\[0\] \(Residual\) with input shape \(3, 3, 3\): Residual: cannot add "
     r".*\(4, 3, 3\).*\(3, 3, 3\)"),
    (lambda: L.Residual([L.Conv2D(3, 1)], activation="flatten"), (3, 3, 3), "activation 'flatten' changes the shape"),
], ids=lambda v: None)
def test_shape_mismatch_names_both_shapes(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make().output_shape(shape)
    with pytest.raises(ValueError, match=match):  # and the model says where the block is
        cnnframe.Sequential([L.ReLU(), make()], input_shape=shape)


def test_activation_with_parameters_is_rejected_at_build():
    block = L.Residual([L.Flatten(), L.Dense(4)], shortcut=[L.Flatten(), L.Dense(4)], activation="batchnorm1d")
    with pytest.raises(ValueError, match="activation 'batchnorm1d' has parameters; put it in layers"):
        block.build((1, 2, 2))


def test_forward_and_backward_errors():
    block = L.Residual([L.Conv2D(2, 3, padding=1)])
    block.build((2, 4, 4))
    with pytest.raises(ValueError, match="Conv2D: input has 3 channels"):
        block.forward(np.zeros((1, 3, 4, 4), dtype=np.float32))
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        L.Residual([L.ReLU()]).backward(np.zeros((1, 2)))


# -- PyTorch ---------------------------------------------------------------------------------------------
def test_residual_matches_pytorch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    block = _projection_block()
    block.build((3, 6, 6))
    _randomize(block, 11)
    conv1, bn1, _, conv2, bn2 = block.layers
    sconv, sbn = block.shortcut

    def t(a):
        return torch.tensor(np.asarray(a))

    class TorchBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.sc, self.sb = nn.Conv2d(3, 4, 1, stride=2), nn.BatchNorm2d(4)

        def forward(self, x):
            body = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(body + self.sb(self.sc(x)))

    ref = TorchBlock().double()
    with torch.no_grad():
        for mod, ours in [(ref.c1, conv1), (ref.b1, bn1), (ref.c2, conv2), (ref.b2, bn2), (ref.sc, sconv),
                          (ref.sb, sbn)]:
            mod.weight.copy_(t(ours.parameters()["weight"].data))
            mod.bias.copy_(t(ours.parameters()["bias"].data))
    x = kink_free_input((4, 3, 6, 6), 12)
    g = np.random.default_rng(13).standard_normal((4, 4, 3, 3))
    xt = t(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(t(g))
    y = block.forward(x)
    dx = block.backward(g)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, mod in [("layers.0", ref.c1), ("layers.1", ref.b1), ("layers.3", ref.c2), ("layers.4", ref.b2),
                      ("shortcut.0", ref.sc), ("shortcut.1", ref.sb)]:
        for p in ("weight", "bias"):
            np.testing.assert_allclose(block.parameters()[f"{name}.{p}"].grad, getattr(mod, p).grad.numpy(),
                                       rtol=1e-10, atol=1e-12, err_msg=f"{name}.{p}")
        if isinstance(mod, nn.BatchNorm2d):
            np.testing.assert_allclose(block.buffers()[f"{name}.running_var"], mod.running_var.numpy(), rtol=1e-12)


def test_a_layer_object_may_appear_once_at_any_depth():
    conv = L.Conv2D(2, 1)
    with pytest.raises(ValueError,
                       match=r"Concat: branches\.1\.0\.layers\.0 is the same layer object as branches\.0\.0"):
        L.Concat([[conv], [L.Residual([conv])]])
