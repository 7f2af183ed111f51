"""``python -m cnnframe info``: version, OpenMP, threads, BLAS and the registered names."""
import platform

import numpy as np

import cnnframe
from cnnframe import parallel
from cnnframe._ext import _openmp
from cnnframe._ext import conv as _conv
from cnnframe.config import _ensure_registered

NAME = "info"
HELP = "version, OpenMP, threads, BLAS and registered names"


def add_arguments(p):
    pass


def run(args):
    print(f"cnnframe {cnnframe.__version__}  (python {platform.python_version()}, numpy {np.__version__})")
    if _openmp.openmp_enabled():
        print(f"OpenMP: compiled in (runtime default {_openmp.openmp_max_threads()} threads)")
    else:
        print("OpenMP: not compiled in (kernels run on one thread)")
    print(f"threads: {parallel.get_num_threads()}  (CNNFRAME_NUM_THREADS, trainer.threads or set_num_threads)")
    dyn = "on" if parallel.get_dynamic() else "off"
    print(f"dynamic threads: {dyn}  (fewer threads while other processes keep cores busy; CNNFRAME_DYNAMIC_THREADS)")
    mk = "AVX-512 micro-kernel" if _conv.microkernel_available() else "BLAS (no AVX-512 on this CPU)"
    print(f"float32 convolution products: {mk}")
    libs = parallel.blas_info()
    if not libs:
        print("BLAS: none found by threadpoolctl")
    for api, version, threads, path in libs:
        print(f"BLAS: {api} {version or '?'}, {threads} threads, {path}")
    _ensure_registered()
    for label, reg in (("layers", cnnframe.LAYERS), ("losses", cnnframe.LOSSES), ("optimizers", cnnframe.OPTIMIZERS),
                       ("schedules", cnnframe.SCHEDULES), ("datasets", cnnframe.DATASETS)):
        print(f"{label}: {', '.join(reg.names())}")
    return 0
