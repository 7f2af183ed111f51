"""The training-step profiler: one row per layer, shares that add up, conv rates from the layer shapes."""
import numpy as np
import pytest

import cnnframe
from cnnframe.config import resolve_text
from cnnframe.data import batches
from cnnframe.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from cnnframe.profiler import conv_flops, profile_config, profile_training

CONFIG = """
data: {dataset: synthetic, samples: 40, shape: [2, 6, 6], classes: 4, test_size: 0.2, val_fraction: 0.0,
       augment: {shift: 1}}
model:
  layers:
    - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {type: flatten}
    - {type: dense, out_features: 4}
optimizer: {type: sgd, lr: 0.1, momentum: 0.9}
trainer: {batch_size: 8, early_stopping: {monitor: train_loss}, checkpoint: {monitor: train_loss}}
"""


def small_model():
    model = cnnframe.Sequential([Conv2D(3, 3, padding=1), BatchNorm2D(), ReLU(), MaxPool2D(2), Flatten(), Dense(2)],
                                input_shape=(1, 4, 4), seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 1, 4, 4)).astype(np.float32)
    y = rng.integers(0, 2, 20)
    return model, X, y


def test_rows_per_layer_and_shares_add_up():
    model, X, y = small_model()
    opt = cnnframe.SGD(model.parameters(), lr=0.1)
    prof = profile_training(model, cnnframe.SoftmaxCrossEntropy(), opt, X, y, batch_size=8, batches=3, warmup=1)
    names = [r.name for r in prof.rows]
    assert names == ["data", "Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "Flatten", "Dense", "loss", "optimizer"]
    assert [r.index for r in prof.rows[1:7]] == list(range(6))
    assert sum(prof.share(r) for r in prof.rows) == pytest.approx(1.0)
    fused = prof.rows[3:5]  # Sequential runs BatchNorm, ReLU and the 2x2 max pooling as one pass
    assert [r.fused_into for r in fused] == [1, 1] and all(r.total_s == 0 for r in fused)
    assert all(r.total_s > 0 for r in prof.rows if r not in fused)
    assert opt.step_count == 4  # warm-up steps train too
    table = prof.table()
    for name in names:
        assert name in table
    assert "100.0%" in table and "GFLOP/s" in table and "batch 8, mean of 3 steps" in table
    assert "(fused into 1)" in table
    d = prof.as_dict()
    assert len(d["rows"]) == len(names) and d["rows"][1]["gflops"][0] > 0 and d["rows"][2]["gflops"] is None


def test_profiled_steps_train_exactly_as_sequential():
    """The profiler runs the same calls as Sequential.forward/backward: the weights end up bit-identical."""
    model, X, y = small_model()
    twin, _, _ = small_model()
    loss = cnnframe.SoftmaxCrossEntropy()
    opt, twin_opt = (cnnframe.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, twin))
    profile_training(model, loss, opt, X, y, batch_size=8, batches=2, warmup=1, seed=5)
    for idx in list(batches(len(y), 8, np.random.default_rng(5)))[:3]:
        twin_opt.zero_grad()
        loss.forward(twin.forward(X[idx]), y[idx])
        twin.backward(loss.backward(), input_grad=False)
        twin_opt.step()
    for (name, a), b in zip(model.parameters().items(), twin.parameters().values()):
        assert np.array_equal(a.data, b.data), name


def test_conv_flops_follow_the_output_shape():
    conv = Conv2D(8, (3, 2), stride=2, in_channels=3)
    fwd, bwd = conv_flops(conv, (3, 9, 9), batch=5)
    ho, wo = (9 - 3) // 2 + 1, (9 - 2) // 2 + 1
    assert fwd == 2 * 5 * 8 * ho * wo * 3 * 3 * 2
    assert bwd == 2 * fwd
    assert conv_flops(conv, (3, 9, 9), batch=5, input_grad=False)[1] == fwd


def test_first_layer_skips_its_input_gradient_and_keeps_the_flag():
    model, X, y = small_model()
    prof = profile_training(model, cnnframe.SoftmaxCrossEntropy(), cnnframe.SGD(model.parameters(), lr=0.1), X, y,
                            batch_size=8, batches=1, warmup=0)
    assert prof.rows[1].flops[1] == prof.rows[1].flops[0]
    assert model.layers[0].need_input_grad is True


def test_profile_config_runs_the_configs_training_step():
    prof = profile_config(resolve_text(CONFIG), batches=2, warmup=0, title="cfg")
    assert [r.name for r in prof.rows][1:7] == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "Flatten", "Dense"]
    assert prof.batch_size == 8 and prof.dtype == "float32" and prof.table().startswith("cfg: ")


def test_bad_arguments():
    model, X, y = small_model()
    opt = cnnframe.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="batches must be >= 1"):
        profile_training(model, cnnframe.SoftmaxCrossEntropy(), opt, X, y, batches=0)
    with pytest.raises(ValueError, match="empty"):
        profile_training(model, cnnframe.SoftmaxCrossEntropy(), opt, X[:0], y[:0])
