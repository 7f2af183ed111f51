import pytest

from cnnframe.ops import conv, pool


@pytest.fixture(autouse=True)
def every_size_uses_all_threads(monkeypatch):
    """Kernel tests use tiny tensors; make them take the multi-threaded paths anyway."""
    monkeypatch.setattr(conv, "GRAIN_FLOPS", 1)
    monkeypatch.setattr(pool, "GRAIN_ELEMS", 1)
