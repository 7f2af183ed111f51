"""Plugins: the user's own code (layers, losses, data sources, ...) and the one door it comes in by.

A plugin is a ``.py`` file or an importable module whose ``@register_*`` decorators add names to the
registries.  cnnframe imports code only when the user names it:

- a config the user wrote names it under ``plugins:``, or as a ``package.module:ClassName`` type;
- a load names it explicitly: ``--plugin FILE|MODULE`` on the command line, ``plugins=[...]`` in Python.

What a *file* holds never counts as naming: a checkpoint's stored config, a run directory's
``config.yaml`` and the ``plugins:`` list recorded there are data.  Loading them resolves types from
the registry (built-ins and the plugins named for the load) and refuses any other module, in the
spirit of Keras's ``safe_mode`` and PyTorch's ``weights_only``.  Every type is checked to be a
subclass of its family's base class (``Layer``, ``Loss``, ...) before it is called.

A ``.py`` file is imported under its plain module name when that name finds the same file on the
Python path (so ``plugins: [my_layers.py]`` and ``type: my_layers:Swish`` are one module), else under a
private name derived from its path.  Import errors name the plugin's own file and line.
"""
import importlib
import importlib.machinery
import importlib.util
import keyword
import os
import re
import sys
import traceback
import zlib

from cnnframe.checks import show
from cnnframe.errors import ConfigError, UntrustedTypeError
from cnnframe.locate import where

_HERE = os.path.abspath(__file__)

__all__ = ["Plugins", "import_plugins", "type_module", "plugin_option_hint"]


def type_module(name):
    """The module of a ``package.module:ClassName`` type (None for a registered name)."""
    if isinstance(name, str) and ":" in name:
        return name.partition(":")[0].strip() or None
    return None


def plugin_option_hint(module):
    return f"--plugin {module} (in Python: plugins=[{module!r}])"


class Plugins:
    """The code a config or a load may use beyond the built-ins.

    ``Plugins(["my_layers", "extra.py"])`` imports each (files relative to ``base_dir``).
    ``import_types=True`` (a config the user wrote) also imports the module of a ``module:Class`` type
    on first use; otherwise such a type resolves only from a module named here.  ``recorded`` lists the
    plugins a stored config names, for error messages (they are not imported).
    """

    def __init__(self, specs=(), base_dir=".", key="plugins", import_types=False, recorded=()):
        self.import_types = import_types
        self.recorded = list(recorded)
        self.specs = []  # as resolved: absolute paths of files, module names
        self.type_modules = []  # modules imported for module:Class types, in order of first use
        self._modules = {}  # module name -> module, every module this object allows
        self.add_all(specs, base_dir, key)

    @classmethod
    def of(cls, plugins, base_dir="."):
        """``plugins`` as a Plugins object (a list of files and modules is imported)."""
        if isinstance(plugins, Plugins):
            return plugins
        return cls(plugins or (), base_dir)

    @classmethod
    def for_classes(cls, classes):
        """Plugins allowing the modules of ``classes``: for rebuilding objects already in memory (their
        code is already running, so nothing is imported)."""
        named = cls()
        for c in classes:
            module = sys.modules.get(c.__module__)
            if module is not None:
                named._modules[c.__module__] = module
        return named

    # -- importing -------------------------------------------------------------------------------------
    def add_all(self, specs, base_dir=".", key="plugins"):
        if isinstance(specs, str):
            specs = [specs]
        if not isinstance(specs, (list, tuple)):
            raise ConfigError(f"must be a list of module names or .py files, got {show(specs)}", key=key)
        return [self.add(spec, base_dir, f"{key}[{i}]") for i, spec in enumerate(specs)]

    def add(self, spec, base_dir=".", key="plugins"):
        """Import one plugin (a module name, or a .py file relative to ``base_dir``); returns it as resolved."""
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"must be a module name or a .py file, got {show(spec)}", key=key)
        if spec.endswith(".py") or os.sep in spec or "/" in spec:
            path = os.path.abspath(spec if os.path.isabs(spec) else os.path.join(base_dir, spec))
            if not os.path.isfile(path):
                raise ConfigError(f"plugin file not found: {path}", key=key)
            module, resolved = _import_file(path, key), path
        else:
            module, resolved = _import_module(spec, key), spec
        self._modules[module.__name__] = module
        if resolved not in self.specs:
            self.specs.append(resolved)
        return resolved

    def allows(self, module_name):
        return module_name in self._modules

    @property
    def names(self):
        """The resolved config's ``plugins``: the named plugins, then the modules of module:Class types."""
        return self.specs + [m for m in self.type_modules if m not in self.specs]

    # -- types ---------------------------------------------------------------------------------------
    def resolve(self, registry, name, base, key=None):
        """The class a config's ``type`` names in ``registry``: a registered name, or ``module:QualName``
        from a module this object allows (or imports, with ``import_types``).  Checked to be a subclass
        of ``base`` before anything calls it.  KeyError (UntrustedTypeError for a module not named) or
        TypeError; ConfigError (at ``key``) for a module that fails to import."""
        module = type_module(name)
        if module is None:
            try:
                obj = registry.get(name)
            except KeyError as e:
                raise KeyError(str(e.args[0]) + self._unknown_hint()) from None
        else:
            obj = self._attribute(registry.family, name, self._module(registry.family, name, module, key))
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"{registry.family} type {name!r} is {_describe(obj)}, not a subclass of "
                            f"cnnframe's {base.__name__}; refusing to call it")
        return obj

    def _module(self, family, name, module, key):
        if module not in self._modules:
            if not self.import_types:
                raise UntrustedTypeError(
                    f"{family} type {name!r} comes from module {module!r}, which this load was not given: a "
                    f"checkpoint or a run's stored config never makes cnnframe import code. If you trust "
                    f"{module!r}, name it: {plugin_option_hint(module)}", module)
            # A config the user wrote: the module is named by the type itself.  Imported here, so a broken
            # module is reported like a broken plugin (its file and line).
            self._modules[module] = _import_module(module, key)
        if self.import_types and module not in self.type_modules:
            self.type_modules.append(module)  # recorded, so whoever reloads the run knows what to name
        return self._modules[module]

    def _attribute(self, family, name, module):
        obj = module
        attr = name.partition(":")[2].strip()
        if not attr:
            raise KeyError(f"{family} type {name!r} must look like 'package.module:ClassName'")
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise KeyError(f"{family} type {name!r}: module {module.__name__!r} has no attribute {attr!r}") \
                    from None
        return obj

    def _unknown_hint(self):
        if self.import_types:
            return ""
        hint = "; a type from a plugin needs it named for this load: --plugin FILE|MODULE"
        if self.recorded:
            hint += f" (the run was trained with plugins: {', '.join(map(str, self.recorded))})"
        return hint


def import_plugins(plugins, base_dir=".", key="plugins"):
    """Import each plugin (module name, or .py file relative to ``base_dir``); return them as resolved
    (files as absolute paths, so a saved config works from anywhere)."""
    if plugins is None:
        return []
    return Plugins(plugins, base_dir, key).specs


def _describe(obj):
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__} ({where(obj)})"
    return f"{type(obj).__name__} {getattr(obj, '__qualname__', '')}".strip()


# -- importing files and modules ----------------------------------------------------------------------------
def _loaded_from(path):
    """The module already imported from the file ``path``, if any."""
    real = os.path.realpath(path)
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f and os.path.realpath(f) == real:
            return module
    return None


def _plain_name(path):
    """The module name under which ``import`` would find this very file on the Python path, if any."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isidentifier() or keyword.iskeyword(stem) or stem in sys.modules:
        return None
    spec = importlib.machinery.PathFinder.find_spec(stem)  # searches sys.path; runs no code
    if spec is not None and spec.origin and os.path.realpath(spec.origin) == os.path.realpath(path):
        return stem
    return None


def _import_file(path, key):
    module = _loaded_from(path)
    if module is not None:
        return module
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = _plain_name(path) or f"cnnframe_plugin_{stem}_{zlib.crc32(path.encode()):08x}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise _plugin_failure(e, path, key) from None
    return module


def _import_module(name, key):
    if "." not in name and name not in sys.modules:
        # The same file already imported as a plugin file: one module, not two (registrations stay single).
        spec = importlib.machinery.PathFinder.find_spec(name)
        loaded = _loaded_from(spec.origin) if spec is not None and spec.origin else None
        if loaded is not None:
            sys.modules[name] = loaded
            return loaded
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name or (e.name and name.startswith(e.name + ".")):
            raise ConfigError(
                f"cannot import plugin module {name!r}: no module named {e.name!r} on the Python path "
                f"(for a file, give a path ending in .py)",
                key=key,
            ) from None
        raise _plugin_failure(e, _module_origin(name), key) from None
    except Exception as e:
        raise _plugin_failure(e, _module_origin(name), key) from None


def _plugin_failure(exc, origin, key):
    if isinstance(exc, SyntaxError):
        where_ = f"{exc.filename}:{exc.lineno}" if exc.filename else origin
        return ConfigError(f"plugin {origin} has a syntax error at {where_}: {exc.msg}", key=key)
    frames = traceback.extract_tb(exc.__traceback__)
    # Prefer the deepest frame inside the plugin itself; else the deepest frame outside importlib and here.
    inside = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(origin)]
    outside = [f for f in frames if "importlib" not in f.filename and os.path.abspath(f.filename) != _HERE]
    f = (inside or outside or [None])[-1]
    at = f" at {f.filename}:{f.lineno}" if f is not None else ""
    return ConfigError(f"plugin {origin} failed to import{at}: {type(exc).__name__}: {exc}", key=key)


def _module_origin(name):
    """The file a module is loaded from (its name when unknown)."""
    try:
        spec = importlib.util.find_spec(name)
        return (spec and spec.origin) or name
    except Exception:
        return name
