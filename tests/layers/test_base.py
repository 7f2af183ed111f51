"""The base Layer: declared defaults and the allocation limit that checking a config or loading a checkpoint sets."""
import numpy as np
import pytest

from cnnframe.errors import MemoryLimitError
from cnnframe.layers import Dense, Layer
from cnnframe.layers.base import allocation_limit, format_bytes


def test_need_input_grad_is_declared_on_every_layer():
    assert Layer.need_input_grad is True and Layer().need_input_grad is True


def test_allocation_limit_stops_before_allocating():
    with allocation_limit(10_000, "the test limit") as budget:
        Dense(10, in_features=100)  # 100·10 + 10 float32 = 4,040 bytes
        assert budget.used == 4040
        with pytest.raises(MemoryLimitError, match=r"Dense: 'weight' of shape \(10, 200\) needs 7.8 KiB, which with "
                                                   r"the 3.9 KiB allocated before it passes the test limit"):
            Dense(10, in_features=200)
    Dense(10, in_features=200)  # no limit outside the block
    layer = Layer("float64")
    with allocation_limit(100):
        layer.add_buffer("b", np.zeros(12))
        with pytest.raises(MemoryLimitError):
            layer.add_parameter("w", np.zeros(1))  # 96 + 8 bytes > 100


def test_format_bytes():
    assert [format_bytes(n) for n in (12, 1536, 3 << 20, 5 << 30)] == ["12 B", "1.5 KiB", "3.0 MiB", "5.0 GiB"]
