"""YAML with line numbers, --set overrides, and the bound on what anchors and aliases may expand to."""
import os
import subprocess
import sys
import time

import pytest

import cnnframe
from cnnframe.config import ConfigError, load_config
from cnnframe.config.yamlfile import MAX_DEPTH, MAX_VALUES, apply_override, parse_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(cnnframe.__file__)))


def alias_bomb(levels=8, width=9):
    """About 1 KB of YAML standing for width**levels values: each level lists the one before ``width`` times."""
    lines = ["a0: &a0 [" + ", ".join(["1"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_anchors_and_aliases_within_the_bound_work():
    data, lines = parse_yaml("base: &b {type: conv2d, kernel_size: 3}\nlayers: [*b, *b]\n")
    assert data["layers"] == [{"type": "conv2d", "kernel_size": 3}] * 2
    assert lines["layers"] == 2


def test_alias_bomb_is_refused_at_once():
    text = alias_bomb()
    assert len(text) < 1200
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"expands to more than {MAX_VALUES:,} values") as info:
        parse_yaml(text, file="bomb.yaml")
    assert time.perf_counter() - t0 < 5  # a guard against expanding it, not a speed measurement
    assert info.value.file == "bomb.yaml" and info.value.line is not None


def test_alias_bomb_in_a_config_and_in_a_set_value(tmp_path):
    """In a fresh process, as a user meets it: one line, exit status 2, well before the generous timeout."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(open(TINY).read() + "extra:\n" + "".join("  " + line + "\n" for line in alias_bomb().splitlines()))
    flow = "[" + ", ".join(["&x0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]"
                                                                  for i in range(1, 9)]) + "]"
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    for args in (["validate", str(bomb)], ["validate", TINY, "--set", f"trainer.name={flow}"]):
        r = subprocess.run([sys.executable, "-m", "cnnframe", *args], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"expands to more than {MAX_VALUES:,} values" in r.stderr


def test_deep_nesting_is_refused():
    with pytest.raises(ConfigError, match=f"deeper than {MAX_DEPTH} levels|nests too deeply"):
        parse_yaml("x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    with pytest.raises(ConfigError, match="nests too deeply|deeper than"):
        parse_yaml("x: " + "[" * 5000 + "]" * 5000 + "\n")  # past the parser's own recursion


def test_set_value_errors_name_the_set(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["trainer.epochs=[1"])
    assert info.value.file == "--set trainer.epochs=[1" and "cannot parse value" in info.value.message
    data = {"model": {"layers": [{"type": "relu"}]}}
    assert apply_override(data, "model.layers[-1].type=tanh") == "model.layers[0].type"
    assert data["model"]["layers"][0]["type"] == "tanh"
