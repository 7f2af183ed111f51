import pytest

from cnnframe._ext import conv as conv_ext
from cnnframe.ops import activation, augment, conv, dense, loss, norm, optim, pool


@pytest.fixture(autouse=True)
def every_size_uses_all_threads(monkeypatch):
    """Kernel tests use tiny tensors; make them take the multi-threaded paths anyway."""
    monkeypatch.setattr(conv, "GRAIN_FLOPS", 1)
    monkeypatch.setattr(dense, "GRAIN_FLOPS", 1)
    for module in (activation, augment, loss, norm, optim, pool):
        monkeypatch.setattr(module, "GRAIN_ELEMS", 1)


# The float32 convolution has four code paths: BLAS on an explicit im2col (every CPU, and all of
# float64), the AVX-512 micro-kernel on the explicit im2col, and the micro-kernel reading the input
# in place, with uniform rows over the padded width (stride 1) or listed rows (any stride).
# "implicit" forces uniform rows for every stride-1 case, "listed" forces listed rows everywhere, whatever the size heuristics would pick.
KERNEL_PATHS = ["blas", "microkernel", "implicit", "listed"]


@pytest.fixture(params=KERNEL_PATHS)
def kernel_path(request):
    if request.param != "blas" and not conv_ext.microkernel_available():
        pytest.skip("this CPU has no AVX-512: only the BLAS path exists here")
    old_mk = conv_ext._use_microkernel(request.param != "blas")
    old_policy = conv_ext._implicit_policy(on=request.param in ("implicit", "listed"))
    if request.param == "implicit":
        conv_ext._implicit_policy(max_waste_pct=10**6, dx_min_channels=1)
    elif request.param == "listed":
        conv_ext._implicit_policy(max_waste_pct=-1, dx_min_channels=1)
    yield request.param
    conv_ext._use_microkernel(old_mk)
    conv_ext._implicit_policy(**old_policy)
