"""Optional packages: never imported by ``import cnnframe``; a feature that needs a missing one says which extra."""
import os
import subprocess
import sys

import pytest

from cnnframe.cli import main
from cnnframe.errors import UserError
from cnnframe.optional import MissingDependency, available, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hide(monkeypatch, *modules):
    """Make ``import <module>`` fail as it does when the package is not installed."""
    for m in modules:
        for name in [n for n in sys.modules if n == m or n.startswith(m + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, m, None)


def test_import_cnnframe_imports_no_optional_package():
    code = ("import sys, cnnframe, cnnframe.cli, cnnframe.export, cnnframe.report\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'matplotlib', 'PIL', 'mpi4py') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_require_names_the_extra(monkeypatch):
    hide(monkeypatch, "onnx")
    assert not available("onnx")
    with pytest.raises(MissingDependency) as e:
        require("onnx", "ONNX export")
    assert isinstance(e.value, ImportError) and isinstance(e.value, UserError)
    assert str(e.value).startswith("ONNX export needs the onnx package, which is not installed")
    assert str(e.value).endswith('pip install "cnnframe[onnx]"')
    assert require("json", "anything").dumps([1]) == "[1]"


def test_image_folder_without_pillow(tmp_path, monkeypatch, capsys):
    for name in ("a", "b"):
        os.makedirs(tmp_path / "imgs" / name)
        (tmp_path / "imgs" / name / "x.png").write_bytes(b"")
    (tmp_path / "c.yaml").write_text("data: {dataset: image_folder, root: imgs}\n"
                                     "model: {layers: [{type: flatten}, {type: dense, out_features: 2}]}\n")
    hide(monkeypatch, "PIL")
    assert main(["validate", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "cnnframe[images]"' in err and "dataset: image_folder" in err


def test_export_without_onnx(tmp_path, monkeypatch, capsys):
    hide(monkeypatch, "onnx")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnframe: error: export needs the onnx package, which is not installed")
    assert err.endswith('pip install "cnnframe[onnx]"\n') and err.count("\n") == 1
    import cnnframe as cf
    from cnnframe.export import export_onnx

    with pytest.raises(ImportError, match=r'pip install "cnnframe\[onnx\]"'):
        export_onnx(cf.Sequential([cf.Dense(2)], input_shape=(3,)), None)
    assert not (tmp_path / "m.onnx").exists()


def test_report_without_matplotlib(tmp_path, monkeypatch, capsys):
    (tmp_path / "metrics.csv").write_text("epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds\n"
                                          "1,0.1,1,0.5,1,0.5,1\n")
    hide(monkeypatch, "matplotlib")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnframe: error: report needs the matplotlib package, which is not installed")
    assert err.endswith('pip install "cnnframe[plot]"\n') and err.count("\n") == 1
    assert os.listdir(tmp_path) == ["metrics.csv"]
