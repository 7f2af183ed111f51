"""The model section: the memory a config's model needs at its batch size, refused past trainer.memory_limit
before anything large is allocated."""
import os
import subprocess
import sys

import pytest

import cnnframe
from cnnframe import config
from cnnframe.config import ConfigError
from cnnframe.config.model_section import memory_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(cnnframe.__file__)))


def test_estimate_follows_the_documented_formula():
    total, outputs = memory_bytes((1, 8, 8), [(4, 8, 8), (4, 4, 4), (10,)], batch_size=64, itemsize=4,
                                  parameter_bytes=1000)
    assert outputs == 3 * 64 * 4 * (64 + 256 + 64 + 10)
    assert total == 4 * 1000 + outputs
    setup = config.load(TINY)
    params = sum(a.nbytes for a in setup.model.state_dict().values())
    assert setup.memory == memory_bytes(setup.input_shape, setup.model.shapes, 64, 4, params)[0]


@pytest.mark.parametrize("command", ["validate", "train"])
def test_huge_layer_is_refused_at_once(tmp_path, command):
    """out_channels: 100000000 (1.6 TB of outputs at batch 64) stops in a fresh process with one line."""
    sets = ["--set", "model.layers[0].out_channels=100000000", "--set", f"trainer.run_dir={tmp_path}"]
    r = subprocess.run([sys.executable, "-m", "cnnframe", command, TINY, *sets], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=PACKAGE_PARENT))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "model.layers[0]: the model needs about" in r.stderr and "trainer.memory_limit" in r.stderr
    assert "(100000000, 8, 8) per sample" in r.stderr
    assert os.listdir(tmp_path) == []


def wide_dense(limit):
    # flatten (64) → dense 100000 (25.6 MB of weights, 77 MB of outputs at batch 64) → dense 10
    return ["model.layers=[{type: flatten}, {type: dense, out_features: 100000}, {type: dense, out_features: 10}]",
            f"trainer.memory_limit={limit}"]


def test_parameters_are_checked_as_they_are_allocated():
    with pytest.raises(ConfigError) as info:
        config.load(TINY, wide_dense(0.15))
    e = info.value
    assert e.key == "model.layers[1]" and e.file.startswith("--set model.layers=")
    assert "Dense: 'weight' of shape (100000, 64) needs 24.4 MiB" in e.message and "trainer.memory_limit" in e.message


def test_the_limit_is_a_config_key():
    setup = config.load(TINY, wide_dense(1))
    assert setup.model.layers[1].parameters()["weight"].shape == (100000, 64)
    assert 100e6 < setup.memory < 1 << 30
    assert config.load(TINY, wide_dense("null")).config["trainer"]["memory_limit"] is None
    with pytest.raises(ConfigError, match="trainer.memory_limit: must be > 0.0, got 0"):
        config.load(TINY, ["trainer.memory_limit=0"])
