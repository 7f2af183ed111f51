"""Every built-in layer through the standard battery (cnnframe.testing.check_layer_contract):
output shape, float64 gradient check, float32/float64 agreement, batch of one, strided input,
config and state round trips, input left unchanged, gradient accumulation."""
import pytest

import cnnframe
from cnnframe import layers as L
from cnnframe.testing import check_layer_contract


# (id, factory(dtype), per-sample input shape)
CASES = [
    ("conv_3x3_pad1", lambda d: L.Conv2D(4, 3, padding=1, seed=0, dtype=d), (3, 6, 6)),
    ("conv_stride2_odd", lambda d: L.Conv2D(3, 3, stride=2, seed=1, dtype=d), (2, 7, 9)),
    ("conv_dilation2_pad2", lambda d: L.Conv2D(2, 3, padding=2, dilation=2, seed=2, dtype=d), (2, 6, 5)),
    (
        "conv_nonsquare_mixed",
        lambda d: L.Conv2D(3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), seed=3, dtype=d),
        (2, 7, 8),
    ),
    ("conv_1x1_nobias", lambda d: L.Conv2D(5, 1, bias=False, seed=4, dtype=d), (3, 4, 3)),
    ("conv_given_in_channels", lambda d: L.Conv2D(2, (2, 3), in_channels=2, seed=5, dtype=d), (2, 5, 6)),
    ("maxpool_2", lambda d: L.MaxPool2D(2, dtype=d), (2, 6, 6)),
    ("maxpool_overlap_3s2p1", lambda d: L.MaxPool2D(3, stride=2, padding=1, dtype=d), (2, 7, 7)),
    ("maxpool_nonsquare", lambda d: L.MaxPool2D((2, 3), stride=(1, 2), dtype=d), (2, 5, 7)),
    ("avgpool_2", lambda d: L.AvgPool2D(2, dtype=d), (2, 6, 5)),
    ("avgpool_overlap_3s1p1", lambda d: L.AvgPool2D(3, stride=1, padding=1, dtype=d), (2, 5, 5)),
    ("globalavgpool", lambda d: L.GlobalAvgPool2D(dtype=d), (3, 4, 5)),
    ("flatten", lambda d: L.Flatten(dtype=d), (3, 4, 5)),
    ("dense", lambda d: L.Dense(4, seed=0, dtype=d), (7,)),
    ("dense_nobias_given_in", lambda d: L.Dense(3, in_features=5, bias=False, seed=1, dtype=d), (5,)),
    ("relu", lambda d: L.ReLU(dtype=d), (3, 4, 4)),
    ("leakyrelu", lambda d: L.LeakyReLU(negative_slope=0.2, dtype=d), (3, 4, 4)),
    ("sigmoid", lambda d: L.Sigmoid(dtype=d), (6,)),
    ("tanh", lambda d: L.Tanh(dtype=d), (2, 3, 3)),
    ("softmax_2d", lambda d: L.Softmax(dtype=d), (6,)),
    ("softmax_4d", lambda d: L.Softmax(dtype=d), (4, 2, 3)),
    ("dropout", lambda d: L.Dropout(0.4, seed=7, dtype=d), (4, 3, 3)),
    ("batchnorm2d", lambda d: L.BatchNorm2D(dtype=d), (3, 4, 4)),
    ("batchnorm2d_given", lambda d: L.BatchNorm2D(2, eps=1e-3, momentum=0.3, dtype=d), (2, 3, 5)),
    ("batchnorm1d", lambda d: L.BatchNorm1D(dtype=d), (5,)),
    # blocks (more cases, nested ones included, in test_blocks.py)
    ("residual", lambda d: L.Residual([L.Conv2D(3, 3, padding=1, seed=0, dtype=d), L.BatchNorm2D(dtype=d)],
                                      activation="relu", dtype=d), (3, 4, 4)),
    ("concat", lambda d: L.Concat([[L.Conv2D(2, 1, seed=1, dtype=d)], [L.MaxPool2D(3, 1, 1, dtype=d)]], dtype=d),
     (3, 4, 4)),
]


@pytest.mark.parametrize("factory, input_shape", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_builtin_layer_passes_contract(factory, input_shape, one_thread):
    report = check_layer_contract(factory, input_shape)
    assert report.passed


def test_every_registered_builtin_is_covered():
    covered = {type(factory("float64")).registered_name for _, factory, _ in CASES}
    builtin = {
        name
        for name in cnnframe.LAYERS.names()
        if cnnframe.LAYERS.get(name).__module__.startswith("cnnframe.layers.")
    }
    assert builtin <= covered, f"layers without a contract test: {sorted(builtin - covered)}"
    assert {
        "conv2d", "maxpool2d", "avgpool2d", "globalavgpool2d", "flatten", "dense", "relu", "leakyrelu",
        "sigmoid", "tanh", "softmax", "dropout", "batchnorm2d", "batchnorm1d", "residual", "concat",
    } <= covered


def test_exported_names():
    for name in ("Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Flatten", "Dense", "ReLU", "LeakyReLU",
                 "Sigmoid", "Tanh", "Softmax", "Dropout", "BatchNorm2D", "BatchNorm1D", "Residual", "Concat"):
        assert getattr(cnnframe, name) is getattr(L, name)
