"""The training-step profiler: one row per layer (a block's children under it), shares that add up, conv rates
from the layer shapes."""
import numpy as np
import pytest

import cnnframe
from cnnframe.config import resolve_text
from cnnframe.data import batches
from cnnframe.layers import BatchNorm2D, Concat, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Residual
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
    assert [r.fused_into for r in fused] == ["1", "1"] and all(r.total_s == 0 for r in fused)
    assert all(r.total_s > 0 for r in prof.rows if r not in fused)
    assert opt.step_count == 4  # warm-up steps train too
    table = prof.table()
    for name in names:
        assert name in table
    assert "100.0%" in table and "GFLOP/s" in table and "batch 8, mean of 3 steps" in table
    assert "(fused into 1)" in table
    d = prof.as_dict()
    assert len(d["rows"]) == len(names) and d["rows"][1]["gflops"][0] > 0 and d["rows"][2]["gflops"] is None


@pytest.mark.parametrize("make", [small_model, lambda: block_model()[:3]], ids=["plain", "blocks"])
def test_profiled_steps_train_exactly_as_sequential(make):
    """The profiler runs the same calls as Sequential.forward/backward (the timers around a block's children
    change nothing): the weights end up bit-identical."""
    model, X, y = make()
    twin, _, _ = make()
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


def block_model():
    """A Residual with a projection shortcut, then a Concat whose first branch fuses BatchNorm, ReLU and max
    pooling and whose second holds a Residual (depth 2); every convolution is inside a block.  Returns the
    model, data (3 batches of 8) and the Concat's nested Residual."""
    residual = Residual([Conv2D(4, 3, padding=1), BatchNorm2D(), ReLU(), Conv2D(4, 3, padding=1), BatchNorm2D()],
                        shortcut=[Conv2D(4, 1)], activation="relu")
    inner = Residual([Conv2D(4, 3, padding=1)])
    concat = Concat([[Conv2D(2, 1), BatchNorm2D(), ReLU(), MaxPool2D(2)], [MaxPool2D(2), inner]])
    model = cnnframe.Sequential([residual, concat, Flatten(), Dense(2)], input_shape=(2, 4, 4), seed=0)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((24, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 2, 24)
    return model, X, y, inner


def profile_blocks(batches=3):
    model, X, y, inner = block_model()
    prof = profile_training(model, cnnframe.SoftmaxCrossEntropy(), cnnframe.SGD(model.parameters(), lr=0.1), X, y,
                            batch_size=8, batches=batches, warmup=1)
    return model, prof, inner


def all_layers(model):
    """Every layer of the model, blocks' children at any depth included."""
    def below(layer):
        children = getattr(layer, "named_children", None)
        return [layer] + [x for _, c in (children() if children else ()) for x in below(c)]
    return [x for layer in model.layers for x in below(layer)]


def test_blocks_children_get_rows_by_path_under_their_block():
    model, prof, _ = profile_blocks()
    nested = [(r.path, r.name, r.depth, r.parent, r.shape) for r in prof.rows if r.depth > 0]
    assert nested == [
        ("0.layers.0", "Conv2D", 1, "0", (4, 4, 4)), ("0.layers.1", "BatchNorm2D", 1, "0", (4, 4, 4)),
        ("0.layers.2", "ReLU", 1, "0", (4, 4, 4)), ("0.layers.3", "Conv2D", 1, "0", (4, 4, 4)),
        ("0.layers.4", "BatchNorm2D", 1, "0", (4, 4, 4)), ("0.shortcut.0", "Conv2D", 1, "0", (4, 4, 4)),
        ("0.activation", "ReLU", 1, "0", (4, 4, 4)),
        ("1.branches.0.0", "Conv2D", 1, "1", (2, 4, 4)), ("1.branches.0.1", "BatchNorm2D", 1, "1", (2, 4, 4)),
        ("1.branches.0.2", "ReLU", 1, "1", (2, 4, 4)), ("1.branches.0.3", "MaxPool2D", 1, "1", (2, 2, 2)),
        ("1.branches.1.0", "MaxPool2D", 1, "1", (4, 2, 2)), ("1.branches.1.1", "Residual", 1, "1", (4, 2, 2)),
        ("1.branches.1.1.layers.0", "Conv2D", 2, "1.branches.1.1", (4, 2, 2)),
    ]
    paths = [r.path for r in prof.rows]
    assert paths.index("0") < paths.index("0.layers.0") < paths.index("0.activation") < paths.index("1")
    table = prof.table()
    assert "\n     0.layers.0  Conv2D " in table and "\n       1.branches.1.1.layers.0  Conv2D " in table


def test_top_level_rows_make_the_step_and_children_fit_in_their_block():
    _, prof, _ = profile_blocks()
    top = prof.top_rows()
    assert [r.name for r in top] == ["data", "Residual", "Concat", "Flatten", "Dense", "loss", "optimizer"]
    assert prof.step_ms == pytest.approx(sum(prof.ms(r) for r in top))
    assert sum(prof.share(r) for r in top) == pytest.approx(1.0)
    assert sum(prof.share(r) for r in prof.rows) > 1.0  # the children's time is in their blocks' rows too
    for block in ("0", "1", "1.branches.1.1"):
        row = next(r for r in prof.rows if r.path == block)
        children = [r for r in prof.rows if r.parent == block]
        assert 0 < sum(r.forward_s for r in children) <= row.forward_s
        assert 0 < sum(r.backward_s for r in children) <= row.backward_s


def test_convolutions_inside_blocks_count_once_in_the_conv_share():
    model, prof, inner = profile_blocks()
    convs = [r for r in prof.rows if r.name == "Conv2D"]
    assert len(convs) == 5 and all(r.depth > 0 and r.is_conv for r in convs)
    assert not any(r.is_conv for r in prof.top_rows())
    assert prof.conv_share() > 0
    assert prof.conv_share() == pytest.approx(sum(prof.share(r) for r in convs))
    assert f"convolutions {100 * prof.conv_share():.1f}% of the step" in prof.table()
    # flops from the inputs each conv saw; the first children of the first layer skip dL/dx (training never
    # uses the model's input gradient), the others compute it
    body0, short = model.layers[0].layers[0], model.layers[0].shortcut[0]
    by_path = {r.path: r for r in prof.rows}
    assert by_path["0.layers.0"].flops == conv_flops(body0, (2, 4, 4), 8, input_grad=False)
    assert by_path["0.shortcut.0"].flops == conv_flops(short, (2, 4, 4), 8, input_grad=False)
    assert by_path["0.layers.3"].flops == conv_flops(model.layers[0].layers[3], (4, 4, 4), 8)
    assert by_path["1.branches.1.1.layers.0"].flops == conv_flops(inner.layers[0], (4, 2, 2), 8)
    assert all(a > 0 and b > 0 for a, b in (prof.as_dict()["rows"][prof.rows.index(r)]["gflops"] for r in convs))


def test_children_fused_by_their_block_are_marked():
    _, prof, _ = profile_blocks()
    by_path = {r.path: r for r in prof.rows}
    assert by_path["0.layers.2"].fused_into == "0.layers.1"  # BatchNorm then ReLU
    assert by_path["1.branches.0.2"].fused_into == "1.branches.0.1"  # BatchNorm, ReLU and 2x2 max pooling
    assert by_path["1.branches.0.3"].fused_into == "1.branches.0.1"
    fused = {p for p, r in by_path.items() if r.fused_into is not None}
    assert fused == {"0.layers.2", "1.branches.0.2", "1.branches.0.3"}
    assert all(by_path[p].total_s == 0 for p in fused)
    assert all(r.total_s > 0 for p, r in by_path.items() if p is not None and p not in fused)
    table = prof.table()
    assert "(fused into 0.layers.1)" in table and table.count("(fused into 1.branches.0.1)") == 2


def test_as_dict_rebuilds_the_tree():
    _, prof, _ = profile_blocks()
    rows = prof.as_dict()["rows"]
    depth = {r["path"]: r["depth"] for r in rows if r["path"] is not None}
    for r in rows:
        if r["depth"] == 0:
            assert r["parent"] is None
        else:
            assert depth[r["parent"]] == r["depth"] - 1 and r["path"].startswith(r["parent"] + ".")
    by_path = {r["path"]: r for r in rows}
    assert by_path["0.shortcut.0"]["shape"] == (4, 4, 4) and by_path["0.shortcut.0"]["gflops"][0] > 0
    assert by_path["1.branches.0.3"]["fused_into"] == "1.branches.0.1"
    assert sum(r["share"] for r in rows if r["depth"] == 0) == pytest.approx(1.0)


def test_no_timers_are_left_on_the_layers():
    model, X, y, _ = block_model()
    calls = []
    relu = dict(model.layers[0].named_children())["activation"]
    own = relu.forward = lambda x, method=relu.forward: calls.append(1) or method(x)  # the user's own attribute
    prof = profile_training(model, cnnframe.SoftmaxCrossEntropy(), cnnframe.SGD(model.parameters(), lr=0.1), X, y,
                            batch_size=8, batches=1, warmup=0)
    assert calls == [1] and next(r for r in prof.rows if r.path == "0.activation").forward_s > 0  # timed through
    assert vars(relu)["forward"] is own  # and given back
    del relu.forward
    names = ("forward", "backward", "forward_fused", "backward_fused")
    assert not any(name in vars(layer) for layer in all_layers(model) for name in names)


def test_no_timers_are_left_when_a_layer_raises(monkeypatch):
    model, X, y, _ = block_model()

    def fail(self, grad_out, absorbed):
        raise RuntimeError("backward failed")

    monkeypatch.setattr(BatchNorm2D, "backward_fused", fail)
    with pytest.raises(RuntimeError, match="backward failed"):
        profile_training(model, cnnframe.SoftmaxCrossEntropy(), cnnframe.SGD(model.parameters(), lr=0.1), X, y,
                         batch_size=8, batches=2, warmup=1)
    names = ("forward", "backward", "forward_fused", "backward_fused")
    assert not any(name in vars(layer) for layer in all_layers(model) for name in names)


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
