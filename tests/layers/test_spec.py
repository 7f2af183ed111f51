"""Layer specs → layers: one builder for configs, checkpoints and layers that hold layers (key paths nest)."""
import os

import numpy as np
import pytest

import cnnframe
from cnnframe import config
from cnnframe.checks import KeywordError
from cnnframe.config import ConfigError
from cnnframe.layers import Conv2D, Layer
from cnnframe.layers.spec import at, build_layer
from cnnframe.plugins import Plugins

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                    "digits-tiny.yaml")


@cnnframe.register_layer("_test_block")
class Block(Layer):
    """Child layers applied in order, given as specs: how a block of layers builds (and reports) its children."""

    def __init__(self, layers, dtype="float32"):
        super().__init__(dtype)
        self.specs, self.children = layers, []
        for j, spec in enumerate(layers):
            try:
                self.children.append(build_layer(spec, Plugins(), dtype))
            except Exception as e:
                at(e, f"layers[{j}]")

    def output_shape(self, input_shape):
        for child in self.children:
            input_shape = child.output_shape(input_shape)
        return input_shape

    def forward(self, x):
        for child in self.children:
            x = child.forward(x)
        return x

    def backward(self, g):
        for child in reversed(self.children):
            g = child.backward(g)
        return g

    def get_config(self):
        return {**super().get_config(), "layers": self.specs}


def test_build_layer_resolves_and_fills_the_dtype():
    layer = build_layer({"type": "conv2d", "out_channels": 4, "kernel_size": 3}, Plugins(), "float64")
    assert isinstance(layer, Conv2D) and layer.dtype == np.float64
    with pytest.raises(ValueError, match="trainer.dtype") as info:
        build_layer({"type": "relu", "dtype": "float64"}, Plugins(), "float32")
    assert info.value.key == "dtype"
    with pytest.raises(KeywordError, match="did you mean 'kernel_size'") as info:
        build_layer({"type": "conv2d", "out_channels": 4, "kernel": 3}, Plugins())
    assert info.value.key == "kernel"
    with pytest.raises(ValueError) as info:
        build_layer({"type": "conv2d", "out_channels": 4, "kernel_size": 0}, Plugins())
    assert info.value.key == "kernel_size" and info.value.layer_type == "conv2d"


def test_a_block_of_layers_reports_its_childs_key_path():
    bad = "model.layers[1]={type: _test_block, layers: [{type: relu}, {type: conv2d, out_channels: 4, kernel_size: 0}]}"
    with pytest.raises(ConfigError) as info:
        config.load(TINY, [bad])
    assert info.value.key == "model.layers[1].layers[1].kernel_size"
    assert "invalid layer 'conv2d': layers[1]: Conv2D: kernel_size" in info.value.message
    with pytest.raises(ConfigError) as info:
        config.load(TINY, ["model.layers[1]={type: _test_block, layers: [{type: 'os:system'}]}"])
    assert info.value.key == "model.layers[1].layers[0].type" and "comes from module 'os'" in info.value.message
    setup = config.load(TINY, ["model.layers[1]={type: _test_block, layers: [{type: relu}, {type: tanh}]}"])
    assert [type(c).__name__ for c in setup.model.layers[1].children] == ["ReLU", "Tanh"]
