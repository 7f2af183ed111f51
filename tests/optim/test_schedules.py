import math

import numpy as np
import pytest

import cnnframe
from cnnframe.optim.schedules import Constant, Cosine, Exponential, OneCycle, Step

EPOCHS = [0.0, 0.25, 1.0, 2.5, 3.0, 4.999, 5.0, 7.3, 10.0, 12.0]


def test_constant():
    s = Constant(0.1, 10)
    assert all(s.lr_at(e) == 0.1 for e in EPOCHS)


def test_step_formula():
    s = Step(0.1, 20, step_size=3, gamma=0.5)
    for e in EPOCHS:
        assert s.lr_at(e) == pytest.approx(0.1 * 0.5 ** math.floor(e / 3), rel=1e-15)
    assert s.lr_at(2.999) == 0.1 and s.lr_at(3.0) == 0.05
    # a fractional epoch computed with rounding error still lands in the right step
    assert s.lr_at(0.1 * 30) == pytest.approx(0.05)


def test_exponential_formula():
    s = Exponential(0.2, 10, gamma=0.9)
    for e in EPOCHS:
        assert s.lr_at(e) == pytest.approx(0.2 * 0.9**e, rel=1e-14)


def test_cosine_formula():
    s = Cosine(0.1, 10, min_lr=0.001)
    for e in EPOCHS:
        t = min(e, 10.0)
        assert s.lr_at(e) == pytest.approx(0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * t / 10)) / 2, rel=1e-14)
    assert s.lr_at(0) == 0.1 and s.lr_at(5) == pytest.approx(0.0505) and s.lr_at(10) == pytest.approx(0.001)
    assert s.lr_at(50) == pytest.approx(0.001)


def test_cosine_matches_torch_at_integer_epochs():
    torch = pytest.importorskip("torch")
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    ts = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.01)
    s = Cosine(0.1, 8, min_lr=0.01)
    for e in range(8):
        assert s.lr_at(e) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ts.step()


def test_warmup_then_cosine():
    s = Cosine(0.1, 12, warmup_epochs=2)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(0.5) == pytest.approx(0.025)
    assert s.lr_at(1.5) == pytest.approx(0.075)
    assert s.lr_at(2) == pytest.approx(0.1)
    # the cosine spans the remaining 10 epochs
    for e in (2.0, 4.5, 7.0, 11.0, 12.0):
        assert s.lr_at(e) == pytest.approx(0.1 * (1 + math.cos(math.pi * (e - 2) / 10)) / 2, abs=1e-15)


def test_warmup_from_a_start_factor_and_continuity():
    s = Step(0.2, 10, warmup_epochs=1.0, step_size=2, gamma=0.1, warmup_start_factor=0.1)
    assert s.lr_at(0) == pytest.approx(0.02)
    assert s.lr_at(0.5) == pytest.approx(0.02 + 0.5 * 0.18)
    assert s.lr_at(1 - 1e-9) == pytest.approx(0.2, rel=1e-7)
    # steps count from the end of warm-up
    assert s.lr_at(2.999) == pytest.approx(0.2) and s.lr_at(3.0) == pytest.approx(0.02)
    e = Exponential(1.0, 10, warmup_epochs=0.5, gamma=0.5)
    assert e.lr_at(0.25) == pytest.approx(0.5) and e.lr_at(1.5) == pytest.approx(0.5)
    c = Constant(0.3, 5, warmup_epochs=2)
    assert [c.lr_at(x) for x in (0, 1, 2, 4)] == pytest.approx([0.0, 0.15, 0.3, 0.3])


def test_onecycle_formula():
    s = OneCycle(0.1, 10, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    initial, final = 0.1 / 25, 0.1 / 25 / 1e4

    def cos_anneal(a, b, f):
        return b + (a - b) * (1 + math.cos(math.pi * f)) / 2

    assert s.lr_at(0) == pytest.approx(initial)
    assert s.lr_at(3) == pytest.approx(0.1)
    assert s.lr_at(10) == pytest.approx(final)
    assert s.lr_at(20) == pytest.approx(final)
    for e in (0.5, 1.5, 2.9):
        assert s.lr_at(e) == pytest.approx(cos_anneal(initial, 0.1, e / 3))
    for e in (3.1, 6.5, 9.9):
        assert s.lr_at(e) == pytest.approx(cos_anneal(0.1, final, (e - 3) / 7))
    lrs = [s.lr_at(e) for e in np.linspace(0, 10, 101)]
    assert max(lrs) == pytest.approx(0.1) and np.argmax(lrs) == 30


def test_onecycle_follows_torch_shape():
    # PyTorch counts steps: peak at step pct*T - 1, end at step T - 1. Our continuous form with the same
    # phase lengths gives the same values.
    torch = pytest.importorskip("torch")
    total = 101
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    ts = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total, pct_start=0.3,
                                             cycle_momentum=False)
    t_lrs = []
    for _ in range(total):
        t_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ts.step()
    peak_step = 0.3 * total - 1
    s = OneCycle(0.4, total - 1, pct_start=peak_step / (total - 1))
    np.testing.assert_allclose([s.lr_at(k) for k in range(total)], t_lrs, rtol=1e-10)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Constant(0, 10), "base_lr must be > 0"),
        (lambda: Constant(0.1, 0), "total_epochs must be > 0"),
        (lambda: Constant(0.1, 10, warmup_epochs=-1), "warmup_epochs must be >= 0"),
        (lambda: Constant(0.1, 10, warmup_epochs=10), "warmup_epochs .* must be smaller than total_epochs"),
        (lambda: Constant(0.1, 10, warmup_start_factor=1.5), "warmup_start_factor must be >= 0 and <= 1"),
        (lambda: Step(0.1, 10, step_size=0), "step_size must be > 0"),
        (lambda: Step(0.1, 10, step_size=2, gamma=0), "gamma must be > 0 and <= 1"),
        (lambda: Exponential(0.1, 10, gamma=1.5), "gamma must be > 0 and <= 1"),
        (lambda: Cosine(0.1, 10, min_lr=0.2), "min_lr .* must not exceed base_lr"),
        (lambda: OneCycle(0.1, 10, pct_start=1.0), "pct_start must be > 0 and < 1"),
        (lambda: OneCycle(0.1, 10, div_factor=0.5), "div_factor must be >= 1"),
        (lambda: OneCycle(0.1, 10, warmup_epochs=1), "warmup_epochs must be 0"),
    ],
)
def test_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_step_size_is_required():
    with pytest.raises(TypeError):
        Step(0.1, 10)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "1", None, True])
def test_lr_at_rejects_bad_epochs(bad):
    with pytest.raises(ValueError, match="epoch must be a finite number >= 0"):
        Cosine(0.1, 10).lr_at(bad)


@pytest.mark.parametrize(
    "sched",
    [
        Constant(0.1, 10, warmup_epochs=1),
        Step(0.1, 10, step_size=3, gamma=0.5),
        Exponential(0.1, 10, gamma=0.8, warmup_epochs=0.5, warmup_start_factor=0.01),
        Cosine(0.1, 10, min_lr=1e-4),
        OneCycle(0.1, 10, pct_start=0.25, div_factor=10, final_div_factor=100),
    ],
)
def test_registry_config_roundtrip_is_the_same_function(sched):
    cfg = sched.get_config()
    again = cnnframe.SCHEDULES.get(cfg["type"]).from_config(cfg)
    assert again.get_config() == cfg
    xs = np.linspace(0, 12, 49)
    assert [again(x) for x in xs] == [sched.lr_at(x) for x in xs]
    assert type(again).registered_name == cfg["type"]


def test_drives_an_optimizer_and_resume_needs_only_the_epoch():
    from cnnframe.layers.base import Parameter
    from cnnframe.optim import SGD

    sched = Cosine(0.1, 4, warmup_epochs=1)
    p = Parameter(np.ones(2))
    opt = SGD({"p": p}, lr=sched.base_lr)
    seen = []
    for epoch in range(4):
        for b in range(5):
            opt.lr = sched.lr_at(epoch + b / 5)
            seen.append(opt.lr)
    assert seen[0] == 0.0 and max(seen) == pytest.approx(0.1)
    rebuilt = Cosine.from_config(sched.get_config())
    assert [rebuilt.lr_at(e + b / 5) for e in range(2, 4) for b in range(5)] == seen[10:]
