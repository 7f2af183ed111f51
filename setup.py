"""Build the Cython kernels, with OpenMP when the compiler supports it.

The OpenMP probe compiles, links and runs a tiny ``#pragma omp parallel`` program.  When it fails
(e.g. Apple clang without libomp) the kernels are built serial and a warning says so; the build test
in ``tests/test_build.py`` then fails unless ``CNNFRAME_SERIAL_BUILD=1`` says this was expected.
Set ``CNNFRAME_NO_OPENMP=1`` to force a serial build.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d", n > 0);
        return 0;
    }
    """
)


def _openmp_flags(compiler):
    """Return (compile_args, link_args) that enable OpenMP, or None when the compiler lacks it."""
    if os.environ.get("CNNFRAME_NO_OPENMP", "") not in ("", "0"):
        return None
    if sys.platform == "win32":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    tmp = tempfile.mkdtemp(prefix="cnnframe-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for cflags, lflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                exe = os.path.join(tmp, "probe")
                compiler.link_executable(objs, exe, extra_postargs=lflags)
                out = subprocess.run([exe], capture_output=True, text=True, timeout=60)
                if out.returncode == 0 and out.stdout.strip() == "1":
                    return cflags, lflags
            except Exception:  # noqa: BLE001 - any failure means "this flag set does not work"
                continue
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        flags = _openmp_flags(self.compiler)
        if flags is None:
            warnings.warn(
                "\n*** cnnframe: the C compiler does not support OpenMP; building SERIAL kernels. ***\n"
                "*** Training will use one core. Install an OpenMP runtime (e.g. libomp) and rebuild. ***",
                stacklevel=1,
            )
            print("cnnframe: OpenMP NOT available, building serial kernels", file=sys.stderr)
            cflags, lflags = [], []
        else:
            print(f"cnnframe: building with OpenMP ({' '.join(flags[0])})", file=sys.stderr)
            cflags, lflags = flags
        opt = ["/O2"] if sys.platform == "win32" else ["-O3", "-fno-strict-aliasing"]
        # Lets the compiler vectorise loops with a select (ReLU, pooling) or a square root (Adam): it no
        # longer keeps a floating-point operation from running where the source would skip it, nor
        # sets errno.  No result changes.
        elementwise = [] if sys.platform == "win32" else ["-fno-trapping-math", "-fno-math-errno"]
        for ext in self.extensions:
            extra = elementwise if ext.name.rsplit(".", 1)[-1] in ELEMENTWISE else []
            ext.extra_compile_args = opt + extra + cflags + list(ext.extra_compile_args or [])
            ext.extra_link_args = lflags + list(ext.extra_link_args or [])
        super().build_extensions()


# Kernel modules built with -fno-trapping-math (see BuildExt).
ELEMENTWISE = ("pool", "norm", "activation", "optim")


def _extensions():
    names = ["_openmp", "conv", "pool", "norm", "activation", "dense", "loss", "optim", "augment"]
    exts = [
        Extension(
            f"cnnframe._ext.{name}",
            [f"cnnframe/_ext/{name}.pyx"],
            include_dirs=["cnnframe/_ext"],
            # the C headers (micro-kernel, SIMD helpers, depthwise loops): a change rebuilds
            depends=sorted(glob.glob("cnnframe/_ext/*.h")),
        )
        for name in names
    ]
    return cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
