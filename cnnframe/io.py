"""Files: atomic writes, JSON of NumPy values, and ``.npz`` reads that never unpickle.

Writes are atomic: a reader sees either the old file or the complete new one, never a partial file.
Each writer fills a temporary file ``.<name>.<random>.tmp`` in the target's directory, flushes and
fsyncs it, then ``os.replace``-s it over the target (atomic on POSIX and Windows within one file
system, which is why the temporary file lives in the same directory).  On any error the temporary
file is removed and an existing target is left untouched.
"""
import json
import os
import secrets
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_save_npz", "json_text", "open_npz", "npz_entry"]


@contextmanager
def _atomic_file(path):
    """Yield a binary file object whose content replaces ``path`` when the block succeeds."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 filtered by the umask: the final file gets ordinary permissions (mkstemp's are 0o600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Persist the rename itself (POSIX); best effort, since not every platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes-like) to ``path`` atomically."""
    data = memoryview(data)
    with _atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path, text, encoding="utf-8"):
    """Write the string ``text`` to ``path`` atomically (``\\n`` line endings kept as given)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save_npz(path, arrays, compress=False):
    """Save ``arrays`` (name → array-like) as an ``.npz`` file at exactly ``path``, atomically.

    Every entry must be loadable with ``np.load(path, allow_pickle=False)``: object arrays are
    rejected with an error naming the entry.  Unlike ``np.savez``, no ``.npz`` suffix is appended.
    """
    if not hasattr(arrays, "items"):
        raise TypeError(f"arrays must be a dict of name -> array, got {type(arrays).__name__}")
    converted = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"npz entry names must be non-empty strings, got {key!r}")
        arr = np.asanyarray(value)
        if arr.dtype.hasobject:
            raise TypeError(
                f"npz entry {key!r} has dtype {arr.dtype}, which needs pickling; "
                "store numbers, booleans or strings only"
            )
        converted[key] = np.asarray(arr)
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with _atomic_file(path) as f:
        # Written entry by entry (what np.savez does) so names may contain '/'.
        with zipfile.ZipFile(f, mode="w", compression=compression, allowZip64=True) as zf:
            for key, arr in converted.items():
                with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)


# -- JSON -------------------------------------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"object of type {type(o).__name__} is not JSON-serialisable")


def json_text(obj, **kwargs):
    """``json.dumps`` that also writes NumPy scalars and arrays (as numbers and lists)."""
    return json.dumps(obj, default=_json_default, **kwargs)


# -- reading .npz files -----------------------------------------------------------------------------------------
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def open_npz(path):
    """The ``.npz`` archive at ``path`` opened with ``allow_pickle=False`` (a context manager).

    Raises FileNotFoundError, IsADirectoryError, or ValueError saying in plain words why the file is not
    an archive (empty, a single ``.npy`` array, other bytes) -- never NumPy's advice to unpickle it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a file")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise ValueError("the file is empty")
    if head.startswith(_NPY_MAGIC):
        raise ValueError("it holds a single array (.npy), not an .npz archive")
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError("it is not an .npz archive (a zip file of .npy arrays)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"it is not a readable .npz archive ({type(e).__name__})") from None


def npz_entry(npz, key):
    """One array of an open archive; ValueError naming the entry when it is unreadable or pickled."""
    try:
        return npz[key]
    except ValueError:  # object arrays need pickling, which is never allowed
        raise ValueError(f"entry {key!r} holds Python objects (pickled data) or is corrupt") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"entry {key!r} is unreadable ({type(e).__name__}: {e})") from None
