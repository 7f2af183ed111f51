"""User layers from YAML: ``plugins`` (files relative to the config, or module names), ``type: module:Class``,
runs that reload in a fresh process with the plugins named (evaluate, predict, load_checkpoint), broken plugins
reported with their own file and line (exit status 2, no traceback), and stored files that never run code."""
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

import cnnframe
from cnnframe.cli import main
from cnnframe.config import load_config, resolve_config
from cnnframe.layers.base import type_name
from cnnframe.model import Sequential, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where the cnnframe being tested lives (an editable install or a source tree on PYTHONPATH)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(cnnframe.__file__)))

# A registered layer with a parameter (so a reload must restore trained state), an unregistered one, and an
# unregistered subclass of the registered one.  NAME is replaced per test so registrations do not collide.
PLUGIN = '''
import numpy as np
import cnnframe
from cnnframe import Layer


@cnnframe.register_layer("NAME")
class ChannelScale(Layer):
    """y[n, c, ...] = w[c]·x[n, c, ...]."""

    def __init__(self, num_features=None, dtype="float32"):
        super().__init__(dtype)
        self.num_features = num_features
        if num_features is not None:
            self.build((num_features,))

    def build(self, input_shape):
        if not self.built:
            self.num_features = int(input_shape[0])
            self.add_parameter("weight", np.full(self.num_features, 0.5))
            super().build(input_shape)

    def _w(self, ndim):
        return self._params["weight"].data.reshape((-1,) + (1,) * (ndim - 2))

    def forward(self, x):
        self._ensure_built(x)
        self._x = np.asarray(x, dtype=self.dtype)
        return self._w(x.ndim) * self._x

    def backward(self, g):
        axes = (0,) + tuple(range(2, g.ndim))
        self._params["weight"].grad += (g * self._x).sum(axis=axes)
        return self._w(g.ndim) * g

    def get_config(self):
        return {**super().get_config(), "num_features": self.num_features}


class Doubler(Layer):
    """y = 2x (not registered: used as ``type: module:Doubler``)."""

    def forward(self, x):
        return 2 * np.asarray(x, dtype=self.dtype)

    def backward(self, g):
        return 2 * g


class SubScale(ChannelScale):
    """Not registered itself: must not be saved under its parent's name."""
'''


def model_yaml(*layers, plugins=None, epochs=1):
    body = "".join(f"    - {layer}\n" for layer in layers)
    head = f"plugins: {json.dumps(plugins)}\n" if plugins is not None else ""
    return (head + "data: {dataset: digits}\nmodel:\n  layers:\n"
            "    - {type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}\n" + body +
            "    - {type: relu}\n    - {type: maxpool2d, kernel_size: 2}\n    - {type: flatten}\n"
            "    - {type: dense, out_features: 10}\n"
            f"optimizer: {{type: sgd, lr: 0.1, momentum: 0.9}}\ntrainer: {{epochs: {epochs}, batch_size: 64}}\n")


def run_module(*args, cwd, pythonpath=None):
    """``python -m cnnframe ...`` in a fresh process where the plugin modules import only through ``pythonpath``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(([str(pythonpath)] if pythonpath else []) + [PACKAGE_PARENT])
    return subprocess.run([sys.executable, "-m", "cnnframe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def train(cfg, tmp_path, cwd, pythonpath=None):
    """Train one epoch in a subprocess; returns (run directory, test accuracy text)."""
    r = run_module("train", str(cfg), "-q", "--no-report", "--run-dir", str(tmp_path / "runs"), cwd=cwd,
                   pythonpath=pythonpath)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"test accuracy ([\d.]+)% .*run: (\S+)", r.stdout)
    assert m, r.stdout
    return m.group(2), m.group(1)


def digits_inputs(path, n=7):
    from sklearn.datasets import load_digits

    np.save(path, load_digits().images[:n])
    return path


def read_predictions(path):
    lines = open(path).read().splitlines()
    assert lines[0] == "index,class," + ",".join(f"p{j}" for j in range(10))
    return np.array([[float(v) for v in line.split(",")[2:]] for line in lines[1:]])


def checkpoint_layer_types(ckpt):
    with np.load(ckpt, allow_pickle=False) as npz:
        return [lc["type"] for lc in json.loads(str(npz["__config__"]))["layers"]]


# -- plugins that work --------------------------------------------------------------------------------------
def test_plugin_file_relative_to_config_trains_evaluates_predicts(tmp_path):
    conf = tmp_path / "conf"
    (conf / "plugs").mkdir(parents=True)
    plugin = conf / "plugs" / "scale.py"
    plugin.write_text(PLUGIN.replace("NAME", "plug_scale_file"))
    cfg = conf / "exp.yaml"
    cfg.write_text(model_yaml("{type: plug_scale_file}", plugins=["plugs/scale.py"]))

    run_dir, acc = train(cfg, tmp_path, cwd=tmp_path)  # run from elsewhere: the path is relative to the config
    saved = load_config(os.path.join(run_dir, "config.yaml"))
    assert saved["plugins"] == [str(plugin)]  # absolute, so the run directory works from anywhere
    assert checkpoint_layer_types(os.path.join(run_dir, "last.npz"))[1] == "plug_scale_file"

    # a fresh process imports the plugin the user names (the run's recorded list is only a record)
    r = run_module("evaluate", run_dir, "--plugin", str(plugin), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"accuracy {acc}%" in r.stdout  # the trained weights came back, not a re-initialised layer

    x = digits_inputs(tmp_path / "x.npy")
    r = run_module("predict", os.path.join(run_dir, "last.npz"), "--input", str(x), "--output",
                   str(tmp_path / "p.csv"), "--plugin", str(plugin), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    probs = read_predictions(tmp_path / "p.csv")

    # From Python: load_checkpoint with the plugin named; same probabilities as the CLI's.
    model, _, meta = load_checkpoint(os.path.join(run_dir, "last.npz"), plugins=[str(plugin)])
    assert type(model.layers[1]).__name__ == "ChannelScale"
    assert not np.allclose(model.layers[1].parameters()["weight"].data, 0.5)  # trained, then restored
    model.eval()
    X = (np.load(x) - meta["data"]["offset"]) * meta["data"]["scale"]
    logits = model.forward(X[:, None].astype(np.float32)).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), atol=2e-6)


def test_plugin_by_module_name(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "cnnf_plug_by_name.py").write_text(PLUGIN.replace("NAME", "plug_scale_mod"))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(model_yaml("{type: plug_scale_mod}", plugins=["cnnf_plug_by_name"]))

    run_dir, acc = train(cfg, tmp_path, cwd=tmp_path, pythonpath=mods)
    with open(os.path.join(run_dir, "config.yaml")) as f:
        assert yaml.safe_load(f)["plugins"] == ["cnnf_plug_by_name"]
    r = run_module("evaluate", run_dir, "--plugin", "cnnf_plug_by_name", cwd=ROOT, pythonpath=mods)
    assert r.returncode == 0 and f"accuracy {acc}%" in r.stdout, r.stderr
    # where the module cannot be imported, the error says which module and that it is a plugin
    r = run_module("evaluate", run_dir, "--plugin", "cnnf_plug_by_name", cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot import plugin module 'cnnf_plug_by_name'" in r.stderr
    # without --plugin the run's recorded plugin is not imported: the message says what to name
    r = run_module("evaluate", run_dir, cwd=ROOT, pythonpath=mods)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown layer 'plug_scale_mod'" in r.stderr and "--plugin" in r.stderr and "cnnf_plug_by_name" in r.stderr


def test_type_module_colon_class(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "cnnf_plug_colon.py").write_text(PLUGIN.replace("NAME", "plug_scale_colon"))
    cfg = tmp_path / "exp.yaml"
    # an unregistered class, and a registered one named by module:Class, with no plugins list
    cfg.write_text(model_yaml("{type: 'cnnf_plug_colon:Doubler'}", "{type: 'cnnf_plug_colon:ChannelScale'}"))

    run_dir, acc = train(cfg, tmp_path, cwd=tmp_path, pythonpath=mods)
    with open(os.path.join(run_dir, "config.yaml")) as f:
        text = f.read()
    assert "plugins: [cnnf_plug_colon]" in text  # the run records the module, so reloads import it first
    types = checkpoint_layer_types(os.path.join(run_dir, "last.npz"))
    assert types[1:3] == ["cnnf_plug_colon:Doubler", "plug_scale_colon"]

    r = run_module("evaluate", run_dir, "--plugin", "cnnf_plug_colon", cwd=ROOT, pythonpath=mods)
    assert r.returncode == 0 and f"accuracy {acc}%" in r.stdout, r.stderr
    x = digits_inputs(tmp_path / "x.npy", n=3)
    # predict rebuilds the checkpoint's stored model: the unregistered Doubler comes from the named module
    r = run_module("predict", run_dir, "--input", str(x), "--plugin", "cnnf_plug_colon", cwd=ROOT, pythonpath=mods)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 4
    r = run_module("predict", run_dir, "--input", str(x), cwd=ROOT, pythonpath=mods)
    assert r.returncode == 2 and "module 'cnnf_plug_colon'" in r.stderr and "--plugin cnnf_plug_colon" in r.stderr


def test_get_config_type_of_unregistered_classes(tmp_path, monkeypatch):
    (tmp_path / "cnnf_plug_types.py").write_text(PLUGIN.replace("NAME", "plug_scale_types"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import cnnf_plug_types as m

    assert type_name(m.ChannelScale) == "plug_scale_types"
    assert m.Doubler().get_config() == {"type": "cnnf_plug_types:Doubler", "dtype": "float32"}
    assert m.SubScale(num_features=2).get_config()["type"] == "cnnf_plug_types:SubScale"  # not its parent's name
    model = Sequential([m.SubScale(), m.Doubler(), m.ChannelScale()], input_shape=(3, 2, 2))
    model.layers[0].parameters()["weight"].data[:] = [1.0, 2.0, 3.0]
    model.save(tmp_path / "m.npz")
    back, _, _ = load_checkpoint(tmp_path / "m.npz", plugins=["cnnf_plug_types"])
    assert [type(layer) for layer in back.layers] == [m.SubScale, m.Doubler, m.ChannelScale]
    np.testing.assert_array_equal(back.layers[0].parameters()["weight"].data, [1.0, 2.0, 3.0])


def test_resolving_a_resolved_config_keeps_the_recorded_modules(tmp_path, monkeypatch):
    (tmp_path / "cnnf_plug_idem.py").write_text(PLUGIN.replace("NAME", "plug_scale_idem"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(model_yaml("{type: 'cnnf_plug_idem:Doubler'}"))
    cfg = load_config(cfg_path)
    assert cfg["plugins"] == ["cnnf_plug_idem"]
    assert resolve_config(json.loads(json.dumps(cfg)), name="exp") == cfg


# -- broken plugins ------------------------------------------------------------------------------------------
def write_marked(path, source):
    """Write ``source``; return the 1-based line of the line marked ``# <-- here``."""
    source = textwrap.dedent(source).lstrip("\n")
    path.write_text(source)
    return next(i for i, line in enumerate(source.splitlines(), 1) if "# <-- here" in line)


def train_in_process(capsys, tmp_path, cfg):
    code = main(["train", str(cfg), "-q", "--run-dir", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert not glob.glob(str(tmp_path / "runs" / "*")), "a failed config must not leave a run directory"
    return code, err


LAYER_HEAD = """
        import numpy as np
        import cnnframe
        from cnnframe import Layer


"""

BROKEN = {
    # name: (plugin source with the offending line marked, layer type to use, text the message must contain)
    "import_error": ("""
        import numpy as np

        SCALE = undefined_name * 2  # <-- here
        """, "relu", "NameError: name 'undefined_name' is not defined"),
    "syntax_error": ("""
        import numpy as np
        def forward(x:  # <-- here
            return x
        """, "relu", "syntax error"),
    "missing_dependency": ("""
        import numpy as np
        import cnnf_no_such_dependency_xyz  # <-- here
        """, "relu", "ModuleNotFoundError: No module named 'cnnf_no_such_dependency_xyz'"),
    "no_forward": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_no_forward")  # <-- here
        class NoForward(Layer):
            def backward(self, g):
                return g
        """, "broken_no_forward", "does not implement forward()"),
    "no_backward": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_no_backward")  # <-- here
        class NoBackward(Layer):
            def forward(self, x):
                return x
        """, "broken_no_backward", "does not implement backward()"),
    "declared_shape_wrong": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_declared_shape")  # <-- here
        class Halve(Layer):
            def forward(self, x):
                return x[:, : x.shape[1] // 2]

            def backward(self, g):
                return np.concatenate([g, g], axis=1)
        """, "broken_declared_shape", "declares (4, 8, 8) but forward() returned samples of shape (2, 8, 8)"),
    "output_shape_not_a_shape": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_output_shape")  # <-- here
        class Bad(Layer):
            def output_shape(self, input_shape):
                return input_shape[0] * input_shape[1]

            def forward(self, x):
                return x

            def backward(self, g):
                return g
        """, "broken_output_shape", "returned 32; expected a tuple of positive ints"),
    "output_shape_raises": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_output_shape_raises")
        class Bad(Layer):
            def output_shape(self, input_shape):
                return tuple(input_shape) + None  # <-- here

            def forward(self, x):
                return x

            def backward(self, g):
                return g
        """, "broken_output_shape_raises", "does not fit its input of shape (4, 8, 8)"),
    "forward_raises": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_forward_raises")
        class Bad(Layer):
            def forward(self, x):
                return x.reshape(3, 7)  # <-- here

            def backward(self, g):
                return g
        """, "broken_forward_raises", "ValueError: cannot reshape array"),
    "backward_wrong_shape": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_backward_shape")  # <-- here
        class Bad(Layer):
            def forward(self, x):
                return x

            def backward(self, g):
                return g[:1]
        """, "broken_backward_shape", "backward() returned a gradient of shape (1, 4, 8, 8)"),
    "constructor_raises": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_init")
        class Bad(Layer):
            def __init__(self, dtype="float32"):
                super().__init__(dtype)
                self.table = {}["missing"]  # <-- here

            def forward(self, x):
                return x

            def backward(self, g):
                return g
        """, "broken_init", "KeyError: 'missing'"),
    "get_config_without_type": (LAYER_HEAD + """
        @cnnframe.register_layer("broken_get_config")  # <-- here
        class Bad(Layer):
            def forward(self, x):
                return x

            def backward(self, g):
                return g

            def get_config(self):
                return {"dtype": self.dtype.name}
        """, "broken_get_config", "get_config()['type'] is None"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_file_names_its_file_and_line(case, capsys, tmp_path):
    source, layer_type, expected = BROKEN[case]
    plugin = tmp_path / f"{case}.py"
    line = write_marked(plugin, source)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(model_yaml(f"{{type: {layer_type}}}", plugins=[plugin.name]))
    code, err = train_in_process(capsys, tmp_path, cfg)
    assert code == 2, err
    assert err.startswith("cnnframe: error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert f"{plugin}:{line}" in err, err
    assert expected in err, err
    if layer_type != "relu":
        assert "model.layers[1]" in err  # and the layer's key path in the config


def test_broken_module_named_by_type(capsys, tmp_path, monkeypatch):
    plugin = tmp_path / "cnnf_broken_by_type.py"
    line = write_marked(plugin, """
        import numpy as np

        def f(:  # <-- here
            pass
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(model_yaml("{type: 'cnnf_broken_by_type:Anything'}"))
    code, err = train_in_process(capsys, tmp_path, cfg)
    assert code == 2 and err.count("\n") == 1, err
    assert "model.layers[1].type" in err and "syntax error" in err and f"{plugin}:{line}" in err
    cfg.write_text(model_yaml("{type: relu}").replace("dataset: digits", "dataset: 'cnnf_broken_by_type:Data'"))
    code, err = train_in_process(capsys, tmp_path, cfg)
    assert code == 2 and err.count("\n") == 1, err
    assert "data.dataset" in err and "syntax error" in err and f"{plugin}:{line}" in err
    cfg.write_text(model_yaml("{type: 'cnnf_no_such_module_xyz:Layer'}"))
    code, err = train_in_process(capsys, tmp_path, cfg)
    assert code == 2 and "model.layers[1].type" in err and "cnnf_no_such_module_xyz" in err


def test_broken_plugin_exit_status_and_no_traceback_in_a_real_process(tmp_path):
    plugin = tmp_path / "boom.py"
    line = write_marked(plugin, """
        import numpy as np
        raise RuntimeError("plugin failed on purpose")  # <-- here
        """)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(model_yaml("{type: relu}", plugins=["boom.py"]))
    for command in ("train", "validate", "gradcheck"):
        r = run_module(command, str(cfg), cwd=ROOT)
        assert r.returncode == 2, (command, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert f"plugins[0]: plugin {plugin} failed to import at {plugin}:{line}: RuntimeError: plugin failed on " \
               f"purpose" in r.stderr


def test_plugin_file_also_named_as_module_class(tmp_path, monkeypatch):
    """``plugins: [x.py]`` and ``type: x:Class`` are one module (not imported twice, so not registered twice)."""
    (tmp_path / "cnnf_plug_both.py").write_text(PLUGIN.replace("NAME", "plug_scale_both"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(model_yaml("{type: 'cnnf_plug_both:ChannelScale'}", "{type: 'cnnf_plug_both:Doubler'}",
                                   plugins=["cnnf_plug_both.py"]))
    cfg = load_config(cfg_path)
    assert cfg["plugins"] == [str(tmp_path / "cnnf_plug_both.py"), "cnnf_plug_both"]
    import cnnf_plug_both as m

    assert cnnframe.LAYERS.get("plug_scale_both") is m.ChannelScale
    assert type_name(m.Doubler) == "cnnf_plug_both:Doubler"  # what a checkpoint stores reloads by that name


def test_module_imported_first_then_named_as_plugin_file(tmp_path, monkeypatch):
    (tmp_path / "cnnf_plug_first.py").write_text(PLUGIN.replace("NAME", "plug_scale_first"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import cnnf_plug_first as m

    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(model_yaml("{type: plug_scale_first}", plugins=["cnnf_plug_first.py"]))
    assert load_config(cfg_path)["model"]["layers"][1] == {"type": "plug_scale_first"}
    assert cnnframe.LAYERS.get("plug_scale_first") is m.ChannelScale


def test_resume_a_plugin_run_names_its_plugin(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    plugin = conf / "scale.py"
    plugin.write_text(PLUGIN.replace("NAME", "plug_scale_resume"))
    cfg = conf / "exp.yaml"
    cfg.write_text(model_yaml("{type: plug_scale_resume}", plugins=["scale.py"], epochs=2))
    r = run_module("train", str(cfg), "-q", "--stop-after", "1", "--run-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*-*"))
    r = run_module("train", "--resume", run_dir, "-q", cwd=tmp_path)  # the recorded plugin list imports nothing
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown layer 'plug_scale_resume'" in r.stderr and f"trained with plugins: {plugin}" in r.stderr
    r = run_module("train", "--resume", run_dir, "-q", "--no-report", "--plugin", str(plugin), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout


# -- stored files never run code --------------------------------------------------------------------------------
POPEN = {"type": "subprocess:Popen", "args": "touch PWNED", "shell": True}
TINY = os.path.join(ROOT, "configs", "digits-tiny.yaml")


def rewrite_checkpoint(path, config=None, meta=None):
    """Replace a checkpoint's stored model config and/or meta, by hand (no pickle inside)."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    if config is not None:
        entries["__config__"] = np.array(json.dumps(config))
    if meta is not None:
        entries["__meta__"] = np.array(json.dumps(meta))
    cnnframe.io.atomic_save_npz(path, entries)


@pytest.fixture
def tiny_run(tmp_path, capsys):
    code = main(["train", TINY, "-q", "--set", "trainer.epochs=2", "--stop-after", "1", "--run-dir",
                 str(tmp_path / "runs")])
    capsys.readouterr()
    assert code == 0
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "*-*"))
    return run_dir


def cli_refuses(capsys, tmp_path, *args, expected):
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("cnnframe: error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert expected in err, err
    assert not (tmp_path / "PWNED").exists()
    return err


def test_crafted_checkpoint_runs_no_code(tmp_path, capsys, monkeypatch, tiny_run):
    """The stored model of best.npz asks for subprocess.Popen("touch PWNED", shell=True); the stored run
    config asks for it too.  Nothing loads it: predict, evaluate, Sequential.load, --resume."""
    monkeypatch.chdir(tmp_path)
    best = os.path.join(tiny_run, "best.npz")
    config = load_config(TINY)
    config["model"]["layers"][0] = POPEN
    rewrite_checkpoint(best, config={"input_shape": [1, 8, 8], "layers": [POPEN]},
                       meta={"epoch": 1, "config": config})
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
    refused = "comes from module 'subprocess'"
    err = cli_refuses(capsys, tmp_path, "predict", best, "--input", str(tmp_path / "x.npy"), expected=refused)
    assert "--plugin subprocess" in err
    cli_refuses(capsys, tmp_path, "evaluate", best, expected=refused)
    with pytest.raises(cnnframe.CheckpointError, match=refused):
        Sequential.load(best)
    # named as a plugin, it is still not a Layer: refused before anything calls it
    cli_refuses(capsys, tmp_path, "predict", best, "--input", str(tmp_path / "x.npy"), "--plugin", "subprocess",
                expected="not a subclass of cnnframe's Layer")
    with pytest.raises(cnnframe.CheckpointError, match="not a subclass of cnnframe's Layer"):
        Sequential.load(best, plugins=["subprocess"])
    # --resume reads best.npz as arrays only (they fit the run's model): the stored config is never built
    assert main(["train", "--resume", tiny_run, "-q", "--no-report"]) == 0
    assert not (tmp_path / "PWNED").exists()
    # and a crafted config.yaml in the run directory is a stored config like any other
    with open(os.path.join(tiny_run, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    cli_refuses(capsys, tmp_path, "train", "--resume", tiny_run, "-q", expected=refused)


def test_stored_data_source_is_never_called(tmp_path, capsys, monkeypatch, tiny_run):
    monkeypatch.chdir(tmp_path)
    last = os.path.join(tiny_run, "last.npz")
    meta = json.loads(str(np.load(last, allow_pickle=False)["__meta__"]))
    meta["config"]["data"] = {**meta["config"]["data"], "dataset": "os:system", "command": "touch PWNED"}
    rewrite_checkpoint(last, meta=meta)
    err = cli_refuses(capsys, tmp_path, "evaluate", last, expected="dataset type 'os:system' comes from module 'os'")
    assert "data.dataset" in err
    cli_refuses(capsys, tmp_path, "evaluate", last, "--plugin", "os", expected="not a subclass of cnnframe's Dataset")


def test_yaml_data_source_must_be_a_dataset(tmp_path, capsys, monkeypatch):
    """From YAML the user wrote, ``os:system`` imports ``os`` (named by the user) but is refused before it is
    called: it is not a Dataset."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(model_yaml("{type: relu}").replace("data: {dataset: digits}",
                                                      "data: {dataset: 'os:system', command: 'touch PWNED'}"))
    for command in ("validate", "train"):
        err = cli_refuses(capsys, tmp_path, command, str(cfg), expected="not a subclass of cnnframe's Dataset")
        assert "exp.yaml:1: data.dataset:" in err
    cfg.write_text(model_yaml(f"{{type: 'subprocess:Popen', args: 'touch PWNED', shell: true}}"))
    cli_refuses(capsys, tmp_path, "validate", str(cfg), expected="not a subclass of cnnframe's Layer")


def test_plugins_resolve_only_what_is_named():
    from cnnframe.layers import Conv2D, Layer
    from cnnframe.plugins import Plugins
    from cnnframe.registry import LAYERS

    assert Plugins().resolve(LAYERS, "conv2d", Layer) is Conv2D
    with pytest.raises(cnnframe.UntrustedTypeError) as info:
        Plugins().resolve(LAYERS, "os:system", Layer)
    assert info.value.module == "os" and "--plugin os" in str(info.value)
    with pytest.raises(TypeError, match="is builtin_function_or_method system, not a subclass of cnnframe's Layer"):
        Plugins(["os"]).resolve(LAYERS, "os:system", Layer)
    with pytest.raises(KeyError, match="module 'os' has no attribute 'Nope'"):
        Plugins(["os"]).resolve(LAYERS, "os:Nope", Layer)
    with pytest.raises(KeyError, match="needs it named for this load: --plugin FILE|MODULE"):
        Plugins().resolve(LAYERS, "not_a_layer_anywhere", Layer)


@pytest.mark.parametrize("command, needs", [("export", "onnx"), ("report", "matplotlib")])
def test_export_and_report_run_no_stored_code(tmp_path, capsys, monkeypatch, tiny_run, command, needs):
    pytest.importorskip(needs)
    monkeypatch.chdir(tmp_path)
    rewrite_checkpoint(os.path.join(tiny_run, "last.npz"), config={"input_shape": [1, 8, 8], "layers": [POPEN]})
    args = [tiny_run, str(tmp_path / "m.onnx")] if command == "export" else [tiny_run]
    err = cli_refuses(capsys, tmp_path, command, *args, expected="comes from module 'subprocess'")
    assert "--plugin subprocess" in err
