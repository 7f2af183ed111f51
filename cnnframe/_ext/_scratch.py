"""Scratch memory reused across kernel calls.

A fresh multi-megabyte NumPy buffer per call comes from mmap: every 4 KiB page then costs a page
fault on first touch, which cost more than the arithmetic on digits-sized layers.  One buffer per
dtype is kept and grown as needed; a call that finds it in use (another Python thread inside a
kernel) gets a private buffer instead.
"""
import math
import threading

import numpy as np

_ALIGN = 64  # bytes: a cache line, and a full AVX-512 vector


class Scratch:
    def __init__(self):
        self._lock = threading.Lock()
        self._buffers = {}

    def get(self, dtype, shapes):
        """Return (views, release): one C-contiguous, 64-byte aligned view per shape."""
        dtype = np.dtype(dtype)
        per = _ALIGN // dtype.itemsize
        sizes = [math.prod(s) for s in shapes]
        padded = [-(-n // per) * per for n in sizes]
        total = sum(padded) + per
        if self._lock.acquire(blocking=False):
            buf, start = self._buffers.get(dtype, (None, 0))
            if buf is None or buf.size - start < total - per:
                buf = np.empty(total, dtype)
                start = (-buf.ctypes.data % _ALIGN) // dtype.itemsize
                self._buffers[dtype] = (buf, start)
            release = self._lock.release
        else:
            buf = np.empty(total, dtype)
            start = (-buf.ctypes.data % _ALIGN) // dtype.itemsize
            release = _nothing
        views = []
        for shape, n, p in zip(shapes, sizes, padded):
            views.append(buf[start : start + n].reshape(shape))
            start += p
        return views, release

    def clear(self):
        """Drop the cached buffers (they are re-created on the next call)."""
        with self._lock:
            self._buffers.clear()


def _nothing():
    pass


SCRATCH = Scratch()
