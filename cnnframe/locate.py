"""Where in the user's code a problem is: the file and line an error message names.

A broken plugin is reported at its own line (``(at my_layers.py:12)``), not at the cnnframe code that
called it; a class by the line that defines it.
"""
import inspect
import os
import sys
import traceback

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_DIRS = tuple({os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
# cnnframe's own checking code: never the place a problem is (it is where it was noticed)
_CHECKERS = tuple(os.path.join(_PACKAGE_DIR, p) for p in ("config", "plugins.py", "locate.py", "model.py",
                                                          os.path.join("layers", "spec.py")))


def is_user_file(filename):
    """Not cnnframe itself, not the standard library or an installed package (numpy, ...)."""
    f = os.path.abspath(filename)
    if f.startswith(_PACKAGE_DIR + os.sep) or filename.startswith("<"):
        return False
    return not (f.startswith(_LIBRARY_DIRS) or "site-packages" in f or "dist-packages" in f)


def code_location(exc, user_only=False):
    """``" (at file:line)"``: the innermost frame of the exception's traceback in the user's code (a
    plugin), else (unless ``user_only``) the innermost frame outside cnnframe's checking code; or ""."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(_CHECKERS)]
    user = [f for f in frames if is_user_file(f.filename)]
    if user:
        f = user[-1]
    elif frames and not user_only:
        f = frames[-1]
    else:
        return ""
    return f" (at {f.filename}:{f.lineno})"


def where(cls):
    """``file:line`` of a class's definition (its module's name when the source is unknown)."""
    try:
        return f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
    except (TypeError, OSError):
        return getattr(cls, "__module__", "?")
