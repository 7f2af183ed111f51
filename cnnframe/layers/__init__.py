"""Layers: one file per family, each registered by name for YAML configs."""
from cnnframe.layers.base import Layer, Parameter

# -- each layer module is imported here so its registration runs ------------------------------------
