from collections import OrderedDict

import numpy as np
import pytest

import cnnframe
from cnnframe.layers.base import Parameter
from cnnframe.optim import SGD


def _params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    w = Parameter(rng.standard_normal((3, 2)).astype(dtype))
    b = Parameter(rng.standard_normal(3).astype(dtype), weight_decay=False)
    return OrderedDict([("0.weight", w), ("0.bias", b)])


def _grads(step, dtype=np.float64):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal((3, 2)).astype(dtype), rng.standard_normal(3).astype(dtype)]


def _set_grads(params, grads):
    for p, g in zip(params.values(), grads):
        p.grad[...] = g


def _reference_sgd(w0, grads_per_step, lr, mu=0.0, nesterov=False, wd=0.0, decay_mask=(True, False), clip=None):
    """The update rules written out element by element on Python floats (PyTorch's SGD)."""
    ws = [[float(v) for v in w.ravel()] for w in w0]
    bufs = [[0.0] * len(w) for w in ws]
    for grads in grads_per_step:
        gs = [[float(v) for v in g.ravel()] for g in grads]
        if clip is not None:
            norm = sum(v * v for g in gs for v in g) ** 0.5
            coef = clip / (norm + 1e-6)
            if coef < 1:
                gs = [[v * coef for v in g] for g in gs]
        for j, (w, g, buf) in enumerate(zip(ws, gs, bufs)):
            for i in range(len(w)):
                d = g[i] + (wd * w[i] if decay_mask[j] else 0.0)
                if mu:
                    buf[i] = mu * buf[i] + d
                    d = d + mu * buf[i] if nesterov else buf[i]
                w[i] -= lr * d
    return [np.array(w).reshape(a.shape) for w, a in zip(ws, w0)]


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.1),
        dict(lr=0.1, momentum=0.9),
        dict(lr=0.05, momentum=0.8, nesterov=True),
        dict(lr=0.1, momentum=0.9, weight_decay=0.01),
        dict(lr=0.1, weight_decay=0.5),
        dict(lr=0.1, momentum=0.5, clip_norm=0.5),
        dict(lr=0.1, momentum=0.5, nesterov=True, weight_decay=1e-2, clip_norm=1.0),
        dict(lr=0.1, clip_norm=100.0),  # above the norm: no clipping
    ],
)
def test_sgd_matches_hand_computed_updates(kw):
    params = _params()
    w0 = [p.data.copy() for p in params.values()]
    opt = SGD(params, **kw)
    steps = [_grads(s) for s in range(4)]
    for grads in steps:
        _set_grads(params, grads)
        opt.step()
    expected = _reference_sgd(
        w0, steps, kw["lr"], kw.get("momentum", 0.0), kw.get("nesterov", False), kw.get("weight_decay", 0.0),
        clip=kw.get("clip_norm"),
    )
    for p, e in zip(params.values(), expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-13, atol=1e-15)
    assert opt.step_count == 4


def test_first_momentum_step_and_weight_decay_skip_by_hand():
    w = Parameter(np.array([1.0, -2.0]))
    b = Parameter(np.array([3.0]), weight_decay=False)
    opt = SGD({"w": w, "b": b}, lr=0.5, momentum=0.9, weight_decay=0.1)
    w.grad[...] = [0.2, 0.4]
    b.grad[...] = [1.0]
    opt.step()
    # d = g + 0.1 w = [0.3, 0.2]; buf = d; w -= 0.5 d.  Bias: no decay.
    np.testing.assert_allclose(w.data, [1.0 - 0.15, -2.0 - 0.1])
    np.testing.assert_allclose(b.data, [3.0 - 0.5])
    opt.step()
    # d = [0.2 + 0.085, 0.4 - 0.21] ; buf = 0.9 * [0.3, 0.2] + d
    d = np.array([0.2 + 0.1 * 0.85, 0.4 + 0.1 * -2.1])
    buf = 0.9 * np.array([0.3, 0.2]) + d
    np.testing.assert_allclose(w.data, np.array([0.85, -2.1]) - 0.5 * buf)
    np.testing.assert_allclose(b.data, [2.5 - 0.5 * (0.9 * 1.0 + 1.0)])
    # gradients are left untouched by step
    np.testing.assert_array_equal(w.grad, [0.2, 0.4])


def test_clipping_scales_by_global_norm():
    a = Parameter(np.array([3.0, 0.0]))
    b = Parameter(np.array([4.0]))
    opt = SGD([a, b], lr=1.0, clip_norm=1.0)
    a.grad[...] = [3.0, 0.0]
    b.grad[...] = [4.0]
    opt.step()
    assert opt.last_grad_norm == pytest.approx(5.0)
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(a.data, [3.0 - 3.0 * scale, 0.0])
    np.testing.assert_allclose(b.data, [4.0 - 4.0 * scale])


def test_float32_params_stay_float32_and_follow_float64():
    p32, p64 = _params(np.float32), _params(np.float64)
    for p in p64.values():
        p.data[...] = p.data.astype(np.float32)
    o32 = SGD(p32, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_norm=2.0)
    o64 = SGD(p64, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_norm=2.0)
    for s in range(3):
        _set_grads(p32, _grads(s, np.float32))
        _set_grads(p64, _grads(s, np.float32))
        o32.step()
        o64.step()
    for a, b in zip(p32.values(), p64.values()):
        assert a.data.dtype == np.float32
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
    assert o32.state["momentum_buffer"]["0.weight"].dtype == np.float32


def test_updates_in_place_and_lr_can_change():
    params = _params()
    w = params["0.weight"]
    arr = w.data
    opt = SGD(params, lr=0.1)
    opt.lr = 0.0
    _set_grads(params, _grads(0))
    before = arr.copy()
    opt.step()
    np.testing.assert_array_equal(arr, before)
    opt.lr = 0.2
    opt.step()
    assert w.data is arr
    np.testing.assert_allclose(arr, before - 0.2 * _grads(0)[0])
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.lr = -1.0


def test_zero_grad():
    params = _params()
    _set_grads(params, _grads(0))
    SGD(params).zero_grad()
    assert all((p.grad == 0).all() for p in params.values())


def test_state_roundtrip_continues_identically(tmp_path):
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, clip_norm=1.0)
    straight = _params()
    opt = SGD(straight, **kw)
    for s in range(6):
        _set_grads(straight, _grads(s))
        opt.step()

    first = _params()
    opt1 = SGD(first, **kw)
    for s in range(3):
        _set_grads(first, _grads(s))
        opt1.step()
    path = tmp_path / "opt.npz"
    cnnframe.io.atomic_save_npz(path, opt1.state_dict())
    with np.load(path, allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    resumed = OrderedDict((k, Parameter(p.data.copy(), p.weight_decay)) for k, p in first.items())
    opt2 = SGD(resumed, **{**kw, "lr": 0.5})
    opt2.load_state_dict(state)
    assert opt2.step_count == 3 and opt2.lr == 0.1
    for s in range(3, 6):
        _set_grads(resumed, _grads(s))
        opt2.step()
    for a, b in zip(straight.values(), resumed.values()):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_is_flat_npz_safe_copies():
    params = _params()
    opt = SGD(params, lr=0.1, momentum=0.9)
    _set_grads(params, _grads(0))
    opt.step()
    st = opt.state_dict()
    assert set(st) == {"step", "lr", "momentum_buffer/0.weight", "momentum_buffer/0.bias"}
    assert st["step"].shape == () and st["step"].dtype == np.int64 and int(st["step"]) == 1
    assert all(isinstance(v, np.ndarray) and not v.dtype.hasobject for v in st.values())
    st["momentum_buffer/0.weight"][...] = 99  # a copy: the optimizer is unaffected
    assert not (opt.state["momentum_buffer"]["0.weight"] == 99).any()
    assert set(SGD(_params(), lr=0.1).state_dict()) == {"step", "lr"}


def test_load_state_dict_errors():
    opt = SGD(_params(), lr=0.1, momentum=0.9)
    st = opt.state_dict()
    with pytest.raises(KeyError, match=r"missing \['momentum_buffer/0.bias'\]"):
        opt.load_state_dict({k: v for k, v in st.items() if k != "momentum_buffer/0.bias"})
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        opt.load_state_dict({**st, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'momentum_buffer/0.weight' has shape \(2, 3\), expected \(3, 2\)"):
        opt.load_state_dict({**st, "momentum_buffer/0.weight": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="'step' must be"):
        opt.load_state_dict({**st, "step": np.array(1.5)})
    # SGD without momentum has no buffers: loading a momentum state into it is a mismatch
    with pytest.raises(KeyError, match="unexpected"):
        SGD(_params(), lr=0.1).load_state_dict(st)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=0), "lr must be > 0"),
        (dict(lr=-0.1), "lr must be > 0"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(lr="0.1"), "lr must be a finite number"),
        (dict(momentum=1.0), "momentum must be >= 0 and < 1"),
        (dict(momentum=-0.1), "momentum must be >= 0 and < 1"),
        (dict(nesterov=True), "nesterov=True requires momentum > 0"),
        (dict(weight_decay=-1e-4), "weight_decay must be >= 0"),
        (dict(clip_norm=0.0), "clip_norm must be > 0"),
        (dict(lr=True), "lr must be a finite number"),
    ],
)
def test_hyper_parameter_validation(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SGD(_params(), **kw)


def test_parameter_list_validation():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD({})
    with pytest.raises(TypeError, match="'x' is not a Parameter"):
        SGD({"x": np.zeros(3)})
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="same object"):
        SGD({"a": p, "b": p})
    with pytest.raises(TypeError, match="nesterov must be true or false"):
        SGD(_params(), momentum=0.9, nesterov="yes")


def test_registry_config_roundtrip():
    assert cnnframe.OPTIMIZERS.get("sgd") is SGD
    opt = SGD(_params(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, clip_norm=5.0)
    cfg = opt.get_config()
    assert cfg == {"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "clip_norm": 5.0}
    assert SGD.from_config(_params(), cfg).get_config() == cfg


def test_matches_torch_sgd_when_available():
    torch = pytest.importorskip("torch")
    params = _params()
    tw = [torch.tensor(p.data.copy(), requires_grad=True) for p in params.values()]
    topt = torch.optim.SGD(tw, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)
    opt = SGD(params, lr=0.1, momentum=0.9, nesterov=True, clip_norm=1.0)
    for s in range(5):
        grads = _grads(s)
        _set_grads(params, grads)
        for t, g in zip(tw, grads):
            t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(tw, 1.0)
        topt.step()
        opt.step()
    for p, t in zip(params.values(), tw):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_slots_are_declared_by_the_optimizer():
    p = {"w": Parameter(np.ones(3))}
    assert SGD(p, lr=0.1).slots() == () and list(SGD(p, lr=0.1).state) == []
    assert SGD(p, lr=0.1, momentum=0.9).slots() == ("momentum_buffer",)
    assert list(cnnframe.Adam(p).state) == ["exp_avg", "exp_avg_sq"]


def test_an_optimizer_written_as_update_gets_the_clipped_decayed_gradient():
    """A user optimizer implements only _update(name, p, g): the base class hands it
    g = clip_scale·grad + weight_decay·w (decay only on parameters that decay)."""
    seen = {}

    class SignSGD(cnnframe.optim.Optimizer):
        def _update(self, name, p, g):
            seen[name] = g.copy()
            p.data -= self.lr * np.sign(g)

    params = OrderedDict(w=Parameter(np.array([1.0, -2.0])), b=Parameter(np.array([0.5]), weight_decay=False))
    params["w"].grad[...] = [3.0, 4.0]
    params["b"].grad[...] = [0.0]
    opt = SignSGD(params, lr=0.1, weight_decay=0.5, clip_norm=1.0)
    opt.step()
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(seen["w"], [3 * scale + 0.5, 4 * scale - 1.0])
    np.testing.assert_allclose(seen["b"], [0.0])
    np.testing.assert_allclose(params["w"].data, [0.9, -1.9])
    assert opt.last_grad_norm == pytest.approx(5.0)
