"""The weight average: the update rule with its warm-up, BatchNorm statistics, swapping, its saved state."""
import numpy as np
import pytest

import cnnframe
from cnnframe.ema import WeightAverage, swapped
from cnnframe.layers import BatchNorm1D, Dense


def small_model():
    model = cnnframe.Sequential([Dense(5), BatchNorm1D(), Dense(3)], input_shape=(4,))
    model.initialize(0)
    return model


def perturb(model, rng):
    """Change every weight and the BatchNorm statistics (one training-mode forward)."""
    for p in model.parameters().values():
        p.data += rng.standard_normal(p.data.shape).astype(p.data.dtype)
    model.train()
    model.forward(rng.standard_normal((8, 4)).astype(np.float32))


def test_update_rule_with_warm_up_covers_parameters_and_buffers():
    model, rng = small_model(), np.random.default_rng(1)
    ema = WeightAverage(model, 0.5)
    expected = {k: np.array(a, dtype=np.float64) for k, a in model.state_dict().items()}
    assert set(expected) >= {"1.running_mean", "1.running_var"}
    for t in range(1, 7):
        perturb(model, rng)
        d = min(0.5, (1 + t) / (10 + t))  # 2/11, 3/12, ... then 0.5 from t = 8 on
        assert ema.factor() == d
        ema.update()
        for k, a in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * a
    assert ema.updates == 6
    for k, a in ema.average.items():
        np.testing.assert_allclose(a, expected[k], rtol=1e-5, atol=1e-6)
        assert a.dtype == np.float32
    assert not np.allclose(ema.average["0.weight"], model.state_dict()["0.weight"])


def test_swapped_in_holds_the_averages_and_restores_the_model_even_on_error():
    model, rng = small_model(), np.random.default_rng(2)
    ema = WeightAverage(model, 0.9)
    perturb(model, rng)
    ema.update()
    live = {k: a.copy() for k, a in model.state_dict().items()}
    with ema.swapped_in():
        for k, a in model.state_dict().items():
            assert np.array_equal(a, ema.average[k])
    with pytest.raises(RuntimeError), swapped(model, ema.average):
        raise RuntimeError("during an evaluation")
    for k, a in model.state_dict().items():
        assert np.array_equal(a, live[k]), k
    with swapped(model, None):
        assert np.array_equal(model.state_dict()["0.weight"], live["0.weight"])


def test_saved_state_continues_bit_identically():
    model, rng = small_model(), np.random.default_rng(3)
    ema = WeightAverage(model, 0.99)
    for _ in range(3):
        perturb(model, rng)
        ema.update()
    state = ema.state_dict()
    other = WeightAverage(model, 0.99)
    other.load_state_dict(state)
    assert other.updates == 3
    perturb(model, rng)
    ema.update()
    other.update()
    for k in ema.average:
        assert np.array_equal(ema.average[k], other.average[k]), k
    state["average"].pop("0.bias")
    with pytest.raises(KeyError, match="0.bias"):
        other.load_state_dict(state)


@pytest.mark.parametrize("decay", [0, 1, 1.5, float("nan"), "0.9"])
def test_decay_must_lie_strictly_between_zero_and_one(decay):
    with pytest.raises((ValueError, TypeError), match="decay"):
        WeightAverage(small_model(), decay)
