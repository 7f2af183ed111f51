"""Splitting a global batch over processes and chunks: the plan, the fixed-order sums, and the layers that
compute chunk by chunk (Conv2D, Dense), synchronise statistics (BatchNorm) or draw per sample (Dropout).

"Processes" here are threads of this test sharing a reducer, which is all a layer sees of MPI; the real
thing runs in tests/test_distributed.py.  "Equal" means bit-identical (np.array_equal) throughout."""
import threading

import numpy as np
import pytest

from cnnframe import shards
from cnnframe.layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, MaxPool2D, ReLU
from cnnframe.layers.fusion import fusion_plan
from cnnframe.model import Sequential
from cnnframe.shards import ChunkError, check_chunks, plan_shard, tree_sum, use_shard


# -- the plan ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [8, 10, 13, 64, 65])
@pytest.mark.parametrize("chunks,size", [(2, 1), (2, 2), (4, 2), (4, 4), (6, 3), (8, 4)])
def test_plan_covers_the_batch_in_fixed_chunks(total, chunks, size):
    edges = [total * j // chunks for j in range(chunks + 1)]  # chunk j = [⌊n·j/C⌋, ⌊n·(j+1)/C⌋)
    got = []
    for rank in range(size):
        s = plan_shard(total, chunks, rank, size)
        assert s.total == total and len(s.bounds) == chunks // size
        got += [(s.start + a, s.start + b) for a, b in s.bounds]
        assert s.bounds[0][0] == 0 and s.bounds[-1][1] == s.size
    assert got == list(zip(edges[:-1], edges[1:]))


def test_plan_is_none_for_one_process_and_one_chunk():
    assert plan_shard(64, 1, 0, 1) is None


@pytest.mark.parametrize("total,chunks,size", [(64, 3, 2), (3, 4, 1), (64, 0, 1)])
def test_plan_rejects_chunks_that_do_not_fit(total, chunks, size):
    with pytest.raises(ValueError, match="chunks"):
        plan_shard(total, chunks, 0, size)


def test_check_chunks_defaults_to_the_processes_and_names_the_problem():
    assert check_chunks(None, 4) == 4
    assert check_chunks(8, 4, samples=1293, batch_size=64) == 8
    with pytest.raises(ChunkError, match="multiple of the number of processes"):
        check_chunks(3, 2)
    # 10 samples in batches of 4 → 3 batches of 3 or 4: 4 chunks do not fit the smallest
    with pytest.raises(ChunkError, match="smallest batch has 3"):
        check_chunks(4, 2, samples=10, batch_size=4)


def test_chunks_outside_and_inside_a_shard():
    assert shards.chunks(7) == ((0, 7),) and shards.chunk_sizes(7) == [7]
    rows = np.arange(4.0).reshape(2, 2)
    assert shards.gather_chunks(rows) is rows
    with use_shard(plan_shard(10, 4, 1, 2, gather=lambda a: np.stack([a + 10, a]))):
        assert shards.chunks(5) == ((0, 2), (2, 5))
        assert shards.batch_total(5) == 10 and shards.global_rows(5) == (10, 5, 10)
        assert shards.chunk_sizes(5) == [2, 3, 2, 3]
        assert np.array_equal(shards.gather_chunks(rows), [[10, 11], [12, 13], [0, 1], [2, 3]])
        with pytest.raises(ValueError, match="got a batch of 4 samples"):
            shards.chunks(4)
    assert shards.current_shard() is None


# -- the order of additions ---------------------------------------------------------------------------------------
def test_tree_sum_of_process_sums_is_the_tree_sum_of_all_chunks():
    """A process's tree sum over its chunks is a node of the tree over all chunks when the number of
    processes is a power of two dividing the chunks: adding the processes' sums by the same tree gives
    the one-process result bit for bit."""
    rng = np.random.default_rng(0)
    parts = [(rng.standard_normal(1000) * 10.0 ** rng.integers(-4, 5, 1000)).astype(np.float32) for _ in range(8)]
    whole = tree_sum(parts)
    for p in (1, 2, 4, 8):
        k = 8 // p
        assert np.array_equal(tree_sum([tree_sum(parts[r * k:(r + 1) * k]) for r in range(p)]), whole), p
    in_sequence = parts[0].copy()
    for a in parts[1:]:
        in_sequence = in_sequence + a
    assert not np.array_equal(in_sequence, whole)  # the data is order-sensitive: the test could fail


# -- layers under a shard ---------------------------------------------------------------------------------------
class ThreadProcesses:
    """``size`` threads standing in for processes; ``gatherer(rank)`` stacks an array of every one."""

    def __init__(self, size):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=30)

    def gatherer(self, rank):
        def gather(a):
            self.slots[rank] = a.copy()
            self.barrier.wait()
            every = np.stack(self.slots)
            self.barrier.wait()
            return every
        return gather

    def run(self, fn):
        results, errors = [None] * self.size, []

        def body(rank):
            try:
                results[rank] = fn(rank, self.gatherer(rank))
            except BaseException as e:  # pragma: no cover -- surfaced below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def _batchnorm_step(layer, x, g, shard):
    with use_shard(shard):
        y = layer.forward(x)
        dx = layer.backward(g)
    return y, dx, {k: p.grad.copy() for k, p in layer.parameters().items()}, \
        {k: b.copy() for k, b in layer.buffers().items()}


@pytest.mark.parametrize("cls,shape", [(BatchNorm2D, (12, 3, 4, 5)), (BatchNorm1D, (12, 6))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_over_processes_equals_one_process_with_the_same_chunks(cls, shape, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)

    def fresh():
        layer = cls(shape[1], dtype=dtype)
        layer.parameters()["weight"].data[...] = np.linspace(0.5, 1.5, shape[1])
        return layer

    y1, dx1, grads1, bufs1 = _batchnorm_step(fresh(), x, g, plan_shard(12, 4, 0, 1))

    def process(rank, gather):
        s = plan_shard(12, 4, rank, 2, gather)
        return _batchnorm_step(fresh(), x[s.start:s.stop], g[s.start:s.stop], s)

    (ya, dxa, ga, ba), (yb, dxb, gb, bb) = ThreadProcesses(2).run(process)
    assert np.array_equal(np.concatenate([ya, yb]), y1)
    assert np.array_equal(np.concatenate([dxa, dxb]), dx1)
    for k in grads1:  # each process keeps its own parameter gradient; the trainer sums them like this
        assert np.array_equal(tree_sum([ga[k], gb[k]]), grads1[k]), k
    for k in bufs1:  # the running statistics are those of the global batch, on every process
        assert np.array_equal(ba[k], bufs1[k]) and np.array_equal(bb[k], bufs1[k]), k

    # and the global batch's statistics: the unchunked layer agrees to rounding
    y0, dx0, grads0, bufs0 = _batchnorm_step(fresh(), x, g, None)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y1, y0, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx1, dx0, rtol=tol, atol=tol)
    np.testing.assert_allclose(bufs1["running_var"], bufs0["running_var"], rtol=tol)


def _conv():
    return Conv2D(5, 3, in_channels=2, padding=1, stride=2, dtype="float64", seed=3)


def _dense():
    return Dense(7, in_features=11, dtype="float64", seed=3)


@pytest.mark.parametrize("make,shape", [(_conv, (10, 2, 7, 7)), (_dense, (10, 11))])
def test_chunked_layers_compute_each_chunk_as_its_own_process_would(make, shape):
    """Under a shard, Conv2D and Dense run chunk by chunk: the output of each chunk is what a process
    holding just that chunk computes, and the weight gradient is the tree sum of the chunks' gradients."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    layer = make()
    with use_shard(plan_shard(10, 2, 0, 1)):
        y = layer.forward(x)
        g = rng.standard_normal(y.shape)
        dx = layer.backward(g)
    per_chunk = []
    for a, b in ((0, 5), (5, 10)):
        alone = make()
        per_chunk.append((alone.forward(x[a:b]), alone.backward(g[a:b]), alone.parameters()))
    assert np.array_equal(y, np.concatenate([c[0] for c in per_chunk]))
    assert np.array_equal(dx, np.concatenate([c[1] for c in per_chunk]))
    for k, p in layer.parameters().items():
        assert np.array_equal(p.grad, tree_sum([c[2][k].grad for c in per_chunk])), k
    plain = make()
    np.testing.assert_allclose(plain.forward(x), y, rtol=1e-12, atol=1e-12)


def test_dropout_masks_do_not_depend_on_the_split():
    x = np.ones((10, 6), dtype=np.float32)
    whole = Dropout(0.5, seed=4).forward(x)
    for rank in (0, 1):
        s = plan_shard(10, 2, rank, 2)
        with use_shard(s):
            part = Dropout(0.5, seed=4).forward(x[s.start:s.stop])
        assert np.array_equal(part, whole[s.start:s.stop])


def test_batchnorm_relu_pool_run_unfused_under_a_shard():
    """Fusion computes statistics over the batch it is given, so under a shard a Sequential runs
    BatchNorm, ReLU and max pooling one by one: the statistics are the global batch's."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3, 4, 4))
    model = Sequential([BatchNorm2D(dtype="float64"), ReLU(dtype="float64"), MaxPool2D(2, dtype="float64")], input_shape=(3, 4, 4))
    assert fusion_plan(model.layers) == [(0, 2)]  # fused as one pass outside a shard
    with use_shard(plan_shard(8, 2, 0, 2, gather=lambda a: np.stack([a, a]))):
        assert fusion_plan(model.layers) == [(0, 0), (1, 0), (2, 0)]
        y = model.forward(x[:4])  # the other process holds the same samples: statistics of x[:4] twice
    ref = Sequential([BatchNorm2D(dtype="float64"), ReLU(dtype="float64"), MaxPool2D(2, dtype="float64")], input_shape=(3, 4, 4))
    np.testing.assert_allclose(y, ref.forward(x[:4]), rtol=1e-12, atol=1e-12)
