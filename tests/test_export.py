"""ONNX export: every built-in layer and every shipped config's model agree with cnnframe in onnxruntime."""
import glob
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import cnnframe as cf  # noqa: E402
from cnnframe.cli import main  # noqa: E402
from cnnframe.config import build_dataset, build_layers, load_config  # noqa: E402
from cnnframe.export import (  # noqa: E402
    ExportError,
    export_onnx,
    read_metadata,
    reference_outputs,
    run_onnxruntime,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def randomize_state(model, seed=0):
    """Non-trivial BatchNorm parameters and running statistics (the defaults 1, 0, 0, 1 would hide mistakes)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (cf.BatchNorm1D, cf.BatchNorm2D)):
            p, b = layer.parameters(), layer.buffers()
            p["weight"].data[...] = rng.uniform(0.5, 1.5, p["weight"].shape)
            p["bias"].data[...] = rng.normal(0, 0.5, p["bias"].shape)
            b["running_mean"][...] = rng.normal(0, 0.5, b["running_mean"].shape)
            b["running_var"][...] = rng.uniform(0.3, 2.0, b["running_var"].shape)
    return model


def max_abs_diff(model, proto, output, batch, seed=1):
    x = np.random.default_rng(seed).normal(0, 2, (batch,) + tuple(model.input_shape)).astype(np.float32)
    got = run_onnxruntime(proto, x)
    ref = reference_outputs(model, x, output)
    assert got.shape == ref.shape == (batch,) + tuple(model.shapes[-1])
    return float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))


def assert_graph_basics(proto):
    assert proto.ir_version == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    onnx.checker.check_model(proto, full_check=True)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N" and not batch.HasField("dim_value")
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    ops = {n.op_type for n in proto.graph.node}
    assert "Reshape" not in ops and "Dropout" not in ops
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in proto.graph.initializer)


# Each built-in layer with hyper-parameters that exercise its ONNX attributes; (factory, per-sample input shape).
LAYER_CASES = {
    "conv-3x3-pad1": (lambda: [cf.Conv2D(4, 3, padding=1)], (2, 7, 7)),
    "conv-nonsquare-stride-dilation": (
        lambda: [cf.Conv2D(5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1))], (3, 9, 8)),
    "conv-1x1-stride2-nobias": (lambda: [cf.Conv2D(3, 1, stride=2, bias=False)], (2, 7, 5)),
    "conv-grouped": (lambda: [cf.Conv2D(6, 3, padding=1, groups=2)], (4, 6, 5)),
    "conv-depthwise-stride2": (lambda: [cf.Conv2D(3, 3, stride=2, padding=1, groups=3)], (3, 7, 7)),
    "maxpool-2": (lambda: [cf.MaxPool2D(2)], (3, 8, 8)),
    "maxpool-3x2-stride-pad": (lambda: [cf.MaxPool2D((3, 2), stride=(2, 1), padding=1)], (2, 7, 6)),
    "avgpool-2": (lambda: [cf.AvgPool2D(2)], (3, 8, 6)),
    "avgpool-3-stride2-pad1": (lambda: [cf.AvgPool2D(3, stride=2, padding=1)], (2, 7, 6)),
    "avgpool-2x3-pad-0x1": (lambda: [cf.AvgPool2D((2, 3), stride=1, padding=(0, 1))], (2, 5, 6)),
    "globalavgpool": (lambda: [cf.GlobalAvgPool2D()], (3, 5, 4)),
    "batchnorm2d": (lambda: [cf.BatchNorm2D(eps=1e-3)], (3, 5, 4)),
    "batchnorm1d": (lambda: [cf.BatchNorm1D()], (6,)),
    "flatten-dense": (lambda: [cf.Flatten(), cf.Dense(4)], (2, 3, 3)),
    "dense-nobias": (lambda: [cf.Dense(5, bias=False)], (6,)),
    "dropout": (lambda: [cf.Dropout(0.5)], (2, 3, 3)),
    "relu": (lambda: [cf.ReLU()], (2, 3, 3)),
    "leakyrelu": (lambda: [cf.LeakyReLU(0.2)], (2, 3, 3)),
    "sigmoid": (lambda: [cf.Sigmoid()], (2, 3, 3)),
    "tanh": (lambda: [cf.Tanh()], (2, 3, 3)),
    "softmax-4d": (lambda: [cf.Softmax()], (4, 3, 3)),
    "residual-identity-relu": (
        lambda: [cf.Residual([cf.Conv2D(3, 3, padding=1), cf.BatchNorm2D(), cf.ReLU(), cf.Conv2D(3, 3, padding=1)],
                             activation="relu")], (3, 6, 5)),
    "residual-strided-projection": (
        lambda: [cf.Residual([cf.Conv2D(4, 3, stride=2, padding=1), cf.BatchNorm2D()],
                             shortcut=[cf.Conv2D(4, 1, stride=2), cf.BatchNorm2D()])], (2, 7, 6)),
    "concat-identity-and-branches": (
        lambda: [cf.Concat([[], [cf.Conv2D(2, 1)], [cf.Conv2D(3, 3, padding=1), cf.ReLU()]])], (2, 5, 5)),
    "concat-inside-residual": (
        lambda: [cf.Residual([cf.Concat([[cf.Conv2D(1, 1)], [cf.Conv2D(2, 3, padding=1)]])])], (3, 4, 4)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_each_builtin_layer_matches_onnxruntime(case):
    factory, shape = LAYER_CASES[case]
    model = randomize_state(cf.Sequential(factory(), input_shape=shape, seed=3))
    model.train()  # export and the reference use eval mode whatever the model's mode (Dropout, BatchNorm)
    proto = export_onnx(model, None, output="raw")
    assert_graph_basics(proto)
    for batch in (1, 7):
        diff, scale = max_abs_diff(model, proto, "raw", batch)
        assert diff <= 2e-6 * max(1.0, scale), (case, batch, diff)
    assert model.training  # restored


def test_layer_attributes_are_explicit():
    model = cf.Sequential([cf.Conv2D(2, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
                           cf.AvgPool2D(3, stride=1, padding=1), cf.MaxPool2D(2, padding=1)],
                          input_shape=(1, 9, 9), seed=0)
    nodes = {n.op_type: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in export_onnx(model, None, output="raw").graph.node}
    assert nodes["Conv"]["pads"] == [1, 0, 1, 0] and nodes["Conv"]["strides"] == [2, 1]
    assert nodes["Conv"]["dilations"] == [1, 2] and nodes["Conv"]["kernel_shape"] == [3, 2]
    assert nodes["Conv"]["group"] == 1
    assert nodes["AveragePool"]["count_include_pad"] == 1  # cnnframe counts padded zeros (math.md, Pooling)
    assert nodes["MaxPool"]["pads"] == [1, 1, 1, 1]


def test_avgpool_padding_differs_from_the_onnx_default():
    """Guards the explicit count_include_pad: without it onnxruntime's border values would differ."""
    model = cf.Sequential([cf.AvgPool2D(3, stride=1, padding=1)], input_shape=(1, 4, 4))
    proto = export_onnx(model, None, output="raw")
    for node in proto.graph.node:
        for a in node.attribute:
            if a.name == "count_include_pad":
                a.i = 0
    x = np.ones((1, 1, 4, 4), np.float32)
    assert run_onnxruntime(proto, x)[0, 0, 0, 0] == pytest.approx(1.0)  # ONNX's default: padding left out
    assert model.forward(x)[0, 0, 0, 0] == pytest.approx(4 / 9)         # cnnframe: padding counted


def config_model(path):
    cfg = load_config(path)
    shape, _ = build_dataset(cfg).describe()
    model = cf.Sequential(build_layers(cfg), input_shape=shape)
    model.initialize(cfg["trainer"]["seed"])
    return randomize_state(model, cfg["trainer"]["seed"])


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_each_shipped_config_model_matches_onnxruntime(path):
    model = config_model(path)
    proto = export_onnx(model, None)
    assert_graph_basics(proto)
    assert proto.graph.output[0].name == "probabilities" and proto.graph.node[-1].op_type == "Softmax"
    for batch in (1, 7):
        diff, _ = max_abs_diff(model, proto, "probabilities", batch)
        assert diff <= 1e-5, (path, batch, diff)


def test_float64_model_is_exported_as_float32_and_still_matches():
    layers = [cf.Conv2D(4, 3, padding=1, dtype="float64"), cf.BatchNorm2D(dtype="float64"), cf.ReLU(dtype="float64"),
              cf.AvgPool2D(2, dtype="float64"), cf.Flatten(dtype="float64"), cf.Dense(5, dtype="float64")]
    model = randomize_state(cf.Sequential(layers, input_shape=(1, 8, 8), seed=0))
    with pytest.warns(UserWarning, match="float64.*exported as float32"):
        proto = export_onnx(model, None)
    assert_graph_basics(proto)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert read_metadata(proto)["model_dtype"] == "float64"
    for batch in (1, 7):
        diff, _ = max_abs_diff(model, proto, "probabilities", batch)
        assert diff <= 1e-5


def test_metadata_records_preprocessing_output_and_classes(tmp_path):
    model = cf.Sequential([cf.Flatten(), cf.Dense(3)], input_shape=(1, 2, 2), seed=0)
    path = tmp_path / "m.onnx"
    proto = model.to_onnx(str(path), preprocessing={"offset": 1, "scale": 0.5}, class_names=["cat", "dog", "emu"])
    assert path.read_bytes() == proto.SerializeToString()
    meta = read_metadata(onnx.load(str(path)))
    assert meta["output"] == "probabilities" and meta["cnnframe_version"] == cf.__version__
    assert meta["class_names"] == ["cat", "dog", "emu"]
    pre = meta["preprocessing"]
    assert (pre["offset"], pre["scale"], pre["layout"], pre["input_shape"]) == (1.0, 0.5, "NCHW", [1, 2, 2])
    raw = export_onnx(model, None, output="raw")
    assert raw.graph.output[0].name == "output" and "class_names" not in read_metadata(raw)
    assert read_metadata(raw)["output"] == "raw"


def test_metadata_records_the_models_own_preprocessing_as_checkpoints_do(tmp_path):
    """A model carrying its preprocessing (as the trainer and load_checkpoint leave it) exports the same record."""
    from cnnframe.data import Preprocessing

    model = cf.Sequential([cf.Flatten(), cf.Dense(2)], input_shape=(3, 4, 5), seed=0)
    model.preprocessing = Preprocessing.for_images("rgb", [4, 5], offset=0.0, scale=1 / 255)
    model.class_names = ["cat", "dog"]
    model.save(str(tmp_path / "m.npz"))
    loaded = cf.load(str(tmp_path / "m.npz"))
    meta = read_metadata(loaded.to_onnx(str(tmp_path / "m.onnx")))
    stored = cf.checkpoint.read_meta(str(tmp_path / "m.npz"))["data"]["preprocessing"]
    assert meta["preprocessing"] == {**stored, "input_shape": [3, 4, 5], "dtype": "float32"}
    assert meta["preprocessing"]["decode"]["mode"] == "rgb" and meta["class_names"] == ["cat", "dog"]


@pytest.mark.parametrize("kwargs, match", [
    ({"output": "logits"}, "output must be one of probabilities, raw"),
    ({"class_names": ["a", "b"]}, "2 class names given for a model with 3 outputs"),
    ({"class_names": "abc"}, "must be a list of names"),
    ({"preprocessing": {"scale": float("nan")}}, "scale must be a finite number"),
])
def test_bad_options(kwargs, match):
    model = cf.Sequential([cf.Dense(3)], input_shape=(4,), seed=0)
    with pytest.raises(ExportError, match=match):
        export_onnx(model, None, **kwargs)


def test_unbuilt_model_is_refused():
    with pytest.raises(ExportError, match="not built"):
        export_onnx(cf.Sequential([cf.Dense(3)]), None)


# -- plugin layers: the to_onnx hook -------------------------------------------------------------------------------
class Swish(cf.Layer):
    """y = x·σ(x), without an ONNX export."""

    def forward(self, x):
        from scipy.special import expit

        self._x = x
        return x * expit(x)

    def backward(self, g):
        raise NotImplementedError


class ExportableSwish(Swish):
    def to_onnx(self, graph, x, input_shape):
        return graph.node("Mul", [x, graph.node("Sigmoid", [x])])


class ChannelScale(cf.Layer):
    """y[n, c, ...] = γ[c]·x[n, c, ...], exported with an initializer of shape (C, 1, 1)."""

    def build(self, input_shape):
        self.add_parameter("weight", np.linspace(0.5, 2.0, input_shape[0]))
        super().build(input_shape)

    def forward(self, x):
        self._ensure_built(x)
        return x * self._params["weight"].data.reshape(-1, 1, 1)

    def backward(self, g):
        raise NotImplementedError

    def to_onnx(self, graph, x, input_shape):
        gamma = graph.weight(self._params["weight"].data.reshape(-1, 1, 1), "gamma")
        return graph.node("Mul", [x, gamma])


class MyConv(cf.Conv2D):
    """A subclass of a built-in layer may compute something else, so it does not inherit the export."""


def test_plugin_layer_without_hook_is_a_clear_error():
    model = cf.Sequential([cf.Flatten(), Swish(), cf.Dense(3)], input_shape=(2, 2, 2), seed=0)
    with pytest.raises(ExportError, match=r"layer 1 \(Swish, from .*\) has no ONNX export: .*to_onnx\(graph, x, "
                                          r"input_shape\).*docs/extending.md"):
        export_onnx(model, None)
    model = cf.Sequential([MyConv(2, 3)], input_shape=(1, 5, 5), seed=0)
    with pytest.raises(ExportError, match=r"layer 0 \(MyConv, a subclass of Conv2D"):
        export_onnx(model, None)


def test_plugin_layers_with_hooks_export_and_match():
    model = cf.Sequential([cf.Conv2D(3, 3), ChannelScale(), ExportableSwish(), cf.Flatten(), cf.Dense(4)],
                          input_shape=(1, 6, 6), seed=0)
    proto = export_onnx(model, None)
    assert_graph_basics(proto)
    names = [t.name for t in proto.graph.initializer]
    assert "1.ChannelScale/gamma" in names and "0.conv2d/weight" in names
    for batch in (1, 7):
        assert max_abs_diff(model, proto, "probabilities", batch)[0] <= 1e-5


class Residual(cf.Layer):
    """y = x + f(x) for a chain f of layers that keeps the shape; exports its chain with graph.add_layers."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def build(self, input_shape):
        cf.Sequential(self.inner, input_shape=input_shape, seed=5)
        super().build(input_shape)

    def train(self, mode=True):
        for layer in self.inner:
            layer.train(mode)
        return super().train(mode)

    def forward(self, x):
        self._ensure_built(x)
        y = x
        for layer in self.inner:
            y = layer.forward(y)
        return x + y

    def backward(self, g):
        raise NotImplementedError

    def to_onnx(self, graph, x, input_shape):
        return graph.node("Add", [x, graph.add_layers(self.inner, x, input_shape)])


def test_block_layer_exports_its_inner_layers():
    block = Residual([cf.Conv2D(3, 3, padding=1), cf.BatchNorm2D(), cf.ReLU(), cf.Conv2D(3, 1)])
    model = cf.Sequential([cf.Conv2D(3, 3, padding=1), block, cf.GlobalAvgPool2D(), cf.Dense(4)], input_shape=(1, 6, 6),
                          seed=0)
    randomize_state(cf.Sequential(block.inner))
    proto = export_onnx(model, None)
    assert_graph_basics(proto)
    assert "1.Residual/1.batchnorm2d/running_var" in [t.name for t in proto.graph.initializer]
    for batch in (1, 7):
        assert max_abs_diff(model, proto, "probabilities", batch)[0] <= 1e-5
    inner_without_hook = cf.Sequential([Residual([cf.ReLU(), Swish()])], input_shape=(2, 3, 3))
    with pytest.raises(ExportError, match=r"layer 0.Residual/1 \(Swish, from .*\) has no ONNX export"):
        export_onnx(inner_without_hook, None)


def test_broken_hooks_are_reported_with_the_layer():
    class ReturnsNothing(ExportableSwish):
        def to_onnx(self, graph, x, input_shape):
            graph.node("Relu", [x])

    class Fails(ExportableSwish):
        def to_onnx(self, graph, x, input_shape):
            raise RuntimeError("boom")

    class BadGraph(ExportableSwish):
        def to_onnx(self, graph, x, input_shape):
            return graph.node("Flatten", [x], axis=1)  # changes the shape the model declares

    for cls, match in ((ReturnsNothing, r"layer 0 \(ReturnsNothing\): to_onnx returned None"),
                       (Fails, r"layer 0 \(Fails\): ONNX export failed: RuntimeError: boom"),
                       (BadGraph, "does not pass onnx.checker")):
        with pytest.raises(ExportError, match=match):
            export_onnx(cf.Sequential([cls()], input_shape=(2, 3, 3)), None, output="raw")


# -- the command -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", TINY, "--quiet", "--no-report", "--run-dir", str(root)]) == 0
    (run,) = glob.glob(os.path.join(str(root), "digits-tiny-*"))
    return run


def test_export_command_end_to_end(tiny_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    out = tmp_path / "digits.onnx"
    capsys.readouterr()
    assert main(["export", tiny_run, str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {out} (opset 17, IR version 8)" in stdout and "'probabilities' [N, 10]" in stdout
    assert "onnxruntime agrees with cnnframe" in stdout
    proto = onnx.load(str(out))
    assert_graph_basics(proto)
    meta = read_metadata(proto)
    assert meta["output"] == "probabilities"
    pre = meta["preprocessing"]
    assert pre["offset"] == 0.0 and pre["scale"] == 1 / 16  # digits' pixels 0..16 are fed as x / 16

    # The metadata is enough to use the file: raw pixels, preprocessed as it says, give predict's probabilities.
    raw = load_digits().images[:7].reshape(7, 1, 8, 8)
    np.save(tmp_path / "images.npy", raw)
    assert main(["predict", tiny_run, "--input", str(tmp_path / "images.npy"), "--output", str(tmp_path / "p.csv")]) \
        == 0
    predicted = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1)[:, 2:]
    probs = run_onnxruntime(out, (raw - pre["offset"]) * pre["scale"])
    np.testing.assert_allclose(probs, predicted, atol=1e-5)  # the CSV has 6 decimals

    assert main(["export", tiny_run, str(tmp_path / "raw.onnx"), "--outputs", "raw", "--no-check"]) == 0
    assert "onnxruntime agrees" not in capsys.readouterr().out
    assert onnx.load(str(tmp_path / "raw.onnx")).graph.output[0].name == "output"


def test_export_command_says_the_run_evaluates_with_test_time_shifts(tiny_run, tmp_path, capsys):
    assert main(["export", tiny_run, str(tmp_path / "plain.onnx"), "--no-check"]) == 0
    assert "test-time shifts" not in capsys.readouterr().err  # digits-tiny evaluates one pass
    root = tmp_path / "runs"
    assert main(["train", TINY, "--quiet", "--no-report", "--run-dir", str(root), "--set", "trainer.epochs=1",
                 "--set", "data.tta.shift=1"]) == 0
    capsys.readouterr()
    assert main(["export", str(root / "latest"), str(tmp_path / "m.onnx"), "--no-check"]) == 0
    err = capsys.readouterr().err
    assert "test-time shifts (data.tta.shift: 1, the average over 9 copies" in err


def test_export_command_without_config_or_preprocessing(tmp_path, capsys):
    """A model saved from Python: no config (so no loss: probabilities by default) and no preprocessing, said so."""
    model = cf.Sequential([cf.Conv2D(2, 3), cf.Flatten(), cf.Dense(3)], input_shape=(1, 5, 5), seed=0)
    model.save(str(tmp_path / "m.npz"))
    assert main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    out, err = capsys.readouterr()
    assert "records no preprocessing; the exported model takes inputs as they are" in err
    assert "onnxruntime agrees" in out
    meta = read_metadata(onnx.load(str(tmp_path / "m.onnx")))
    assert meta["output"] == "probabilities" and meta["preprocessing"]["scale"] == 1.0


def test_export_command_fails_when_onnxruntime_disagrees(tiny_run, tmp_path, capsys, monkeypatch):
    """The check after writing is real: a converter that computes something else is caught (exit 1)."""
    from cnnframe import export

    monkeypatch.setitem(export.CONVERTERS, cf.ReLU, lambda layer, g, x, shape: g.node("Sigmoid", [x]))
    assert main(["export", tiny_run, str(tmp_path / "wrong.onnx")]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime's outputs differ from cnnframe's by up to" in err and "does not compute what the model" in err
    assert err.endswith("wrong.onnx was not written\n") and not (tmp_path / "wrong.onnx").exists()
    # A graph onnxruntime refuses to run (its errors are plain Exceptions) is one line too, and nothing is written.
    from cnnframe.commands import export as command

    class Fail(Exception):
        pass

    def refuse(proto, x):
        raise Fail("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation\nmore detail")

    monkeypatch.setattr(command, "run_onnxruntime", refuse)
    assert main(["export", tiny_run, str(tmp_path / "wrong.onnx")]) == 1
    assert capsys.readouterr().err == ("cnnframe: onnxruntime cannot run the exported model: Fail: [ONNXRuntimeError] "
                                       ": 9 : NOT_IMPLEMENTED : Could not find an implementation; "
                                       f"{tmp_path / 'wrong.onnx'} was not written\n")
    assert not (tmp_path / "wrong.onnx").exists()


def test_export_command_user_errors(tiny_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.startswith("cnnframe: error: ")
    assert main(["export", tiny_run, str(tmp_path / "no" / "such" / "dir.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and not (tmp_path / "no").exists()
