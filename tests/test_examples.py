"""The examples run as users run them (subprocesses) and do what they say: contract passes, models learn."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run(args, cwd, timeout=120):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_custom_layer_script_passes_the_contract(tmp_path):
    r = run([os.path.join(EXAMPLES, "custom_layer.py")], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    passed = re.findall(r"^(\w+) on input \(([\d, ]+)\): contract passed$", r.stdout, re.M)
    assert passed == [("Swish", "3, 5, 5"), ("ChannelAffine", "3, 5, 5"), ("ChannelAffine", "4,")]
    reports = re.findall(r"^gradcheck (\w+) for (\w+)", r.stdout, re.M)
    assert reports == [("PASSED", "Swish"), ("PASSED", "ChannelAffine"), ("PASSED", "ChannelAffine")]
    # the parameter gradients were checked, not only the input's
    assert re.search(r"^  weight +shape \(3,\) +checked +3/3 .* ok$", r.stdout, re.M)


def test_custom_layer_yaml_trains_and_gradchecks(tmp_path):
    cfg = os.path.join(EXAMPLES, "custom_layer.yaml")
    r = run(["-m", "cnnframe", "gradcheck", cfg], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^\[ok\] layer +0 ChannelAffine .* weight ", r.stdout, re.M)
    assert len(re.findall(r"^\[ok\] layer +\d+ Swish ", r.stdout, re.M)) == 3
    assert "15 of 15 layers pass" in r.stdout

    r = run(["-m", "cnnframe", "train", cfg, "-q", "--no-report", "--set", "trainer.epochs=2", "--run-dir", str(tmp_path / "runs")],
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"test accuracy ([\d.]+)% \(360 samples\).*run: (\S+)", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) > 85.0  # 96 % after two epochs with seed 0; chance is 10 %
    run_dir = m.group(2)
    # the saved run reloads in a fresh process with the plugin named (a run directory imports no code itself)
    r = run(["-m", "cnnframe", "evaluate", run_dir, "--plugin", os.path.join(EXAMPLES, "custom_layer.py")], cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"accuracy {m.group(1)}%" in r.stdout
    r = run(["-m", "cnnframe", "evaluate", run_dir], cwd=ROOT)
    assert r.returncode == 2 and "unknown layer 'channel_affine'" in r.stderr and "--plugin" in r.stderr


def test_train_api_example_learns(tmp_path):
    r = run([os.path.join(EXAMPLES, "train_api.py"), "2"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(re.findall(r"^epoch [12]/2 ", r.stdout, re.M)) == 2
    m = re.search(r"^test accuracy: ([\d.]+)%$", r.stdout, re.M)
    assert m, r.stdout
    assert float(m.group(1)) > 85.0  # 95 % after two epochs with seed 0
    assert not os.listdir(tmp_path)  # no run directory unless asked for


def test_residual_api_example_learns(tmp_path):
    r = run([os.path.join(EXAMPLES, "residual_api.py"), "3"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # the summary lists each block's children under it
    assert re.search(r"^4  Residual +\(32, 4, 4\) +14,624$", r.stdout, re.M)
    assert re.search(r"^ +shortcut\.0: Conv2D +\(32, 4, 4\) +544$", r.stdout, re.M)
    assert re.search(r"^ +shortcut: identity +\(16, 8, 8\) +0$", r.stdout, re.M)
    assert len(re.findall(r"^epoch [123]/3 ", r.stdout, re.M)) == 3
    m = re.search(r"^test accuracy: ([\d.]+)%$", r.stdout, re.M)
    assert m, r.stdout
    assert float(m.group(1)) > 85.0  # 93 % after three epochs with seed 0; chance is 10 %
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("name", ["custom_layer.py", "train_api.py", "residual_api.py"])
def test_examples_use_only_public_names(name):
    text = open(os.path.join(EXAMPLES, name), encoding="utf-8").read()
    assert not re.search(r"cnnframe\.\w*\._|from cnnframe\.\w+ import _|cnnframe\.layers\._util", text)
