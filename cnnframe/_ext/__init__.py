"""Compiled kernels. Private: layers reach them only through :mod:`cnnframe.ops`."""


class KernelsNotBuilt(ImportError):
    """The source tree is imported but its Cython kernels are not compiled (or do not load)."""


BUILD_HINT = ("cnnframe: the compiled kernels are not built; from the repository root run "
              "`pip install -e .` (or `python setup.py build_ext --inplace`)")

try:
    import cnnframe._ext._openmp  # noqa: F401
    import cnnframe._ext.activation  # noqa: F401
    import cnnframe._ext.augment  # noqa: F401
    import cnnframe._ext.conv  # noqa: F401
    import cnnframe._ext.dense  # noqa: F401
    import cnnframe._ext.loss  # noqa: F401
    import cnnframe._ext.norm  # noqa: F401
    import cnnframe._ext.optim  # noqa: F401
    import cnnframe._ext.pool  # noqa: F401
except ModuleNotFoundError as e:
    if not (e.name or "").startswith("cnnframe._ext."):
        raise
    raise KernelsNotBuilt(BUILD_HINT) from None
except ImportError as e:  # built, but does not load (e.g. built for another Python)
    raise KernelsNotBuilt(f"{BUILD_HINT}: {e}") from None
