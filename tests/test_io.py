import os

import numpy as np
import pytest

from cnnframe import io


def _leftovers(directory):
    return [f for f in os.listdir(directory) if f.endswith(".tmp")]


def test_write_bytes_and_text_replace_content(tmp_path):
    p = tmp_path / "a.bin"
    io.atomic_write_bytes(p, b"first")
    io.atomic_write_bytes(p, bytearray(b"second"))
    assert p.read_bytes() == b"second"
    t = tmp_path / "a.txt"
    io.atomic_write_text(str(t), "héllo\nworld\n")
    assert t.read_text(encoding="utf-8") == "héllo\nworld\n"
    assert _leftovers(tmp_path) == []


def test_written_file_has_ordinary_permissions(tmp_path):
    p = tmp_path / "perm.txt"
    io.atomic_write_text(p, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_save_npz_roundtrip_exact_with_slash_names(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "param/0.weight": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
        "optim/step": np.array(7, dtype=np.int64),
        "text": np.array('{"a": 1}'),
        "flags": np.array([True, False]),
        "f64": rng.standard_normal(5),
        "file": np.arange(3),  # names np.savez would reject as keyword clashes
        "allow_pickle": np.arange(2),
    }
    p = tmp_path / "x.npz"
    io.atomic_save_npz(p, arrays)
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(arrays)
        for k, v in arrays.items():
            assert z[k].dtype == v.dtype and z[k].shape == v.shape
            assert z[k].tobytes() == v.tobytes()
    # no suffix is appended
    io.atomic_save_npz(tmp_path / "noext", {"a": np.ones(2)})
    assert (tmp_path / "noext").exists() and not (tmp_path / "noext.npz").exists()


def test_save_npz_compressed(tmp_path):
    p = tmp_path / "c.npz"
    io.atomic_save_npz(p, {"z": np.zeros(10000)}, compress=True)
    assert p.stat().st_size < 10000
    with np.load(p, allow_pickle=False) as z:
        assert (z["z"] == 0).all()


def test_object_array_rejected_and_previous_file_intact(tmp_path):
    p = tmp_path / "keep.npz"
    io.atomic_save_npz(p, {"a": np.arange(4)})
    before = p.read_bytes()
    with pytest.raises(TypeError, match="'bad'.*pickling"):
        io.atomic_save_npz(p, {"a": np.arange(5), "bad": np.array([{}, 1], dtype=object)})
    assert p.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_failure_while_writing_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "ckpt.npz"
    io.atomic_save_npz(p, {"a": np.arange(4)})
    before = p.read_bytes()
    real = np.lib.format.write_array
    seen = []

    def failing_write(fp, array, **kw):
        if len(seen) == 1:  # the second array: the temp file already holds the first one
            tmps = _leftovers(tmp_path)
            assert len(tmps) == 1 and tmps[0].startswith(".ckpt.npz.")
            raise OSError("disk full (simulated)")
        seen.append(1)
        return real(fp, array, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_save_npz(p, {"a": np.arange(10), "b": np.arange(3)})
    assert p.read_bytes() == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failure_at_replace_or_fsync_keeps_previous_file(tmp_path, monkeypatch, failing):
    p = tmp_path / "t.txt"
    io.atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError(f"{failing} failed (simulated)")

    monkeypatch.setattr(io.os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        io.atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_keyboard_interrupt_mid_write_cleans_up(tmp_path, monkeypatch):
    p = tmp_path / "k.bin"
    io.atomic_write_bytes(p, b"old")
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write_bytes(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_missing_directory_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.atomic_write_text(tmp_path / "nope" / "a.txt", "x")
    with pytest.raises(TypeError, match="str"):
        io.atomic_write_text(tmp_path / "a.txt", b"bytes")
    with pytest.raises(TypeError, match="dict"):
        io.atomic_save_npz(tmp_path / "a.npz", [np.ones(2)])
    with pytest.raises(TypeError, match="non-empty strings"):
        io.atomic_save_npz(tmp_path / "a.npz", {1: np.ones(2)})
    assert _leftovers(tmp_path) == []
