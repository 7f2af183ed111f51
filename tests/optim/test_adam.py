import math
from collections import OrderedDict

import numpy as np
import pytest

import cnnframe
from cnnframe.layers.base import Parameter
from cnnframe.optim import Adam


def _params(dtype=np.float64):
    rng = np.random.default_rng(0)
    return OrderedDict(
        [
            ("0.weight", Parameter(rng.standard_normal((2, 3)).astype(dtype))),
            ("0.bias", Parameter(rng.standard_normal(2).astype(dtype), weight_decay=False)),
        ]
    )


def _grads(step, dtype=np.float64):
    rng = np.random.default_rng(50 + step)
    return [rng.standard_normal((2, 3)).astype(dtype), rng.standard_normal(2).astype(dtype)]


def _set(params, grads):
    for p, g in zip(params.values(), grads):
        p.grad[...] = g


def _reference_adam(w0, steps, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, mask=(True, False), clip=None):
    """Adam written out per element on Python floats (bias-corrected, L2 decay added to the gradient)."""
    ws = [[float(v) for v in w.ravel()] for w in w0]
    ms = [[0.0] * len(w) for w in ws]
    vs = [[0.0] * len(w) for w in ws]
    for t, grads in enumerate(steps, start=1):
        gs = [[float(v) for v in g.ravel()] for g in grads]
        if clip is not None:
            norm = math.sqrt(sum(v * v for g in gs for v in g))
            if clip / (norm + 1e-6) < 1:
                gs = [[v * clip / (norm + 1e-6) for v in g] for g in gs]
        for j in range(len(ws)):
            for i in range(len(ws[j])):
                g = gs[j][i] + (wd * ws[j][i] if mask[j] else 0.0)
                ms[j][i] = b1 * ms[j][i] + (1 - b1) * g
                vs[j][i] = b2 * vs[j][i] + (1 - b2) * g * g
                m_hat = ms[j][i] / (1 - b1**t)
                v_hat = vs[j][i] / (1 - b2**t)
                ws[j][i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return [np.array(w).reshape(a.shape) for w, a in zip(ws, w0)]


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=1e-2),
        dict(lr=0.1, betas=(0.8, 0.99), eps=1e-6),
        dict(lr=1e-2, weight_decay=0.1),
        dict(lr=1e-2, clip_norm=0.3),
        dict(lr=5e-3, betas=(0.0, 0.5), weight_decay=1e-2, clip_norm=1.0),
    ],
)
def test_adam_matches_hand_computed_updates(kw):
    params = _params()
    w0 = [p.data.copy() for p in params.values()]
    opt = Adam(params, **kw)
    steps = [_grads(s) for s in range(5)]
    for g in steps:
        _set(params, g)
        opt.step()
    b1, b2 = kw.get("betas", (0.9, 0.999))
    expected = _reference_adam(
        w0, steps, kw["lr"], b1, b2, kw.get("eps", 1e-8), kw.get("weight_decay", 0.0), clip=kw.get("clip_norm")
    )
    for p, e in zip(params.values(), expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-12, atol=1e-14)


def test_first_step_moves_each_weight_by_about_lr():
    # After bias correction the first Adam step is lr * g / (|g| + eps) = ±lr (for |g| >> eps).
    p = Parameter(np.array([1.0, 1.0, 1.0]))
    opt = Adam({"p": p}, lr=0.01)
    p.grad[...] = [0.5, -3.0, 1e-3]
    opt.step()
    np.testing.assert_allclose(p.data, [0.99, 1.01, 0.99], rtol=0, atol=1e-7)


def test_float32_follows_float64():
    p32, p64 = _params(np.float32), _params(np.float64)
    for p in p64.values():
        p.data[...] = p.data.astype(np.float32)
    o32, o64 = Adam(p32, lr=1e-2, weight_decay=1e-2), Adam(p64, lr=1e-2, weight_decay=1e-2)
    for s in range(4):
        _set(p32, _grads(s, np.float32))
        _set(p64, _grads(s, np.float32))
        o32.step()
        o64.step()
    for a, b in zip(p32.values(), p64.values()):
        assert a.data.dtype == np.float32
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)


def test_state_roundtrip_continues_identically(tmp_path):
    kw = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-3, clip_norm=2.0)
    straight = _params()
    opt = Adam(straight, **kw)
    for s in range(6):
        _set(straight, _grads(s))
        opt.step()

    first = _params()
    opt1 = Adam(first, **kw)
    for s in range(2):
        _set(first, _grads(s))
        opt1.step()
    st = opt1.state_dict()
    assert set(st) == {"step", "lr"} | {f"{s}/{n}" for s in ("exp_avg", "exp_avg_sq") for n in first}
    path = tmp_path / "adam.npz"
    cnnframe.io.atomic_save_npz(path, st)
    with np.load(path, allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    resumed = OrderedDict((k, Parameter(p.data.copy(), p.weight_decay)) for k, p in first.items())
    opt2 = Adam(resumed, **kw)
    opt2.load_state_dict(loaded)
    assert opt2.step_count == 2
    for s in range(2, 6):
        _set(resumed, _grads(s))
        opt2.step()
    for a, b in zip(straight.values(), resumed.values()):
        np.testing.assert_array_equal(a.data, b.data)


def test_sgd_state_does_not_load_into_adam():
    from cnnframe.optim import SGD

    st = SGD(_params(), lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(KeyError, match="missing.*exp_avg"):
        Adam(_params()).load_state_dict(st)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=0.0), "lr must be > 0"),
        (dict(betas=(1.0, 0.999)), r"betas\[0\] must be >= 0 and < 1"),
        (dict(betas=(0.9, -0.1)), r"betas\[1\] must be >= 0 and < 1"),
        (dict(betas=0.9), "betas must be a pair"),
        (dict(betas=(0.9, 0.99, 0.9)), "betas must be a pair"),
        (dict(eps=0.0), "eps must be > 0"),
        (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(clip_norm=-1.0), "clip_norm must be > 0"),
    ],
)
def test_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        Adam(_params(), **kw)


def test_registry_and_config():
    assert cnnframe.OPTIMIZERS.get("adam") is Adam
    cfg = Adam(_params(), lr=3e-4, betas=(0.8, 0.9), eps=1e-7, weight_decay=1e-4).get_config()
    assert cfg == {
        "type": "adam", "lr": 3e-4, "betas": [0.8, 0.9], "eps": 1e-7, "weight_decay": 1e-4, "clip_norm": None
    }
    assert Adam.from_config(_params(), cfg).get_config() == cfg


def test_matches_torch_adam_when_available():
    torch = pytest.importorskip("torch")
    params = _params()
    # torch applies weight decay to every tensor: mark both as decayed here so the rules agree.
    for p in params.values():
        p.weight_decay = True
    tw = [torch.tensor(p.data.copy(), requires_grad=True) for p in params.values()]
    topt = torch.optim.Adam(tw, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05, foreach=False)
    opt = Adam(params, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    for s in range(6):
        g = _grads(s)
        _set(params, g)
        for t, gg in zip(tw, g):
            t.grad = torch.tensor(gg)
        topt.step()
        opt.step()
    for p, t in zip(params.values(), tw):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)
