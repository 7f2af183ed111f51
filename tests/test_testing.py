"""The contract battery: a correct user layer passes, and each kind of broken layer fails the check
meant to catch it, with the layer and the check named in the message."""
import numpy as np
import pytest

import cnnframe
from cnnframe.layers import Layer, ReLU
from cnnframe.testing import CHECKS, check_layer_contract


@pytest.fixture(autouse=True)
def one_thread():
    with cnnframe.num_threads(1):
        yield


@cnnframe.register_layer("_test_scale")
class Scale(Layer):
    """y = x · w + c per feature (last axis of a (N, F) input), w: (F,), a user layer with a parameter."""

    def __init__(self, features=None, c=0.0, dtype="float32"):
        super().__init__(dtype)
        self.features, self.c = features, float(c)
        if features is not None:
            self.build((features,))

    def build(self, input_shape):
        if not self.built:
            self.features = int(input_shape[-1])
            self.add_parameter("weight", np.linspace(0.5, 1.5, self.features))
        super().build(input_shape)

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        self._ensure_built(x)
        self._x = x
        return x * self.parameters()["weight"].data + self.dtype.type(self.c)

    def backward(self, g):
        w = self.parameters()["weight"]
        w.grad += (g * self._x).sum(axis=0)
        return g * w.data

    def get_config(self):
        return {**super().get_config(), "features": self.features, "c": self.c}


def test_correct_user_layer_passes():
    report = check_layer_contract(lambda d: Scale(c=0.5, dtype=d), (4,))
    assert report.passed and set(report.tensors) == {"input", "weight"}


class UnregisteredScale(Scale):
    """Not registered itself (it inherits Scale's name): saved, and reloaded, as ``module:UnregisteredScale``."""


def test_unregistered_module_level_layer_passes():
    """A layer used as ``type: module:Class`` passes the battery: its type name is module:QualName, not the
    registered name it inherits, and resolves back to it."""
    assert UnregisteredScale(dtype="float64").get_config()["type"] == f"{__name__}:UnregisteredScale"
    report = check_layer_contract(lambda d: UnregisteredScale(c=0.5, dtype=d), (4,))
    assert report.passed


# -- broken layers -----------------------------------------------------------------------------------
def _local_class():
    class Unregistered(ReLU):  # defined in a function: not registered, and module:QualName cannot find it
        registered_name = None

    return Unregistered


Unregistered = _local_class()


@cnnframe.register_layer("_test_lying_shape")
class LyingShape(ReLU):
    def output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (input_shape[-1] + 1,)


@cnnframe.register_layer("_test_wrong_grad")
class WrongGrad(ReLU):
    def backward(self, grad_out):
        return 0.9 * super().backward(grad_out)


@cnnframe.register_layer("_test_float32_drift")
class Float32Drift(ReLU):
    def forward(self, x):
        y = super().forward(x)
        return y * self.dtype.type(1.001) if self.dtype == np.float32 else y


@cnnframe.register_layer("_test_batch_dependent")
class BatchDependent(Scale):
    def forward(self, x):
        return super().forward(x - x.mean(axis=0))

    def backward(self, g):
        dx = super().backward(g)
        return dx - dx.mean(axis=0)


@cnnframe.register_layer("_test_assumes_contiguous")
class AssumesContiguous(ReLU):
    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)  # keeps strides; then reads memory as if C-contiguous
        strides = np.empty(x.shape, dtype=x.dtype).strides
        return super().forward(np.lib.stride_tricks.as_strided(x, x.shape, strides))


@cnnframe.register_layer("_test_forgets_c")
class ForgetsC(Scale):
    def get_config(self):
        cfg = super().get_config()
        del cfg["c"]
        return cfg


@cnnframe.register_layer("_test_forgets_times")
class ForgetsTimes(Layer):
    """y = x repeated ``times`` along the last axis; get_config loses ``times``."""

    def __init__(self, times=1, dtype="float32"):
        super().__init__(dtype)
        self.times = times

    def output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] * self.times,)

    def forward(self, x):
        self._n = x.shape[-1]
        return np.tile(np.asarray(x, dtype=self.dtype), self.times)

    def backward(self, g):
        return sum(g[..., i * self._n : (i + 1) * self._n] for i in range(self.times))


@cnnframe.register_layer("_test_in_place")
class InPlace(ReLU):
    def forward(self, x):
        self._cache = np.maximum(x, 0, out=x)
        return self._cache


@cnnframe.register_layer("_test_overwrites_grad")
class OverwritesGrad(Scale):
    def backward(self, g):
        w = self.parameters()["weight"]
        w.grad[...] = (g * self._x).sum(axis=0)
        return g * w.data


def _only(check):
    return tuple(c for c in CHECKS if c != check)


@pytest.mark.parametrize(
    "factory, check",
    [
        (lambda d: Unregistered(dtype=d), "registered"),
        (lambda d: LyingShape(dtype=d), "output_shape"),
        (lambda d: WrongGrad(dtype=d), "gradcheck"),
        (lambda d: Float32Drift(dtype=d), "dtypes"),
        (lambda d: BatchDependent(dtype=d), "batch1"),
        (lambda d: AssumesContiguous(dtype=d), "noncontiguous"),
        (lambda d: ForgetsTimes(times=2, dtype=d), "config"),
        (lambda d: ForgetsC(c=2.0, dtype=d), "state"),
        (lambda d: InPlace(dtype=d), "input_unchanged"),
        (lambda d: OverwritesGrad(dtype=d), "accumulate"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_check_catches_its_bug(factory, check):
    name = type(factory("float64")).__name__
    with pytest.raises(AssertionError) as info:
        check_layer_contract(factory, (4,), skip=_only(check))
    assert str(info.value).startswith(f"{name} [{check}]:"), str(info.value)
    with pytest.raises(AssertionError, match=name):  # and the full battery fails too
        check_layer_contract(factory, (4,))


def test_messages_are_specific():
    with pytest.raises(AssertionError, match=r"declares \(4, 6\) per sample but forward on \(3, 4, 5\) returned \(3, 4, 5\)"):
        check_layer_contract(lambda d: LyingShape(dtype=d), (4, 5), skip=_only("output_shape"))
    with pytest.raises(AssertionError, match="(?s)gradcheck FAILED for WrongGrad.*input"):
        check_layer_contract(lambda d: WrongGrad(dtype=d), (4,), skip=_only("gradcheck"))
    with pytest.raises(AssertionError, match="not registered"):
        check_layer_contract(lambda d: Unregistered(dtype=d), (4,), skip=_only("registered"))


def test_factory_and_argument_errors():
    with pytest.raises(AssertionError, match="dtype float32"):
        check_layer_contract(lambda d: ReLU(), (4,))  # ignores the requested dtype
    with pytest.raises(AssertionError, match="not a cnnframe Layer"):
        check_layer_contract(lambda d: object(), (4,))
    with pytest.raises(ValueError, match="unknown check"):
        check_layer_contract(lambda d: ReLU(dtype=d), (4,), skip=("gradchek",))


def test_gradcheck_options_are_passed_on():
    report = check_layer_contract(lambda d: Scale(dtype=d), (50,), gradcheck_kwargs={"max_checks": 7})
    assert report.tensors["input"].checked == 7
    assert check_layer_contract(lambda d: Scale(dtype=d), (4,), skip=("gradcheck",)) is None


class ChannelAffine(Layer):
    """docs/extending.md's layer: y = γ[c]·x + β[c]; γ starts at 1 and β at 0 on every channel."""

    def __init__(self, num_features=None, dtype="float32"):
        super().__init__(dtype)
        self.num_features = num_features

    def build(self, input_shape):
        if not self.built:
            self.num_features = int(input_shape[0])
            self.add_parameter("weight", np.ones(self.num_features), weight_decay=False)
            self.add_parameter("bias", np.zeros(self.num_features), weight_decay=False)
        super().build(input_shape)

    def _per_channel(self, v, ndim):
        return v.reshape((-1,) + (1,) * (ndim - 2))

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        self._ensure_built(x)
        self._x = x
        w, b = self._params["weight"].data, self._params["bias"].data
        return self._per_channel(w, x.ndim) * x + self._per_channel(b, x.ndim)

    def backward(self, grad_out):
        x = self._x
        axes = (0,) + tuple(range(2, x.ndim))
        self._params["weight"].grad += (grad_out * x).sum(axis=axes)
        self._params["bias"].grad += grad_out.sum(axis=axes)
        return self._per_channel(self._params["weight"].data, x.ndim) * grad_out

    def get_config(self):
        return {**super().get_config(), "num_features": self.num_features}


class GammaDropped(ChannelAffine):
    """dL/dx = G instead of γ·G: right while γ is 1, as it is when the layer is made."""

    def backward(self, grad_out):
        super().backward(grad_out)
        return grad_out


def test_a_gradient_right_only_at_the_initial_parameters_fails():
    assert check_layer_contract(lambda d: ChannelAffine(dtype=d), (3, 4, 4)).passed
    with pytest.raises(AssertionError, match=r"(?s)GammaDropped \[gradcheck\]: at randomised parameter values.*input"):
        check_layer_contract(lambda d: GammaDropped(dtype=d), (3, 4, 4))
