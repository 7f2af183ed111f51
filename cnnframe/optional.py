"""Optional packages (the ``[onnx]``, ``[plot]`` and ``[images]`` extras), imported only when a feature needs them.

``import cnnframe`` never imports onnx, onnxruntime, matplotlib or Pillow; the export, the run report and the
image-folder data set call ``require(...)`` at the moment they need one.
"""
import importlib

from cnnframe.errors import UserError

#: module → the extra that installs it
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "matplotlib": "plot", "PIL": "images"}


class MissingDependency(UserError, ImportError):
    """An optional package a feature needs is not installed; the message names the pip command.

    Both an ImportError (what Python callers expect) and a UserError (one line and exit status 2 from the CLI).
    """


def require(module, feature):
    """Import and return ``module``, or raise MissingDependency saying which extra brings it for ``feature``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS.get(module.split(".")[0], "test")
        raise MissingDependency(f"{feature} needs the {module.split('.')[0]} package, which is not installed "
                                f"({e}): pip install \"cnnframe[{extra}]\"") from None


def available(module):
    """True when ``module`` imports (a feature can then run its optional part)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
