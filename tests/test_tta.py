"""Test-time augmentation: the averaged prediction against a plain loop over the shifted copies."""
import numpy as np
import pytest

import cnnframe
from cnnframe.augment import shift_image_batch  # checked against a loop in test_augment.py
from cnnframe.layers import Conv2D, Dense, Flatten, ReLU
from cnnframe.losses import MSE, SoftmaxCrossEntropy, softmax
from cnnframe.trainer import evaluate_model
from cnnframe.tta import averaged_outputs, tta_shifts


def small_model():
    model = cnnframe.Sequential([Conv2D(3, 3, padding=1, dtype="float64"), ReLU(), Flatten(),
                                 Dense(4, dtype="float64")], input_shape=(1, 5, 5))
    model.initialize(7)
    return model.eval()


def test_shifts_unshifted_first_then_the_square():
    assert tta_shifts(0) == [(0, 0)]
    s = tta_shifts(1)
    assert s[0] == (0, 0) and len(s) == 9 and set(s) == {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert len(set(tta_shifts(2))) == 25


def test_averaged_probabilities_and_the_loss_of_the_average():
    model = small_model()
    x = np.random.default_rng(0).standard_normal((6, 1, 5, 5))
    y = np.array([0, 1, 2, 3, 0, 1])
    p_bar = np.mean([softmax(model.forward(shift_image_batch(x, a, b))) for a in (-1, 0, 1) for b in (-1, 0, 1)], axis=0)
    out = averaged_outputs(model, x, 1, "softmax")
    np.testing.assert_allclose(softmax(out), p_bar, rtol=1e-12)
    res = evaluate_model(model, SoftmaxCrossEntropy(), x, y, 4, tta_shift=1)
    np.testing.assert_allclose(res["probs"], p_bar, rtol=1e-12)
    assert res["loss"] == pytest.approx(-np.mean(np.log(p_bar[np.arange(6), y])), rel=1e-12)  # of p̄ itself
    assert np.array_equal(res["pred"], p_bar.argmax(axis=1))
    plain = evaluate_model(model, SoftmaxCrossEntropy(), x, y, 4)
    assert not np.allclose(plain["probs"], res["probs"])  # the copies changed the prediction


def test_outputs_are_averaged_as_they_are_without_softmax():
    model = small_model()
    x = np.random.default_rng(1).standard_normal((3, 1, 5, 5))
    mean = np.mean([model.forward(shift_image_batch(x, a, b)) for a in (-1, 0, 1) for b in (-1, 0, 1)], axis=0)
    np.testing.assert_allclose(averaged_outputs(model, x, 1, None), mean, rtol=1e-12)
    res = evaluate_model(model, MSE(), x, np.array([0, 1, 2]), 4, tta_shift=1)
    np.testing.assert_allclose(res["probs"], mean, rtol=1e-12)
