"""Dense products against the loop reference: both dtypes, odd shapes, spans of rows, gradients added
in place, thread counts, read-only inputs and bad arguments."""
import numpy as np
import pytest

import cnnframe
from cnnframe import ops
from cnnframe.ops import _reference as ref


def case(n, i, o, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, i)).astype(dtype), rng.standard_normal((o, i)).astype(dtype),
            rng.standard_normal(o).astype(dtype), rng.standard_normal((n, o)).astype(dtype))


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, i, o", [(1, 1, 1), (3, 5, 2), (7, 1, 13), (130, 9, 3), (2, 4, 131)])
def test_matches_reference(n, i, o, dtype):
    x, w, b, g = case(n, i, o, dtype, n + i + o)
    np.testing.assert_allclose(ops.dense_forward(x, w, b), ref.dense_ref(x, w, b), **tol(dtype))
    np.testing.assert_allclose(ops.dense_forward(x, w), ref.dense_ref(x, w), **tol(dtype))
    dx_ref, dw_ref, db_ref = ref.dense_backward_ref(x, w, g)
    dw, db = np.full(w.shape, 0.5, dtype), np.full(o, -1.0, dtype)
    dx = ops.dense_backward(x, w, g, dw, db)
    np.testing.assert_allclose(dx, dx_ref, **tol(dtype))
    np.testing.assert_allclose(dw, dw_ref + 0.5, **tol(dtype))  # added into the given arrays
    np.testing.assert_allclose(db, db_ref - 1.0, **tol(dtype))
    dw2 = np.zeros_like(w)
    assert ops.dense_backward(x, w, g, dw2, None, need_input_grad=False) is None
    np.testing.assert_allclose(dw2, dw_ref, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_the_thread_count(dtype):
    x, w, b, g = case(300, 17, 260, dtype)  # several spans of rows and of output features
    outs = []
    for threads in (1, 2, 3):
        with cnnframe.num_threads(threads):
            dw, db = np.zeros_like(w), np.zeros_like(b)
            outs.append((ops.dense_forward(x, w, b), ops.dense_backward(x, w, g, dw, db), dw, db))
    for other in outs[1:]:
        assert all(np.array_equal(a, c) for a, c in zip(outs[0], other))


def test_read_only_inputs(tmp_path):
    x, w, b, g = case(4, 3, 2, np.float64)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for a in (w, b, g):
        a.flags.writeable = False
    np.testing.assert_allclose(ops.dense_forward(xm, w, b), ref.dense_ref(x, w, b), rtol=1e-12)
    dw = np.zeros(w.shape)
    ops.dense_backward(xm, w, g, dw)
    np.testing.assert_allclose(dw, ref.dense_backward_ref(x, w, g)[1], rtol=1e-12)


def test_nan_propagates_to_its_row():
    x, w, b, g = case(3, 4, 2, np.float32)
    x[1, 2] = np.nan
    y = ops.dense_forward(x, w, b)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("call, exc, word", [
    (lambda x, w, g: ops.dense_forward(x[0], w), ValueError, "2 dimensions"),
    (lambda x, w, g: ops.dense_forward(x[:, :2], w), ValueError, "input has 2 features"),
    (lambda x, w, g: ops.dense_forward(x, w, np.zeros(3)), ValueError, "bias must have shape"),
    (lambda x, w, g: ops.dense_forward(x, w.astype(np.float32)), TypeError, "dtype"),
    (lambda x, w, g: ops.dense_backward(x, w, g[:1], np.zeros(w.shape)), ValueError, "grad_out"),
    (lambda x, w, g: ops.dense_backward(x, w, g, np.zeros((2, 2))), ValueError, "weight_grad"),
    (lambda x, w, g: ops.dense_backward(x, w, g, np.zeros(w.shape[::-1]).T), ValueError, "C-contiguous"),
    (lambda x, w, g: ops.dense_backward(x, w, g, np.zeros(w.shape), np.zeros(3)), ValueError, "bias_grad"),
])
def test_bad_arguments(call, exc, word):
    x, w, _, g = case(4, 3, 2, np.float64)
    with pytest.raises(exc, match=word):
        call(x, w, g)
