"""``dataset: idx``: MNIST-format IDX files, an images file and a labels file, gzipped or not.

The format: a 4-byte magic number ``00 00 TT DD`` (TT the value type, DD the number of dimensions), DD
big-endian uint32 sizes, then the values in C order, big-endian.  MNIST's images are ``0x00000803``
(uint8, N × 28 × 28) and its labels ``0x00000801`` (uint8, N).  A file starting with gzip's bytes
``1f 8b`` is decompressed whatever its name.
"""
import gzip
import os
import zlib

import numpy as np

from cnnframe.datasets.base import NORMALIZE, Dataset, count_classes, scalar_normalization
from cnnframe.errors import DataError
from cnnframe.registry import register_dataset

#: type byte → big-endian NumPy dtype
TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path, key):
    if not os.path.exists(path):
        raise DataError(f"file not found: {path}", key=key)
    if os.path.isdir(path):
        raise DataError(f"is a directory, expected an IDX file: {path}", key=key)
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _header(f, path, key):
    """(dtype, dims) from the magic number and the sizes."""
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(f"{path} is truncated: {len(magic)} bytes, shorter than an IDX header", key=key)
    if magic[:2] != b"\x00\x00" or magic[2] not in TYPES or magic[3] == 0:
        raise DataError(f"{path} is not an IDX file: magic number 0x{int.from_bytes(magic, 'big'):08x} (expected "
                        f"0x0000TTDD with type TT in {', '.join(f'{t:02x}' for t in TYPES)} and DD >= 1 dimensions, "
                        f"e.g. 0x00000803 for MNIST images, 0x00000801 for labels)", key=key)
    raw = f.read(4 * magic[3])
    if len(raw) < 4 * magic[3]:
        raise DataError(f"{path} is truncated: its header declares {magic[3]} dimensions but ends after "
                        f"{len(raw) // 4}", key=key)
    return np.dtype(TYPES[magic[2]]), tuple(int(d) for d in np.frombuffer(raw, dtype=">u4"))


def _read_upto(f, n, chunk=1 << 24):
    """At most ``n`` bytes, read in chunks: a damaged header may declare far more than the file holds."""
    parts, got = [], 0
    while got < n:
        b = f.read(min(n - got, chunk))
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def read_idx(path, header_only=False, key="data"):
    """The array in the IDX file at ``path`` (native byte order), or just ``(dtype, dims)`` with ``header_only``.

    Raises DataError naming the file for a wrong magic number, a truncated file, bytes after the declared
    values, or a broken gzip stream."""
    try:
        with _open(path, key) as f:
            dtype, dims = _header(f, path, key)
            if header_only:
                return dtype, dims
            need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            data = _read_upto(f, need)
            extra = len(f.read(1))
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a cut gzip stream an EOFError
        raise DataError(f"cannot read {path}: {e}", key=key) from None
    if len(data) < need:
        raise DataError(f"{path} is truncated: its header declares {' × '.join(map(str, dims))} values of "
                        f"{dtype.itemsize} byte(s) ({need} bytes) but it holds {len(data)}", key=key)
    if extra:
        raise DataError(f"{path} holds more bytes than the {' × '.join(map(str, dims))} values its header "
                        f"declares: not an IDX file, or a damaged one", key=key)
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


@register_dataset("idx")
class IdxData(Dataset):
    """Images and labels from two IDX files (MNIST's format; ``.gz`` or plain).

    images: (N, rows, cols) for one channel, or (N, C, H, W).  labels: (N,) integer class indices.
    normalize: ``unit`` (default: uint8 pixels / 255, other types / max|X| of the training part),
    ``standardize`` or ``none``, as for ``npz``.  ``num_classes`` defaults to max(label) + 1.
    """

    path_keys = ("images", "labels")

    def __init__(self, images, labels, normalize="unit", num_classes=None):
        for k, v in (("images", images), ("labels", labels)):
            if not isinstance(v, str) or not v:
                raise DataError(f"{k} must be the path of an IDX file, got {v!r}", key=f"data.{k}")
        if normalize not in NORMALIZE:
            raise DataError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}",
                            key="data.normalize")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise DataError(f"num_classes must be an integer >= 2 or null, got {num_classes!r}", key="data.num_classes")
        self.images, self.labels, self.normalize, self.num_classes = images, labels, normalize, num_classes

    def _sample_shape(self, dims):
        if len(dims) not in (3, 4) or min(dims) < 1:
            raise DataError(f"{self.images} holds an array of shape {dims}; expected images (N, rows, cols) or "
                            f"(N, C, H, W)", key="data.images")
        return (1,) + dims[1:] if len(dims) == 3 else dims[1:]

    def _read_labels(self, n):
        y = read_idx(self.labels, key="data.labels")
        if y.ndim != 1:
            raise DataError(f"{self.labels} holds an array of shape {y.shape}; expected labels (N,)", key="data.labels")
        if y.dtype.kind not in "iu":
            raise DataError(f"{self.labels} holds {y.dtype} values; expected integer class labels", key="data.labels")
        if len(y) != n:
            raise DataError(f"{self.images} holds {n} images but {self.labels} holds {len(y)} labels",
                            key="data.labels")
        y = y.astype(np.int64)
        if y.size and y.min() < 0:
            raise DataError(f"{self.labels} has label {int(y.min())} < 0; labels must be 0..K-1", key="data.labels")
        k = self.num_classes
        if k is not None and y.size and y.max() >= k:
            raise DataError(f"{self.labels} has label {int(y.max())}, out of range for num_classes={k}",
                            key="data.labels")
        return y

    def describe(self):
        _, dims = read_idx(self.images, header_only=True, key="data.images")
        shape = self._sample_shape(dims)
        return shape, count_classes(self._read_labels(dims[0]), self.num_classes, self.labels, key="data.labels")

    def load(self):
        X = read_idx(self.images, key="data.images")
        X = X.reshape((X.shape[0],) + self._sample_shape(X.shape))
        y = self._read_labels(X.shape[0])
        if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
            raise DataError(f"{self.images} holds NaN or infinite values", key="data.images")
        return X, y

    def transform(self, X_train):
        return scalar_normalization(X_train, self.normalize, unit=255.0 if X_train.dtype == np.uint8 else None)
