"""Files: atomic writes, JSON of NumPy values, and ``.npz`` reads that never unpickle.

Writes are atomic: a reader sees either the old file or the complete new one, never a partial file.
Each writer fills a temporary file ``.<name>.<random>.tmp`` in the target's directory, flushes and
fsyncs it, then ``os.replace``-s it over the target (atomic on POSIX and Windows within one file
system, which is why the temporary file lives in the same directory).  On any error the temporary
file is removed and an existing target is left untouched.  ``stage`` is the first half alone: a run
directory commits several staged files as one step (``cnnframe/rundir.py``).  A full or failing disk
raises ``WriteError`` naming the file.
"""
import errno
import json
import os
import secrets
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np

from cnnframe.errors import WriteError

__all__ = ["stage", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_npz", "npz_writer",
           "disk_error", "remove_quietly", "fsync_directory", "json_text", "open_npz", "npz_entry", "load_array"]

# What a full or failing disk reports; raised as WriteError naming the file (the command line's exit status 74).
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def disk_error(e, path):
    """``e`` as a WriteError naming ``path`` when it says the disk is full or failing, else None."""
    return WriteError(path, e) if isinstance(e, OSError) and e.errno in _DISK_ERRORS else None


def _target(path):
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file name", path)
    return path, directory, name


@contextmanager
def _removed_on_error(tmp, path):
    """Remove ``tmp`` when the block fails; a full or failing disk's error becomes a WriteError naming ``path``."""
    try:
        yield
    except BaseException as e:
        remove_quietly(tmp)
        disk = disk_error(e, path)
        if disk is not None:
            raise disk from None
        raise


def stage(path, write):
    """A new temporary file ``.<name>.<random>.tmp`` beside ``path`` filled by ``write(f)`` (``f``: a binary
    file), flushed, fsynced and closed; returns its path.  On any error it is removed again; a full or
    failing disk raises WriteError naming ``path``."""
    path, directory, name = _target(path)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 filtered by the umask: the final file gets ordinary permissions (mkstemp's are 0o600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise (disk_error(e, path) or e) from None
    with _removed_on_error(tmp, path):
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return tmp


def atomic_write(path, write):
    """Replace ``path`` by the content ``write(f)`` puts in a binary file, atomically (see the module doc)."""
    tmp = stage(path, write)
    with _removed_on_error(tmp, path):
        os.replace(tmp, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


def remove_quietly(path):
    """Remove ``path`` if it is there (a file this module or a run directory left)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_directory(directory):
    """Persist renames and new names in ``directory`` (POSIX); best effort, since not every platform allows it."""
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
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text, encoding="utf-8"):
    """Write the string ``text`` to ``path`` atomically (``\\n`` line endings kept as given)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    atomic_write_bytes(path, text.encode(encoding))


def npz_writer(arrays, compress=False):
    """A function ``write(f)`` putting ``arrays`` (name → array-like) into the binary file ``f`` as an ``.npz``.

    Every entry must be loadable with ``np.load(path, allow_pickle=False)``: object arrays are rejected here,
    before anything is written, with an error naming the entry.
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

    def write(f):
        # Written entry by entry (what np.savez does) so names may contain '/'.
        with zipfile.ZipFile(f, mode="w", compression=compression, allowZip64=True) as zf:
            for key, arr in converted.items():
                with zf.open(key + ".npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)

    return write


def atomic_save_npz(path, arrays, compress=False):
    """Save ``arrays`` (name → array-like) as an ``.npz`` file at exactly ``path``, atomically (``npz_writer``).
    Unlike ``np.savez``, no ``.npz`` suffix is appended."""
    atomic_write(path, npz_writer(arrays, compress))


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


def _head(path):
    """``path`` and its first bytes (FileNotFoundError, IsADirectoryError; ValueError for an empty file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a file")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise ValueError("the file is empty")
    return path, head


def open_npz(path):
    """The ``.npz`` archive at ``path`` opened with ``allow_pickle=False`` (a context manager).

    Raises FileNotFoundError, IsADirectoryError, or ValueError saying in plain words why the file is not
    an archive (empty, a single ``.npy`` array, other bytes) -- never NumPy's advice to unpickle it.
    """
    path, head = _head(path)
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


def load_array(path):
    """The contents of a ``.npy`` file (an array) or an ``.npz`` archive (an open ``NpzFile``), read with
    ``allow_pickle=False``.

    Raises FileNotFoundError, IsADirectoryError, or ValueError saying in plain words why the file is neither
    (empty, other bytes, pickled objects, cut short) -- never NumPy's advice to unpickle it.
    """
    path, head = _head(path)
    if head.startswith(_ZIP_MAGIC):
        return open_npz(path)
    if not head.startswith(_NPY_MAGIC):
        raise ValueError("it is not a .npy array or an .npz archive of arrays")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:  # an object array: its data is pickled, which is never loaded
        raise ValueError("it holds Python objects (pickled data), not numbers") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"it is not a readable .npy array ({type(e).__name__})") from None
