"""Layers: one file per family, each registered by name for YAML configs."""
from cnnframe.layers.base import Layer, Parameter

# -- each layer module is imported here so its registration runs ------------------------------------
from cnnframe.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from cnnframe.layers.blocks import Concat, Residual
from cnnframe.layers.conv import Conv2D
from cnnframe.layers.dense import Dense
from cnnframe.layers.dropout import Dropout
from cnnframe.layers.norm import BatchNorm1D, BatchNorm2D
from cnnframe.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from cnnframe.layers.reshape import Flatten

__all__ = [
    "Layer",
    "Parameter",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
    "Flatten",
    "Dense",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Dropout",
    "BatchNorm2D",
    "BatchNorm1D",
    "Residual",
    "Concat",
]
