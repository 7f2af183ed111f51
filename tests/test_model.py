import json
import os

import numpy as np
import pytest

import cnnframe
from cnnframe.layers.base import Layer
from cnnframe.losses import SoftmaxCrossEntropy
from cnnframe.model import Sequential, load_checkpoint
from cnnframe.optim import SGD


@pytest.fixture(autouse=True)
def _one_thread():
    # These models are tiny: one thread avoids OpenMP start-up costs on a busy machine.
    with cnnframe.num_threads(1):
        yield


# -- small layers written here, so the model is tested apart from the real layers ---------------------
@cnnframe.register_layer("test_model_affine")
class Affine(Layer):
    """y = x Wᵀ + b on (N, F) inputs; W drawn from reset_parameters(rng)."""

    def __init__(self, out_features, dtype="float64"):
        super().__init__(dtype)
        self.out_features = out_features
        self._rng = np.random.default_rng()

    def build(self, input_shape):
        (f,) = input_shape
        self.add_parameter("weight", np.zeros((self.out_features, f)))
        self.add_parameter("bias", np.zeros(self.out_features), weight_decay=False)
        super().build(input_shape)
        self.reset_parameters(self._rng)

    def reset_parameters(self, rng):
        self._rng = rng
        if self.built:
            self._params["weight"].data[...] = rng.standard_normal(self._params["weight"].shape)
            self._params["bias"].data[...] = rng.standard_normal(self.out_features)

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Affine: expects (F,), got {tuple(input_shape)}")
        return (self.out_features,)

    def forward(self, x):
        self._x = x
        return x @ self._params["weight"].data.T + self._params["bias"].data

    def backward(self, g):
        self._params["weight"].grad += g.T @ self._x
        self._params["bias"].grad += g.sum(0)
        return g @ self._params["weight"].data

    def get_config(self):
        return {**super().get_config(), "out_features": self.out_features}


@cnnframe.register_layer("test_model_tanh_stats")
class TanhStats(Layer):
    """tanh with a buffer counting forward calls and a recorded seed (tests buffers and reseed)."""

    log = []

    def __init__(self, dtype="float64"):
        super().__init__(dtype)
        self.add_buffer("calls", np.zeros(1))
        self.seed = None

    def reseed(self, seed):
        self.seed = seed

    def forward(self, x):
        TanhStats.log.append(("forward", id(self)))
        self._buffers["calls"] += 1
        self._y = np.tanh(x)
        return self._y

    def backward(self, g):
        TanhStats.log.append(("backward", id(self)))
        return g * (1 - self._y**2)


def _tiny(input_shape=(4,)):
    return Sequential([Affine(5), TanhStats(), Affine(3)], input_shape=input_shape)


# -- structure -------------------------------------------------------------------------------------------
def test_build_names_shapes_and_forward_backward_order():
    m = _tiny()
    assert m.shapes == [(5,), (5,), (3,)] and m.output_shape((4,)) == (3,)
    assert list(m.parameters()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(m.buffers()) == ["1.calls"]
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.calls", "2.weight", "2.bias"]
    assert m.num_parameters() == 5 * 4 + 5 + 3 * 5 + 3
    assert len(m) == 3 and m[1] is m.layers[1] and list(m) == m.layers
    m2 = Sequential([TanhStats(), Affine(2), TanhStats()], input_shape=(2,))
    TanhStats.log.clear()
    y = m2(np.ones((3, 2)))
    m2.backward(np.ones_like(y))
    ids = [id(m2[0]), id(m2[2])]
    assert TanhStats.log == [("forward", ids[0]), ("forward", ids[1]), ("backward", ids[1]), ("backward", ids[0])]


def test_backward_chain_is_the_product_of_jacobians():
    m = _tiny()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4))
    g = rng.standard_normal((6, 3))
    m.zero_grad()
    y = m.forward(x)
    dx = m.backward(g)
    # d(sum(y * g))/dx by central differences: checks order and chaining of every layer
    h = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        num[idx] = ((m.forward(xp) - m.forward(xm)) * g).sum() / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-9)
    w = m.parameters()["0.weight"]
    hidden = np.tanh(x @ w.data.T + m[0].parameters()["bias"].data)
    expected = ((g @ m[2].parameters()["weight"].data) * (1 - hidden**2)).T @ x
    np.testing.assert_allclose(w.grad, expected, rtol=1e-12)
    assert y.shape == (6, 3)


def test_shape_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 2 \(Affine\) with input shape \(5, 2\): Affine: expects \(F,\)") as e:
        Sequential([TanhStats(), TanhStats(), Affine(3)], input_shape=(5, 2))
    assert e.value.layer_index == 2
    m = _tiny()
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4\), got \(2, 5\)"):
        m.forward(np.zeros((2, 5)))
    with pytest.raises(TypeError, match="numpy array"):
        m.forward([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(TypeError, match=r"layers\[1\] is not a layer"):
        Sequential([Affine(2), "relu"])


def test_builds_from_first_batch():
    m = Sequential([Affine(2)])
    assert not m.built and m.parameters() == {}
    assert m.forward(np.ones((3, 7))).shape == (3, 2)
    assert m.input_shape == (7,) and m.shapes == [(2,)]


def test_initialize_is_deterministic_and_distinct_per_layer():
    a, b = _tiny(), _tiny()
    a.initialize(3)
    b.initialize(3)
    for (k, p), q in zip(a.parameters().items(), b.parameters().values()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)
    b.initialize(4)
    assert not np.array_equal(a.parameters()["0.weight"].data, b.parameters()["0.weight"].data)
    # the two Affine layers do not get the same stream
    assert not np.array_equal(a.parameters()["0.bias"].data[:3], a.parameters()["2.bias"].data)
    # initialize before build: the layer keeps the generator and draws when built
    c = Sequential([Affine(5), TanhStats(), Affine(3)]).initialize(3).build((4,))
    np.testing.assert_array_equal(c.parameters()["2.weight"].data, a.parameters()["2.weight"].data)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        a.initialize(-1)


def test_reseed_gives_each_layer_its_own_seed():
    m = Sequential([TanhStats(), TanhStats(), TanhStats()], input_shape=(2,))
    m.reseed(7)
    seeds = [layer.seed for layer in m]
    assert len(set(seeds)) == 3 and all(isinstance(s, int) and s >= 0 for s in seeds)
    m.reseed(7)
    assert [layer.seed for layer in m] == seeds
    m.reseed(8)
    assert [layer.seed for layer in m] != seeds


def test_train_eval_zero_grad():
    m = _tiny()
    assert m.eval() is m and not any(layer.training for layer in m) and not m.training
    m.train()
    assert all(layer.training for layer in m)
    m.forward(np.ones((2, 4)))
    m.backward(np.ones((2, 3)))
    assert any((p.grad != 0).any() for p in m.parameters().values())
    m.zero_grad()
    assert all((p.grad == 0).all() for p in m.parameters().values())


def test_load_state_dict_errors():
    m = _tiny()
    st = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(KeyError, match=r"missing \['2.bias'\]"):
        m.load_state_dict({k: v for k, v in st.items() if k != "2.bias"})
    with pytest.raises(KeyError, match=r"unexpected \['9.weight'\]"):
        m.load_state_dict({**st, "9.weight": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'0.weight' \(layer 0, Affine\) has shape \(4, 5\), expected \(5, 4\)"):
        m.load_state_dict({**st, "0.weight": np.zeros((4, 5))})
    other = _tiny()
    other.initialize(1)
    m.load_state_dict(other.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, other.state_dict()[k])


def test_summary_table():
    m = _tiny()
    s = m.summary()
    lines = s.splitlines()
    assert lines[0].split() == ["#", "Layer", "Output", "shape", "Params"]
    assert lines[2].split() == ["input", "(4,)"]
    assert lines[3].split() == ["0", "Affine", "(5,)", "25"]
    assert lines[4].split() == ["1", "TanhStats", "(5,)", "0"]
    assert lines[5].split() == ["2", "Affine", "(3,)", "18"]
    assert "Total parameters: 43 (35 with weight decay)" in s
    assert "Buffers: 1 values" in s
    assert "not built" in Sequential([Affine(2)]).summary()


def test_config_roundtrip_through_registry():
    m = _tiny()
    cfg = m.get_config()
    assert cfg["input_shape"] == [4]
    assert [lc["type"] for lc in cfg["layers"]] == ["test_model_affine", "test_model_tanh_stats", "test_model_affine"]
    again = Sequential.from_config(json.loads(json.dumps(cfg)))
    assert again.get_config() == cfg and again.shapes == m.shapes
    with pytest.raises(KeyError, match=r"layers\[1\]: unknown layer 'relux'; did you mean 'relu'"):
        Sequential.from_config(
            {"input_shape": [4], "layers": [{"type": "dense", "out_features": 3}, {"type": "relux"}]}
        )
    with pytest.raises(ValueError, match=r"layers\[0\]: each layer config must be a dict with a 'type' key"):
        Sequential.from_config({"layers": [{"out_features": 3}]})
    with pytest.raises(TypeError, match=r"layers\[0\]"):
        Sequential.from_config({"layers": [{"type": "dense", "bogus": 1, "out_features": 2}]})
    with pytest.raises(ValueError, match="unknown keys"):
        Sequential.from_config({"layers": [], "extra": 1})


# -- checkpoints -----------------------------------------------------------------------------------------
def _real_model(dtype="float32"):
    from cnnframe.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

    return Sequential(
        [
            Conv2D(4, 3, padding=1, dtype=dtype),
            BatchNorm2D(dtype=dtype),
            ReLU(dtype=dtype),
            MaxPool2D(2, dtype=dtype),
            Flatten(dtype=dtype),
            Dropout(0.25, dtype=dtype),
            Dense(5, dtype=dtype),
        ],
        input_shape=(2, 6, 6),
        seed=0,
    )


def _train_a_little(m, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    opt = SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loss = SoftmaxCrossEntropy()
    for _ in range(steps):
        x = rng.standard_normal((8,) + m.input_shape).astype(m[0].dtype)
        y = rng.integers(0, 5, 8)
        m.zero_grad()
        loss.forward(m.forward(x), y)
        m.backward(loss.backward(), input_grad=False)
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_real_layers_save_load_roundtrip_is_bitwise(tmp_path, dtype):
    m = _real_model(dtype)
    opt = _train_a_little(m)
    assert (m.buffers()["1.running_mean"] != 0).any()  # running statistics have moved
    path = tmp_path / "ckpt.npz"
    meta = {"epoch": 3, "best": {"val_acc": 0.97}, "name": "é-run"}
    extra = {f"optim/{k}": v for k, v in opt.state_dict().items()}
    m.save(path, arrays=extra, meta=meta)
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
    assert {"__format__", "__config__", "__meta__", "param/0.weight", "param/6.bias",
            "buffer/1.running_mean", "buffer/1.running_var", "extra/optim/step"} <= keys

    m2, arrays, meta2 = load_checkpoint(path)
    assert meta2 == meta
    assert m2.get_config() == m.get_config()
    for k, v in m.state_dict().items():
        w = m2.state_dict()[k]
        assert w.dtype == v.dtype and w.tobytes() == v.tobytes(), k
    for k, v in extra.items():
        assert arrays[k].dtype == v.dtype and arrays[k].tobytes() == v.tobytes()
    x = np.random.default_rng(5).standard_normal((4, 2, 6, 6)).astype(dtype)
    np.testing.assert_array_equal(m.eval().forward(x), m2.eval().forward(x))
    # the optimizer state restores through the checkpoint arrays
    opt2 = SGD(m2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt2.load_state_dict({k[len("optim/"):]: v for k, v in arrays.items()})
    assert opt2.step_count == 3
    assert isinstance(cnnframe.load(path), Sequential)
    assert isinstance(Sequential.load(path), Sequential)


def test_resume_through_checkpoint_equals_uninterrupted(tmp_path):
    straight = _real_model()
    opt = _train_a_little(straight, steps=2, seed=0)
    _continue(straight, opt, seed=1)

    part = _real_model()
    opt1 = _train_a_little(part, steps=2, seed=0)
    part.save(tmp_path / "c.npz", arrays=opt1.state_dict())
    resumed, arrays, _ = load_checkpoint(tmp_path / "c.npz")
    opt2 = SGD(resumed.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt2.load_state_dict(arrays)
    _continue(resumed, opt2, seed=1)
    for k, v in straight.state_dict().items():
        assert v.tobytes() == resumed.state_dict()[k].tobytes(), k


def _continue(m, opt, seed):
    m.reseed(0)  # the dropout stream restarts from a seed (a trainer does this at each epoch)
    rng = np.random.default_rng(seed)
    loss = SoftmaxCrossEntropy()
    for _ in range(2):
        x = rng.standard_normal((8,) + m.input_shape).astype(np.float32)
        y = rng.integers(0, 5, 8)
        m.zero_grad()
        loss.forward(m.forward(x), y)
        m.backward(loss.backward())
        opt.step()


def test_initialize_with_real_layers_is_reproducible():
    a, b = _real_model(), _real_model()
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v.data, b.parameters()[k].data, err_msg=k)


@pytest.mark.parametrize("make", ["_real_model", "_block_model"])
def test_backward_without_input_grad_skips_the_first_layers_input_gradient(make):
    m = globals()[make]("float64")  # a first Conv2D; a first Residual with convolutions opening both paths
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    y = m.reseed(0).forward(x)
    m.zero_grad()
    assert m.backward(np.ones_like(y), input_grad=False) is None
    grads = {k: p.grad.copy() for k, p in m.parameters().items()}
    firsts = [m[0]] + ([m[0].layers[0], m[0].shortcut[0]] if make == "_block_model" else [])
    assert all(layer.need_input_grad is True for layer in firsts)  # restored
    m.reseed(0).forward(x)  # the same dropout mask
    m.zero_grad()
    dx = m.backward(np.ones_like(y))
    assert dx.shape == x.shape
    for k, p in m.parameters().items():
        np.testing.assert_allclose(p.grad, grads[k], rtol=1e-12, err_msg=k)


def test_model_gradient_through_loss_float64():
    """Central differences of the whole chain (conv, batchnorm, pool, dense) through cross-entropy."""
    from cnnframe.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, Tanh

    m = Sequential(
        [Conv2D(3, 3, padding=1, dtype="float64"), BatchNorm2D(dtype="float64"), Tanh(dtype="float64"),
         MaxPool2D(2, dtype="float64"), Flatten(dtype="float64"), Dense(4, dtype="float64")],
        input_shape=(2, 4, 4), seed=1,
    )
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 4, 4))
    y = np.array([0, 3, 1])
    loss = SoftmaxCrossEntropy()

    def f():
        return loss.forward(m.forward(x), y)

    m.zero_grad()
    f()
    dx = m.backward(loss.backward())
    h = 1e-6
    checks = [("x", x, dx)] + [(k, p.data, p.grad.copy()) for k, p in m.parameters().items()]
    for name, arr, ana in checks:
        flat = arr.reshape(-1)
        for i in rng.choice(flat.size, size=min(flat.size, 12), replace=False):
            old = flat[i]
            flat[i] = old + h
            fp = f()
            flat[i] = old - h
            fm = f()
            flat[i] = old
            num = (fp - fm) / (2 * h)
            a = ana.reshape(-1)[i]
            assert abs(num - a) / max(1e-8, abs(num) + abs(a)) < 1e-5 or abs(num - a) < 1e-9, (name, i, num, a)


def test_save_requires_built_model_and_json_meta(tmp_path):
    with pytest.raises(RuntimeError, match="not built"):
        Sequential([Affine(2)]).save(tmp_path / "x.npz")
    m = _tiny()
    with pytest.raises(TypeError, match="meta is not JSON-serialisable"):
        m.save(tmp_path / "x.npz", meta={"f": object()})
    with pytest.raises(TypeError, match="meta must be a dict"):
        m.save(tmp_path / "x.npz", meta=[1])
    with pytest.raises(TypeError, match="'extra/bad'.*pickling"):
        m.save(tmp_path / "x.npz", arrays={"bad": np.array([None])})
    assert os.listdir(tmp_path) == []


def test_save_records_preprocessing_and_class_names_and_load_restores_them(tmp_path):
    from cnnframe.data import Preprocessing

    m = _tiny()
    assert m.preprocessing is None and m.class_names is None
    m.save(tmp_path / "bare.npz")
    bare = load_checkpoint(tmp_path / "bare.npz")[0]
    assert bare.preprocessing is None and bare.class_names is None  # nothing recorded: nothing made up
    pre = Preprocessing(0.5, 2.0)
    m.save(tmp_path / "given.npz", meta={"epoch": 4}, preprocessing=pre.to_dict(), class_names=["a", "b", "c"])
    loaded, _, meta = load_checkpoint(tmp_path / "given.npz")
    assert loaded.preprocessing == pre and loaded.class_names == ["a", "b", "c"] and meta["epoch"] == 4
    assert meta["data"]["preprocessing"] == pre.to_dict()
    # the attributes are what save stores by default, so a loaded model saved again keeps them
    loaded.save(tmp_path / "again.npz")
    again = load_checkpoint(tmp_path / "again.npz")[0]
    assert again.preprocessing == pre and again.class_names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="has 2 names for 3 classes"):
        m.save(tmp_path / "x.npz", class_names=["a", "b"])
    with pytest.raises(ValueError, match="scale must be a finite number"):
        m.save(tmp_path / "x.npz", preprocessing={"scale": float("inf")})
    assert sorted(os.listdir(tmp_path)) == ["again.npz", "bare.npz", "given.npz"]


def test_load_refuses_a_garbled_preprocessing_record(tmp_path):
    m = _tiny()
    m.save(tmp_path / "x.npz", meta={"data": {"preprocessing": {"offset": "zero"}}})
    with pytest.raises(cnnframe.CheckpointError, match="offset must be a finite number"):
        load_checkpoint(tmp_path / "x.npz")


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = _tiny()
    path = tmp_path / "last.npz"
    m.save(path, meta={"epoch": 1})
    before = path.read_bytes()
    m.initialize(9)

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(cnnframe.io.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        m.save(path, meta={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.npz"]
    assert load_checkpoint(path)[2] == {"epoch": 1}


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError):
        load_checkpoint(tmp_path)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip file at all")
    with pytest.raises(ValueError, match="not a cnnframe checkpoint"):
        load_checkpoint(junk)
    npy = tmp_path / "single.npy"
    np.save(npy, np.arange(3))
    with pytest.raises(ValueError, match="not a cnnframe checkpoint: it holds a single array"):
        load_checkpoint(npy)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.arange(3))
    with pytest.raises(ValueError, match="not a cnnframe checkpoint: it has no '__format__' entry"):
        load_checkpoint(plain)

    good = tmp_path / "good.npz"
    _tiny().save(good)
    with np.load(good, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a cnnframe checkpoint|unreadable"):
        load_checkpoint(truncated)

    def variant(name, **changes):
        p = tmp_path / name
        cnnframe.io.atomic_save_npz(p, {**entries, **changes})
        return p

    with pytest.raises(ValueError, match=r"'0.weight' \(layer 0, Affine\) has shape \(2, 2\), expected \(5, 4\)"):
        load_checkpoint(variant("shape.npz", **{"param/0.weight": np.zeros((2, 2))}))
    missing = {k: v for k, v in entries.items() if k != "param/2.bias"}
    p = tmp_path / "missing_param.npz"
    cnnframe.io.atomic_save_npz(p, missing)
    with pytest.raises(ValueError, match=r"missing \['2.bias'\]"):
        load_checkpoint(p)
    cfg = json.loads(str(entries["__config__"]))
    cfg["layers"][1]["type"] = "no_such_layer"
    with pytest.raises(ValueError, match=r"layers\[1\]: unknown layer 'no_such_layer'"):
        load_checkpoint(variant("type.npz", __config__=np.array(json.dumps(cfg))))
    with pytest.raises(ValueError, match="'__config__' is not valid JSON"):
        load_checkpoint(variant("json.npz", __config__=np.array("{oops")))
    with pytest.raises(ValueError, match="unsupported checkpoint format 'other/9'"):
        load_checkpoint(variant("fmt.npz", __format__=np.array("other/9")))


def test_input_grad_false_on_a_layer_that_computes_it_anyway():
    """need_input_grad is declared on every layer; one that ignores it still trains, and the caller gets None."""
    m = _tiny()
    y = m.forward(np.ones((2, 4)))
    assert m.backward(np.ones_like(y), input_grad=False) is None
    assert m[0].need_input_grad is True  # restored
    assert (m.parameters()["0.weight"].grad != 0).any()


def test_from_config_imports_nothing_it_is_not_given(tmp_path):
    cfg = {"input_shape": [4], "layers": [{"type": "os:system", "command": "touch PWNED"}]}
    refused = r"layers\[0\]: layer type 'os:system' comes from module 'os'"
    with pytest.raises(cnnframe.UntrustedTypeError, match=refused):
        Sequential.from_config(cfg)
    with pytest.raises(TypeError, match="not a subclass of cnnframe's Layer"):
        Sequential.from_config(cfg, plugins=["os"])
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


# -- models with blocks ----------------------------------------------------------------------------------
def _block_model(dtype="float32"):
    from cnnframe.layers import BatchNorm2D, Concat, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, ReLU, Residual

    return Sequential(
        [
            Residual([Conv2D(4, 3, padding=1, dtype=dtype), BatchNorm2D(dtype=dtype), ReLU(dtype=dtype),
                      Conv2D(4, 3, padding=1, dtype=dtype), BatchNorm2D(dtype=dtype)],
                     shortcut=[Conv2D(4, 1, dtype=dtype), BatchNorm2D(dtype=dtype)], activation="relu", dtype=dtype),
            Concat([[Conv2D(3, 1, dtype=dtype)], [],
                    [Residual([Conv2D(4, 3, padding=1, dtype=dtype), Dropout(0.2, dtype=dtype)], dtype=dtype)]],
                   dtype=dtype),
            Residual([Conv2D(6, 3, stride=2, padding=1, dtype=dtype), BatchNorm2D(dtype=dtype)],
                     shortcut=[Conv2D(6, 1, stride=2, dtype=dtype)], activation="relu", dtype=dtype),
            GlobalAvgPool2D(dtype=dtype),
            Flatten(dtype=dtype),
            Dense(5, dtype=dtype),
        ],
        input_shape=(2, 6, 6),
        seed=0,
    )


def test_block_model_names_parameters_by_path():
    m = _block_model()
    names = list(m.parameters())
    assert names[:4] == ["0.layers.0.weight", "0.layers.0.bias", "0.layers.1.weight", "0.layers.1.bias"]
    assert {"0.shortcut.1.bias", "1.branches.0.0.weight", "1.branches.2.0.layers.0.weight",
            "2.shortcut.0.weight", "5.weight"} <= set(names)
    assert list(m.buffers())[:2] == ["0.layers.1.running_mean", "0.layers.1.running_var"]
    assert "2.layers.1.running_var" in m.buffers()
    assert m.shapes == [(4, 6, 6), (11, 6, 6), (6, 3, 3), (6,), (6,), (5,)]


def test_block_model_save_load_roundtrip_is_bitwise(tmp_path):
    m = _block_model()
    opt = _train_a_little(m)
    assert (m.buffers()["0.shortcut.1.running_mean"] != 0).any()
    path = tmp_path / "blocks.npz"
    m.save(path, arrays={f"optim/{k}": v for k, v in opt.state_dict().items()})
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        config = json.loads(str(z["__config__"]))
    assert {"param/0.layers.0.weight", "param/1.branches.2.0.layers.0.bias", "buffer/2.layers.1.running_mean",
            "buffer/0.shortcut.1.running_var"} <= keys
    assert config["layers"][1]["branches"][1] == [] and config["layers"][0]["activation"] == "relu"
    m2, arrays, _ = load_checkpoint(path)
    assert m2.get_config() == m.get_config()
    for k, v in m.state_dict().items():
        w = m2.state_dict()[k]
        assert w.dtype == v.dtype and w.tobytes() == v.tobytes(), k
    x = np.random.default_rng(5).standard_normal((4, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(m.eval().forward(x), m2.eval().forward(x))
    # and training continues identically from the checkpoint
    m.train()
    m2.train()
    opt2 = SGD(m2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt2.load_state_dict({k[len("optim/"):]: v for k, v in arrays.items()})
    _continue(m, opt, seed=1)
    _continue(m2, opt2, seed=1)
    for k, v in m.state_dict().items():
        assert v.tobytes() == m2.state_dict()[k].tobytes(), k


def test_block_model_seeds_and_modes_reach_nested_children():
    a, b = _block_model(), _block_model()
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v.data, b.parameters()[k].data, err_msg=k)
    a.initialize(1)
    assert not np.array_equal(a.parameters()["1.branches.2.0.layers.0.weight"].data,
                              b.parameters()["1.branches.2.0.layers.0.weight"].data)
    a.eval()
    assert not a[1].branches[2][0].layers[1].training
    a.train()
    assert a[1].branches[2][0].layers[1].training
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    y1 = a.reseed(7).forward(x)
    np.testing.assert_array_equal(a.reseed(7).forward(x), y1)  # nested dropout follows the model's seed
    assert not np.array_equal(a.reseed(8).forward(x), y1)
    a.backward(np.ones_like(y1))
    a.zero_grad()
    assert all(not p.grad.any() for p in a.parameters().values())


def test_summary_shows_the_nesting():
    s = _block_model().summary()
    lines = s.splitlines()
    rows = [line.split() for line in lines]
    at = rows.index(["0", "Residual", "(4,", "6,", "6)", "260"])
    assert rows[at + 1] == ["layers.0:", "Conv2D", "(4,", "6,", "6)", "76"]
    assert rows[at + 7] == ["shortcut.1:", "BatchNorm2D", "(4,", "6,", "6)", "8"]
    assert rows[at + 8] == ["activation:", "ReLU", "(4,", "6,", "6)", "0"]
    assert lines[at + 1].index("layers.0") > lines[at].index("Residual")  # indented under its block
    cat = rows.index(["1", "Concat", "(11,", "6,", "6)", "163"])
    assert rows[cat + 1] == ["branches.0.0:", "Conv2D", "(3,", "6,", "6)", "15"]
    assert rows[cat + 2] == ["branches.1:", "identity", "(4,", "6,", "6)", "0"]
    assert rows[cat + 3] == ["branches.2.0:", "Residual", "(4,", "6,", "6)", "148"]
    assert rows[cat + 4] == ["layers.0:", "Conv2D", "(4,", "6,", "6)", "148"]
    assert lines[cat + 4].index("layers.0") > lines[cat + 3].index("branches.2.0")  # a level deeper
    assert rows[cat + 6] == ["shortcut:", "identity", "(4,", "6,", "6)", "0"]
    assert f"Total parameters: {_block_model().num_parameters():,}" in s
    assert rows[-4][:2] == ["5", "Dense"]


def test_the_same_layer_object_twice_is_refused():
    """A layer keeps what its backward needs from its last forward: used twice, its gradients are wrong and the
    optimizer steps it twice.  Equal but separate layers are fine."""
    conv, relu = cnnframe.Conv2D(2, 1), cnnframe.ReLU()
    with pytest.raises(ValueError, match=r"Sequential: layers\[2\] is the same layer object as layers\[1\]; each use "
                                         r"needs its own layer .* make another, e.g. ReLU"):
        Sequential([conv, relu, relu])
    with pytest.raises(ValueError, match=r"layers\[2\] is the same layer object as layers\[1\]\.shortcut\.0"):
        Sequential([conv, cnnframe.Residual([cnnframe.Conv2D(2, 1)], shortcut=[relu]), relu])
    with pytest.raises(ValueError, match=r"layers\[1\]\.layers\.0\.layers\.0 is the same layer object as layers\[0\]"):
        Sequential([conv, cnnframe.Residual([cnnframe.Residual([conv])])])
    Sequential([cnnframe.Conv2D(2, 1), cnnframe.ReLU(), cnnframe.ReLU()], input_shape=(1, 4, 4))
