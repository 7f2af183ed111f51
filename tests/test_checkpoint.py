"""The checkpoint file: what is read and written, and files that are not checkpoints (one clear message,
never NumPy's advice to unpickle)."""
import numpy as np
import pytest

import cnnframe
from cnnframe import checkpoint
from cnnframe.cli import main
from cnnframe.errors import CheckpointError
from cnnframe.io import atomic_save_npz
from cnnframe.layers import Dense, Flatten
from cnnframe.model import Sequential


def _model():
    return Sequential([Flatten(), Dense(3)], input_shape=(1, 2, 2), seed=0)


def _not_checkpoints(tmp_path):
    """name → path of files that are not checkpoints."""
    files = {"empty": tmp_path / "empty.npz", "npy": tmp_path / "single.npy", "random": tmp_path / "random.npz",
             "pickle": tmp_path / "pickle.npz"}
    files["empty"].write_bytes(b"")
    np.save(files["npy"], np.arange(3))
    files["random"].write_bytes(np.random.default_rng(0).bytes(256))
    pickled = np.array([{"a": 1}], dtype=object)  # np.savez pickles it; a checkpoint never holds one
    np.savez(files["pickle"], __format__=np.array(checkpoint.FORMAT), __config__=pickled, __meta__=pickled)
    return files


def test_write_read_round_trip(tmp_path):
    m = _model()
    path = tmp_path / "m.npz"
    m.save(path, arrays={"optim/step": np.array(3)}, meta={"epoch": 2})
    saved = checkpoint.read(path)
    assert saved.config == m.get_config() and saved.meta == {"epoch": 2}
    assert set(saved.params) == {"1.weight", "1.bias"} and saved.buffers == {}
    assert int(saved.arrays["optim/step"]) == 3
    for k, v in m.state_dict().items():
        assert saved.state[k].tobytes() == v.tobytes()
    assert checkpoint.read_meta(path) == {"epoch": 2}
    assert saved.build_budget >= 2 * sum(v.nbytes for v in m.state_dict().values())


def test_load_into_names_the_mismatch(tmp_path):
    _model().save(tmp_path / "m.npz")
    saved = checkpoint.read(tmp_path / "m.npz")
    other = Sequential([Flatten(), Dense(5)], input_shape=(1, 2, 2))
    with pytest.raises(CheckpointError, match=r"does not fit the configured model: .*'1.weight'.*\(5, 4\)"):
        saved.load_into(other)


@pytest.mark.parametrize("kind, reason", [
    ("empty", "the file is empty"),
    ("npy", "it holds a single array (.npy)"),
    ("random", "it is not an .npz archive"),
    ("pickle", "holds Python objects (pickled data)"),
])
def test_files_that_are_not_checkpoints(tmp_path, kind, reason):
    path = _not_checkpoints(tmp_path)[kind]
    for read in (checkpoint.read, checkpoint.read_meta, cnnframe.load):
        with pytest.raises(CheckpointError) as info:
            read(path)
        message = str(info.value)
        assert reason in message, message
        assert "allow_pickle" not in message and "pickle.load" not in message  # never advice to unpickle


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_cli_says_the_file_is_not_a_checkpoint(tmp_path, capsys, command):
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8)))
    for kind, path in _not_checkpoints(tmp_path).items():
        extra = ["--input", str(tmp_path / "x.npy")] if command == "predict" else []
        code = main([command, str(path), *extra])
        err = capsys.readouterr().err
        assert code == 2, (kind, err)
        assert err.startswith("cnnframe: error: ") and err.count("\n") == 1, err  # one line, no traceback
        assert "is not a cnnframe checkpoint" in err and "allow_pickle" not in err, err


def test_meta_must_be_an_object(tmp_path):
    path = tmp_path / "bad.npz"
    atomic_save_npz(path, {"__format__": np.array(checkpoint.FORMAT), "__config__": np.array("{}"),
                           "__meta__": np.array("[1, 2]")})
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        checkpoint.read_meta(path)


def test_stored_json_nesting_is_bounded(tmp_path):
    path = tmp_path / "deep.npz"
    for depth, reason in ((150, "nests deeper than 100 levels"), (100_000, "is not valid JSON")):
        atomic_save_npz(path, {"__format__": np.array(checkpoint.FORMAT), "__config__": np.array("{}"),
                               "__meta__": np.array('{"a": ' + "[" * depth + "]" * depth + "}")})
        with pytest.raises(CheckpointError, match=reason):
            checkpoint.read(path)
