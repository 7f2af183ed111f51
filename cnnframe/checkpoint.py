"""The checkpoint file: one ``.npz``, written atomically, read with ``allow_pickle=False``.

Entries: ``param/<i>.<name>`` and ``buffer/<i>.<name>`` arrays (a model's state), the caller's
``extra/<key>`` arrays (e.g. optimizer state), and three strings stored as 0-d unicode arrays:
``__format__`` (``FORMAT``), and the JSON of ``__config__`` (the model's ``get_config()``) and
``__meta__`` (the caller's dict; the trainer stores the epoch, the preprocessing and the run's
resolved config there).

This module reads and writes the file and nothing else: a checkpoint is data.  Building a model from
it (``cnnframe.model.load_checkpoint``) resolves the stored layer types like any stored config, from
the registry and the plugins named for the load only.
"""
import json
import os
from collections import OrderedDict

import numpy as np

from cnnframe.errors import CheckpointError
from cnnframe.io import atomic_write, json_text, npz_entry, npz_writer, open_npz

__all__ = ["FORMAT", "Checkpoint", "writer", "write", "read", "read_meta"]

FORMAT = "cnnframe-checkpoint/1"
_FORMAT, _CONFIG, _META = "__format__", "__config__", "__meta__"
_PARAM, _BUFFER, _EXTRA = "param/", "buffer/", "extra/"


class Checkpoint:
    """What a checkpoint file holds: ``config`` (the model's, as stored), ``meta``, ``params`` and
    ``buffers`` (name → array, names as in ``Sequential.state_dict``), ``arrays`` (the caller's extras)."""

    def __init__(self, path, config, meta, params, buffers, arrays):
        self.path, self.config, self.meta = path, config, meta
        self.params, self.buffers, self.arrays = params, buffers, arrays

    @property
    def state(self):
        """Parameters and buffers together, as ``Sequential.load_state_dict`` takes them."""
        return {**self.params, **self.buffers}

    def load_into(self, model):
        """Copy the stored parameters and buffers into ``model`` (one built from its config); CheckpointError
        naming the mismatch when they do not fit it."""
        try:
            model.load_state_dict(self.state)
        except (KeyError, ValueError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise CheckpointError(f"{self.path} does not fit the configured model: {message}") from None

    @property
    def build_budget(self):
        """Bytes that building the model this checkpoint fills may allocate: what its arrays hold, with
        room to spare (a stored config asking for far more is not this checkpoint's model)."""
        held = sum(a.nbytes for a in self.params.values()) + sum(a.nbytes for a in self.buffers.values())
        return 2 * int(held) + (64 << 20)


def writer(config, params, buffers, arrays=None, meta=None):
    """A function ``write(f)`` putting one checkpoint into the binary file ``f`` (``config`` and ``meta``
    must be JSON-ready; checked here, before anything is written)."""
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    entries = OrderedDict()
    entries[_FORMAT] = np.array(FORMAT)
    entries[_CONFIG] = np.array(json_text(config))
    try:
        entries[_META] = np.array(json_text(meta))
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint meta is not JSON-serialisable: {e}") from None
    for name, a in params.items():
        entries[_PARAM + name] = a
    for name, a in buffers.items():
        entries[_BUFFER + name] = a
    for key, value in (arrays or {}).items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"checkpoint array names must be non-empty strings, got {key!r}")
        entries[_EXTRA + key] = value
    return npz_writer(entries)


def write(path, config, params, buffers, arrays=None, meta=None):
    """Write one checkpoint file at ``path`` atomically (``config`` and ``meta`` must be JSON-ready)."""
    atomic_write(path, writer(config, params, buffers, arrays, meta))


def _open(path):
    try:
        return open_npz(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path!r} does not exist") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a file") from None
    except ValueError as e:
        raise CheckpointError(f"{path!r} is not a cnnframe checkpoint: {e}") from None


def _entry(npz, key, path):
    try:
        return npz_entry(npz, key)
    except ValueError as e:
        raise CheckpointError(f"{path!r} is not a cnnframe checkpoint: {e}") from None


def _string(npz, key, path):
    if key not in npz.files:
        raise CheckpointError(f"{path!r} is not a cnnframe checkpoint: it has no {key!r} entry")
    arr = _entry(npz, key, path)
    if arr.shape != () or arr.dtype.kind != "U":
        raise CheckpointError(f"{path!r}: entry {key!r} must be a string, got a {arr.dtype} array of shape {arr.shape}")
    return str(arr)


_MAX_DEPTH = 100  # far deeper than any config; a deeper entry is not one cnnframe wrote


def _json(npz, key, path):
    try:
        value = json.loads(_string(npz, key, path))
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path!r}: entry {key!r} is not valid JSON ({type(e).__name__})") from None
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"{path!r}: entry {key!r} nests deeper than {_MAX_DEPTH} levels")
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, depth + 1) for c in children)
    return value


def _meta(npz, path):
    meta = _json(npz, _META, path) if _META in npz.files else {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path!r}: entry {_META!r} must hold a JSON object, got {type(meta).__name__}")
    return meta


def _check_format(npz, path):
    fmt = _string(npz, _FORMAT, path)
    if fmt != FORMAT:
        raise CheckpointError(f"{path!r}: unsupported checkpoint format {fmt!r} (this cnnframe reads {FORMAT!r})")


def read(path):
    """Everything in the checkpoint at ``path`` as a ``Checkpoint``; CheckpointError (a ValueError) saying
    what is wrong with a file that is not one (empty, a ``.npy``, other bytes, a missing entry)."""
    path = os.fspath(path)
    with _open(path) as npz:
        _check_format(npz, path)
        config = _json(npz, _CONFIG, path)
        meta = _meta(npz, path)
        arrays = {k: _entry(npz, k, path) for k in npz.files if k.startswith((_PARAM, _BUFFER, _EXTRA))}
    params = {k[len(_PARAM):]: a for k, a in arrays.items() if k.startswith(_PARAM)}
    buffers = {k[len(_BUFFER):]: a for k, a in arrays.items() if k.startswith(_BUFFER)}
    extra = {k[len(_EXTRA):]: a for k, a in arrays.items() if k.startswith(_EXTRA)}
    return Checkpoint(path, config, meta, params, buffers, extra)


def read_meta(path):
    """The meta dict of the checkpoint at ``path`` (its arrays are not read)."""
    path = os.fspath(path)
    with _open(path) as npz:
        _check_format(npz, path)
        return _meta(npz, path)
