"""``python -m cnnframe info``: version, OpenMP, threads, BLAS and the registered names."""
from cnnframe.build_info import build_info
from cnnframe.registry import registered_names

NAME = "info"
HELP = "version, OpenMP, threads, BLAS and registered names"


def add_arguments(p):
    pass


def run(args):
    b = build_info()
    print(f"cnnframe {b['version']}  (python {b['python']}, numpy {b['numpy']})")
    if b["openmp"]:
        print(f"OpenMP: compiled in (runtime default {b['openmp_threads']} threads)")
    else:
        print("OpenMP: not compiled in (kernels run on one thread)")
    print(f"threads: {b['threads']}  (CNNFRAME_NUM_THREADS, trainer.threads or set_num_threads)")
    dyn = "on" if b["dynamic_threads"] else "off"
    print(f"dynamic threads: {dyn}  (fewer threads while other processes keep cores busy; CNNFRAME_DYNAMIC_THREADS)")
    mk = "AVX-512 micro-kernel" if b["microkernel"] else "BLAS (no AVX-512 on this CPU)"
    print(f"float32 convolution products: {mk}")
    if not b["blas"]:
        print("BLAS: none found by threadpoolctl")
    for api, version, threads, path in b["blas"]:
        print(f"BLAS: {api} {version or '?'}, {threads} threads, {path}")
    for family, names in registered_names().items():
        print(f"{family}: {', '.join(names)}")
    return 0
