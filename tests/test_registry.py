"""Registries: names and declared aliases to classes; a registry never imports anything."""
import pytest

import cnnframe
from cnnframe.registry import LAYERS, Registry, registered_names


def test_aliases_are_declared_not_stacked():
    reg = Registry("thing")

    @reg.register("main_name", aliases=("other",))
    class A:
        pass

    assert reg.get("OTHER") is A and reg.get("main_name") is A and A.registered_name == "main_name"
    assert reg.names() == ["main_name", "other"]
    B = type("B", (), {})
    with pytest.raises(ValueError, match="'other' is already registered to .*A"):
        reg.register("fresh", aliases=("other",))(B)
    assert "fresh" not in reg  # nothing registered when one name is taken


def test_a_registry_never_imports():
    with pytest.raises(KeyError, match="not a registered name"):
        LAYERS.get("os:system")
    with pytest.raises(KeyError, match="did you mean 'conv2d'"):
        LAYERS.get("conv2")


def test_registered_names_cover_every_family():
    names = registered_names()
    assert list(names) == ["layers", "losses", "optimizers", "schedules", "datasets"]
    assert "conv2d" in names["layers"] and {"cross_entropy", "softmax_cross_entropy"} <= set(names["losses"])
    assert names["datasets"] == cnnframe.DATASETS.names()
