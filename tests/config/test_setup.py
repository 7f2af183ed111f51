"""Config loading: defaults, validation errors with key paths and lines, --set overrides, plugins."""
import os
import textwrap

import numpy as np
import pytest

from cnnframe.config import (
    ConfigError,
    apply_override,
    dump_config,
    load_config,
    resolve_text,
    split_key_path,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(ROOT, "configs", "digits.yaml")
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")

BASE = """\
data:
  dataset: digits
model:
  layers:
    - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {type: flatten}
    - {type: dense, out_features: 10}
trainer:
  epochs: 2
"""


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def error_of(tmp_path, text, overrides=()):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value, path


# -- good configs -------------------------------------------------------------------------------------
def test_shipped_configs_resolve_with_defaults():
    cfg = load_config(DIGITS)
    assert cfg["trainer"]["name"] == "digits"
    assert cfg["trainer"]["epochs"] == 40 and cfg["trainer"]["batch_size"] == 64
    assert cfg["data"]["val_fraction"] == 0 and cfg["trainer"]["checkpoint"]["best"] is False
    assert [layer.get("out_channels") for layer in cfg["model"]["layers"] if layer["type"] == "conv2d"] == [32, 32, 64]
    assert cfg["optimizer"] == {"type": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                                "weight_decay": 5e-4, "clip_norm": None}
    assert cfg["schedule"]["type"] == "onecycle" and cfg["schedule"]["div_factor"] == 25.0
    assert cfg["data"]["augment"] == {"shift": 1, "rotate": 10.0, "scale": 0.1} and cfg["data"]["tta"] == {"shift": 1}
    assert cfg["trainer"]["ema_decay"] is None
    tiny = load_config(TINY)
    assert tiny["trainer"]["early_stopping"] == {"patience": None, "monitor": "val_loss", "min_delta": 0.0}
    assert tiny["loss"] == {"type": "softmax_cross_entropy", "label_smoothing": 0.1}


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(DIGITS)
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_defaults_for_missing_sections(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg["loss"]["type"] == "softmax_cross_entropy"
    assert cfg["optimizer"]["type"] == "sgd" and cfg["optimizer"]["lr"] == 0.01
    assert cfg["schedule"]["type"] == "constant"
    assert cfg["trainer"]["name"] == "cfg" and cfg["trainer"]["seed"] == 0
    assert cfg["data"]["test_size"] == 0.2 and cfg["data"]["val_fraction"] == 0.1


def test_exponent_without_dot_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path, BASE + "optimizer: {type: sgd, weight_decay: 5e-4}\n"))
    assert cfg["optimizer"]["weight_decay"] == 5e-4


# -- errors: one per class --------------------------------------------------------------------------------
def test_unknown_key_did_you_mean_and_line(tmp_path):
    err, path = error_of(tmp_path, BASE.replace("  epochs: 2", "  epoch: 2"))
    assert err.key == "trainer.epoch"
    assert "did you mean 'epochs'" in err.message
    assert err.file == path and err.line == 11
    assert str(err).startswith(f"{path}:11: trainer.epoch: unknown key")


def test_unknown_section(tmp_path):
    err, _ = error_of(tmp_path, BASE + "optimiser: {type: sgd}\n")
    assert err.key == "optimiser" and "did you mean 'optimizer'" in err.message


def test_wrong_type(tmp_path):
    err, _ = error_of(tmp_path, BASE + "  batch_size: big\n")
    assert err.key == "trainer.batch_size" and "integer" in err.message and "'big'" in err.message
    err, _ = error_of(tmp_path, BASE.replace("epochs: 2", "epochs: true"))
    assert err.key == "trainer.epochs"


def test_out_of_range(tmp_path):
    err, _ = error_of(tmp_path, BASE.replace("epochs: 2", "epochs: 0"))
    assert err.key == "trainer.epochs" and ">= 1" in err.message
    err, _ = error_of(tmp_path, BASE.replace("  dataset: digits", "  dataset: digits\n  test_size: 1.5"))
    assert err.key == "data.test_size" and "<= 0.9" in err.message and err.line == 3


def test_choice_did_you_mean(tmp_path):
    err, _ = error_of(tmp_path, BASE + "  early_stopping: {patience: 3, monitor: val_los}\n")
    assert err.key == "trainer.early_stopping.monitor" and "did you mean 'val_loss'" in err.message


def test_unknown_layer_name(tmp_path):
    err, _ = error_of(tmp_path, BASE.replace("type: conv2d", "type: conv2"))
    assert err.key == "model.layers[0].type"
    assert "did you mean 'conv2d'" in err.message and err.line == 5


def test_unknown_loss_optimizer_schedule_names(tmp_path):
    err, _ = error_of(tmp_path, BASE + "loss: {type: softmax_crossentropy}\n")
    assert err.key == "loss.type" and "did you mean 'softmax_cross_entropy'" in err.message
    err, _ = error_of(tmp_path, BASE + "optimizer: {type: adma}\n")
    assert err.key == "optimizer.type" and "did you mean 'adam'" in err.message
    err, _ = error_of(tmp_path, BASE + "schedule: {type: cosin}\n")
    assert err.key == "schedule.type" and "did you mean 'cosine'" in err.message
    err, _ = error_of(tmp_path, BASE.replace("dataset: digits", "dataset: digit"))
    assert err.key == "data.dataset" and "did you mean 'digits'" in err.message


def test_layer_hyper_parameters_checked_by_construction(tmp_path):
    err, _ = error_of(tmp_path, BASE.replace("kernel_size: 3,", "kernel_size: 0,"))
    assert err.key == "model.layers[0].kernel_size"
    err, _ = error_of(tmp_path, BASE.replace("kernel_size: 3,", "kernel: 3,"))
    assert err.key == "model.layers[0].kernel" and "did you mean 'kernel_size'" in err.message
    err, _ = error_of(tmp_path, BASE.replace("out_features: 10", "out_features: -1"))
    assert err.key == "model.layers[4].out_features"
    err, _ = error_of(tmp_path, BASE.replace("{type: relu}", "{type: dropout, p: 1.5}"))
    assert err.key == "model.layers[1].p"


def test_component_hyper_parameters(tmp_path):
    err, _ = error_of(tmp_path, BASE + "optimizer: {type: sgd, lr: 0.1, momentun: 0.9}\n")
    assert err.key == "optimizer.momentun" and "did you mean 'momentum'" in err.message
    err, _ = error_of(tmp_path, BASE + "optimizer: {type: sgd, lr: -1}\n")
    assert err.key == "optimizer.lr"
    err, _ = error_of(tmp_path, BASE + "loss: {label_smoothing: 2}\n")
    assert err.key == "loss.label_smoothing"
    err, _ = error_of(tmp_path, BASE + "schedule: {type: step}\n")
    assert err.key == "schedule.step_size" and "missing" in err.message


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    text = BASE.replace("{type: relu}", "{type: conv2d, out_channels: 4, kernel_size: 9}")
    err, _ = error_of(tmp_path, text)
    assert err.key == "model.layers[1]"
    assert "layer 1" in err.message and "(4, 8, 8)" in err.message


def test_output_size_must_match_classes(tmp_path):
    err, _ = error_of(tmp_path, BASE.replace("out_features: 10", "out_features: 7"))
    assert err.key == "model.layers[4]" and "10 classes" in err.message and "(7,)" in err.message


def test_model_input_shape_checked_against_data(tmp_path):
    err, _ = error_of(tmp_path, BASE.replace("model:\n", "model:\n  input_shape: [3, 8, 8]\n"))
    assert err.key == "model.input_shape" and "(1, 8, 8)" in err.message


def test_malformed_yaml_reports_line(tmp_path):
    err, path = error_of(tmp_path, "data:\n  dataset: digits\nmodel:\n  layers: [\n    {type: relu\ntrainer: {}\n")
    assert err.file == path and err.line is not None and err.line >= 5
    assert "malformed YAML" in err.message and str(err).startswith(f"{path}:{err.line}:")
    err, _ = error_of(tmp_path, "data:\n  dataset: digits\n   bad: indent\n")
    assert err.line == 3


def test_duplicate_key(tmp_path):
    err, _ = error_of(tmp_path, BASE + "  epochs: 3\n")
    assert err.key == "trainer.epochs" and "duplicate" in err.message and err.line == 12


def test_top_level_must_be_mapping(tmp_path):
    err, _ = error_of(tmp_path, "- 1\n- 2\n")
    assert "mapping" in err.message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert "not found" in str(info.value)


def test_val_monitor_needs_validation_part(tmp_path):
    err, _ = error_of(tmp_path, BASE.replace("dataset: digits", "dataset: digits\n  val_fraction: 0"))
    assert err.key == "trainer.checkpoint.monitor" and "val_fraction" in err.message


@pytest.mark.parametrize("override,key,needle", [
    ("data.augment.rotate=-5", "data.augment.rotate", ">= 0.0"),
    ("data.augment.scale=1", "data.augment.scale", "< 1.0"),
    ("data.tta={shifts: 1}", "data.tta.shifts", "did you mean 'shift'"),
    ("data.tta.shift=0.5", "data.tta.shift", "integer"),
    ("trainer.ema_decay=1", "trainer.ema_decay", "< 1.0"),
    ("trainer.ema_decay=yes", "trainer.ema_decay", "number"),
])
def test_recipe_options_are_checked(tmp_path, override, key, needle):
    err, _ = error_of(tmp_path, BASE, [override])
    assert err.key == key and needle in err.message, err.message


def test_recipe_options_resolve_with_their_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["data.augment.rotate=10", "trainer.ema_decay=0.995"])
    assert cfg["data"]["augment"] == {"shift": 0, "rotate": 10.0, "scale": 0.0}
    assert cfg["data"]["tta"] == {"shift": 0} and cfg["trainer"]["ema_decay"] == 0.995
    assert load_config(write(tmp_path, BASE))["trainer"]["ema_decay"] is None


# -- overrides ------------------------------------------------------------------------------------------------
def test_split_key_path():
    assert split_key_path("model.layers[1].out_channels") == ["model", "layers", 1, "out_channels"]
    assert split_key_path("a[0][2]") == ["a", 0, 2]
    with pytest.raises(ValueError):
        split_key_path("model..layers")


def test_set_overrides(tmp_path):
    path = write(tmp_path, BASE)
    cfg = load_config(path, ["trainer.epochs=5", "model.layers[0].out_channels=8", "optimizer.lr=5e-2",
                             "data.augment.shift=2", "trainer.early_stopping.patience=3"])
    assert cfg["trainer"]["epochs"] == 5
    assert cfg["model"]["layers"][0]["out_channels"] == 8
    assert cfg["optimizer"]["lr"] == 0.05
    assert cfg["data"]["augment"]["shift"] == 2
    assert cfg["trainer"]["early_stopping"]["patience"] == 3


def test_bad_set(tmp_path):
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["trainer.epochs"])
    assert "KEY=VALUE" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(path, ["model.layers[9].out_channels=3"])
    assert info.value.key == "model.layers[9]" and "out of range" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(path, ["trainer..epochs=3"])
    assert "bad key path" in str(info.value)
    with pytest.raises(ConfigError) as info:  # a bad value is attributed to the --set, not the file
        load_config(path, ["trainer.batch_size=many"])
    assert info.value.key == "trainer.batch_size" and info.value.file == "--set trainer.batch_size=many"
    with pytest.raises(ConfigError) as info:
        load_config(path, ["trainer.epoch=3"])
    assert "did you mean 'epochs'" in str(info.value)


def test_apply_override_creates_sections():
    data = {}
    assert apply_override(data, "trainer.early_stopping.patience=4") == "trainer.early_stopping.patience"
    assert data == {"trainer": {"early_stopping": {"patience": 4}}}


# -- plugins ----------------------------------------------------------------------------------------------------
PLUGIN = '''
import numpy as np
import cnnframe
from cnnframe.layers import Layer


@cnnframe.register_layer("test_double")
class Double(Layer):
    """y = 2x."""

    def __init__(self, factor=2.0, dtype="float32"):
        super().__init__(dtype)
        if factor <= 0:
            raise ValueError(f"factor must be positive, got {factor}")
        self.factor = factor

    def forward(self, x):
        return x * self.dtype.type(self.factor)

    def backward(self, g):
        return g * self.dtype.type(self.factor)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


def test_plugin_file_relative_to_config(tmp_path):
    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "double.py").write_text(PLUGIN)
    text = "plugins: [plugs/double.py]\n" + BASE.replace("{type: relu}", "{type: test_double, factor: 3}")
    cfg = load_config(write(tmp_path, text))
    assert cfg["plugins"] == [str(tmp_path / "plugs" / "double.py")]
    assert cfg["model"]["layers"][1] == {"type": "test_double", "factor": 3}
    err, _ = error_of(tmp_path, text.replace("factor: 3", "factor: -1"))
    assert err.key == "model.layers[1].factor" and "positive" in err.message


def test_plugin_module_name(tmp_path, monkeypatch):
    (tmp_path / "my_cnn_plugin_mod.py").write_text(PLUGIN.replace("test_double", "test_double_mod"))
    monkeypatch.syspath_prepend(str(tmp_path))
    text = "plugins: [my_cnn_plugin_mod]\n" + BASE.replace("{type: relu}", "{type: test_double_mod}")
    cfg = load_config(write(tmp_path, text))
    assert cfg["plugins"] == ["my_cnn_plugin_mod"]


def test_broken_plugin_reports_its_file_and_line(tmp_path):
    (tmp_path / "broken.py").write_text("import numpy\n\nx = 1\ny = undefined_name + 1\n")
    err, _ = error_of(tmp_path, "plugins: [broken.py]\n" + BASE)
    assert err.key == "plugins[0]"
    assert f"{tmp_path / 'broken.py'}:4" in err.message and "NameError" in err.message
    (tmp_path / "syntax.py").write_text("def f(:\n    pass\n")
    err, _ = error_of(tmp_path, "plugins: [syntax.py]\n" + BASE)
    assert "syntax error" in err.message and f"{tmp_path / 'syntax.py'}:1" in err.message
    err, _ = error_of(tmp_path, "plugins: [no_such_cnn_module_xyz]\n" + BASE)
    assert err.key == "plugins[0]" and "no_such_cnn_module_xyz" in err.message
    err, _ = error_of(tmp_path, "plugins: [missing.py]\n" + BASE)
    assert "not found" in err.message


def test_plugin_layer_with_wrong_output_shape_is_located(tmp_path):
    bad = PLUGIN.replace("test_double", "test_bad_shape").replace(
        '    def forward(self, x):', '    def output_shape(self, input_shape):\n        return (0,)\n\n'
                                   '    def forward(self, x):')
    (tmp_path / "badshape.py").write_text(bad)
    text = "plugins: [badshape.py]\n" + BASE.replace("{type: relu}", "{type: test_bad_shape}")
    err, _ = error_of(tmp_path, text)
    assert err.key == "model.layers[1]" and "(0,)" in err.message and "badshape.py" in err.message


def test_resolve_text_without_file():
    cfg = resolve_text(BASE, name="inline")
    assert cfg["trainer"]["name"] == "inline"


def test_plugin_layer_without_backward(tmp_path):
    (tmp_path / "nobackward.py").write_text(
        "import cnnframe\nfrom cnnframe.layers import Layer\n\n\n"
        "@cnnframe.register_layer('test_no_backward')\nclass NoBackward(Layer):\n"
        "    def forward(self, x):\n        return x\n")
    err, _ = error_of(tmp_path, "plugins: [nobackward.py]\n" + BASE.replace("{type: relu}", "{type: test_no_backward}"))
    assert err.key == "model.layers[1]" and "does not implement backward()" in err.message
    assert "nobackward.py:5" in err.message  # the class definition (its decorator line)


# -- blocks ----------------------------------------------------------------------------------------------------
RESNET = os.path.join(ROOT, "configs", "resnet-digits.yaml")

BLOCKS = """\
data:
  dataset: digits
model:
  layers:
    - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
    - type: residual
      layers:
        - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
        - {type: batchnorm2d}
      activation: relu
    - type: concat
      branches:
        - [{type: conv2d, out_channels: 2, kernel_size: 1}]
        - [{type: maxpool2d, kernel_size: 3, stride: 1, padding: 1}]
    - {type: globalavgpool2d}
    - {type: dense, out_features: 10}
"""


def test_resnet_config_builds_nested_blocks():
    from cnnframe.config import build_layers
    from cnnframe.model import Sequential

    cfg = load_config(RESNET)
    layers = cfg["model"]["layers"]
    assert [spec["type"] for spec in layers].count("residual") == 3
    assert layers[4]["shortcut"][0] == {"type": "conv2d", "out_channels": 32, "kernel_size": 1, "stride": 2}
    model = Sequential(build_layers(cfg), input_shape=(1, 8, 8))
    assert model.num_parameters() == 38_474
    assert model.shapes[3:6] == [(16, 8, 8), (32, 4, 4), (32, 4, 4)]
    assert "4.shortcut.0.weight" in model.parameters() and "5.layers.4.running_var" in model.buffers()


def test_block_config_resolves_and_keeps_the_nesting(tmp_path):
    cfg = load_config(write(tmp_path, BLOCKS))
    assert cfg["model"]["layers"][2]["branches"][1] == [{"type": "maxpool2d", "kernel_size": 3, "stride": 1,
                                                         "padding": 1}]
    assert load_config(write(tmp_path, dump_config(cfg), "again.yaml"))["model"] == cfg["model"]


def test_block_shape_mismatch_is_found_before_any_data_loads(tmp_path):
    body = "out_channels: 4, kernel_size: 3, padding: 1}\n        - {type: batchnorm2d}"
    err, _ = error_of(tmp_path, BLOCKS.replace(body, body.replace("out_channels: 4", "out_channels: 8")))
    assert err.key == "model.layers[1]"
    assert "(8, 8, 8)" in err.message and "(4, 8, 8)" in err.message and "shortcut" in err.message
    err, _ = error_of(tmp_path, BLOCKS.replace("kernel_size: 3, stride: 1, padding: 1", "kernel_size: 2"))
    assert err.key == "model.layers[2]"
    assert "branches[0] outputs (2, 8, 8)" in err.message and "branches[1] outputs (4, 4, 4)" in err.message


@pytest.mark.parametrize("old, new, where, message", [
    ("{type: maxpool2d,", "{type: maxpol2d,", "branches[1][0]", "did you mean 'maxpool2d'"),
    ("{type: conv2d, out_channels: 2,", "{type: conv2d, out_chanels: 2,", "branches[0][0] (conv2d)", "out_chanels"),
    ("{type: maxpool2d,", "{type: 'cnnframe.layers.pooling:MaxPool2D',", "branches[1][0]", "registered name"),
    ("activation: relu", "activation: rleu", "activation", "did you mean 'relu'"),
    ("{type: maxpool2d,", "{type: maxpool2d, dtype: float32,", "branches[1][0]", "set the dtype on the block"),
])
def test_errors_inside_blocks_name_the_child(tmp_path, old, new, where, message):
    assert old in BLOCKS
    err, _ = error_of(tmp_path, BLOCKS.replace(old, new))
    assert err.key.startswith(("model.layers[1]", "model.layers[2]"))
    assert where in err.message and message in err.message


def test_plugin_layer_inside_a_block(tmp_path):
    (tmp_path / "halve.py").write_text(PLUGIN.replace("test_double", "test_block_child"))
    text = "plugins: [halve.py]\n" + BLOCKS.replace("- {type: batchnorm2d}", "- {type: test_block_child, factor: 0.5}")
    cfg = load_config(write(tmp_path, text))
    assert cfg["model"]["layers"][1]["layers"][1] == {"type": "test_block_child", "factor": 0.5}
    from cnnframe.config import build_layers
    from cnnframe.model import Sequential

    model = Sequential(build_layers(cfg), input_shape=(1, 8, 8))
    assert type(model[1].layers[1]).registered_name == "test_block_child"
    assert model.forward(np.ones((2, 1, 8, 8), dtype=np.float32)).shape == (2, 10)


@pytest.mark.parametrize("old, new, key", [
    ("{type: maxpool2d,", "{type: maxpol2d,", "model.layers[2].branches[1][0].type"),
    ("{type: conv2d, out_channels: 2,", "{type: conv2d, out_chanels: 2,", "model.layers[2].branches[0][0].out_chanels"),
    ("- {type: batchnorm2d}", "- {type: batchnorm2d, eps: -1}", "model.layers[1].layers[1].eps"),
    ("{type: maxpool2d,", "{type: maxpool2d, dtype: float32,", "model.layers[2].branches[1][0].dtype"),
])
def test_errors_inside_blocks_carry_the_childs_key_path(tmp_path, old, new, key):
    err, path = error_of(tmp_path, BLOCKS.replace(old, new))
    assert err.key == key and err.line is not None  # the line of the child's key in the file
