"""A process's part of the global batch, and sums over the batch that do not depend on how it is split.

Data-parallel training (docs/distributed.md) gives each of P processes a contiguous part of every global
batch of n samples.  The batch is cut into C fixed sample ranges, the *chunks* (``trainer.batch_chunks``;
C = P by default): chunk j holds samples [⌊n·j/C⌋, ⌊n·(j+1)/C⌋), and process r holds chunks
[r·C/P, (r+1)·C/P).  Inside a training step the trainer opens ``use_shard(shard)``; layers then compute
chunk by chunk what is not per-sample arithmetic (a GEMM's tiling depends on the number of rows, a sum
over the batch on its length), and add per-chunk partial sums with ``tree_sum``:

    tree_sum([s]) = s,   tree_sum(s[0:m]) = tree_sum(s[0:⌊m/2⌋]) + tree_sum(s[⌊m/2⌋:m]).

Two kinds of sums cross the processes:
- parameter gradients (the trainer, one buffer): each process's tree sum over its k = C/P chunks is a
  node of the tree over all C chunks whenever P is a power of two (or P = C), and the same tree over
  the P partial sums completes the very additions one process makes over all C chunks: bit-identical
  for P = 1, 2, 4, ... dividing C;
- per-channel statistics (BatchNorm) and the batch loss, small: ``gather_chunks`` gives every process
  every chunk's partial sums, which it adds itself in chunk order: the same for any P dividing C.
Outside a step (or with one chunk and one process) there is no shard and every layer computes as it
always has.

Layers use ``chunks(n)``, ``map_chunks``, ``tree_sum``, ``batch_total(n)``, ``chunk_sizes(n)``,
``gather_chunks`` and ``global_rows(n)``; nothing here knows about MPI (``cnnframe.distributed`` supplies
``Shard.gather``).
"""
import contextlib
import contextvars

import numpy as np

__all__ = ["Shard", "ChunkError", "check_chunks", "plan_shard", "use_shard", "current_shard", "chunks", "map_chunks",
           "concat", "tree_sum", "batch_total", "chunk_sizes", "gather_chunks", "global_rows"]


class Shard:
    """Samples [start, stop) of a global batch of ``total`` cut into ``num_chunks`` chunks, this process's
    in ``bounds`` (ranges relative to ``start``).  ``gather(a)`` stacks every process's array ``a`` in
    rank order, shape (P, *a.shape); None in a single process."""

    __slots__ = ("total", "num_chunks", "start", "stop", "bounds", "gather")

    def __init__(self, total, num_chunks, start, stop, bounds, gather=None):
        self.total, self.num_chunks, self.start, self.stop = int(total), int(num_chunks), int(start), int(stop)
        self.bounds = tuple((int(a), int(b)) for a, b in bounds)
        self.gather = gather

    @property
    def size(self):
        """Samples this process computes."""
        return self.stop - self.start

    def __repr__(self):
        return f"Shard(samples {self.start}:{self.stop} of {self.total}, chunks {list(self.bounds)})"


class ChunkError(ValueError):
    """``trainer.batch_chunks`` does not fit the processes or the batches."""


def check_chunks(chunks, processes, samples=None, batch_size=None):
    """The number of chunks (``chunks``, default: the number of processes), checked: a multiple of the
    processes, and, given the training ``samples`` and ``batch_size``, no more than the smallest batch
    (``data.batches`` makes near-equal batches).  ChunkError otherwise."""
    chunks = processes if chunks is None else int(chunks)
    if chunks < 1 or chunks % processes:
        raise ChunkError(f"{chunks} chunks cannot be shared by {processes} processes: use a multiple of the "
                         f"number of processes")
    if samples is not None:
        smallest = samples // max(1, -(-samples // batch_size))
        if chunks > smallest:
            raise ChunkError(f"{chunks} chunks need batches of at least {chunks} samples, but the smallest batch "
                             f"has {smallest} ({samples} training samples, batch size {batch_size}); use fewer "
                             f"chunks or processes, or a larger trainer.batch_size")
    return chunks


def plan_shard(total, num_chunks, rank=0, size=1, gather=None):
    """The ``Shard`` of process ``rank`` of ``size`` for a global batch of ``total`` samples cut into
    ``num_chunks`` chunks (a multiple of ``size``, at most ``total``), or None when there is nothing to
    split (one process, one chunk)."""
    if num_chunks % size or not 1 <= num_chunks <= total:
        raise ValueError(f"cannot cut a batch of {total} samples into {num_chunks} chunks over {size} processes "
                         f"(the chunks must be a multiple of the processes and at most the batch)")
    if num_chunks == 1 and size == 1:
        return None
    k = num_chunks // size
    edges = [total * j // num_chunks for j in range(rank * k, (rank + 1) * k + 1)]
    start = edges[0]
    return Shard(total, num_chunks, start, edges[-1], [(a - start, b - start) for a, b in zip(edges[:-1], edges[1:])],
                 gather)


_SHARD = contextvars.ContextVar("cnnframe_shard", default=None)


@contextlib.contextmanager
def use_shard(shard):
    """Within the block, layers compute batches as ``shard`` says (None: as one batch in one process)."""
    token = _SHARD.set(shard)
    try:
        yield shard
    finally:
        _SHARD.reset(token)


def current_shard():
    return _SHARD.get()


def chunks(n):
    """The chunk ranges of a batch of ``n`` samples: the shard's, or [(0, n)] outside one."""
    shard = _SHARD.get()
    if shard is None:
        return ((0, n),)
    if n != shard.size:
        raise ValueError(f"a layer got a batch of {n} samples inside a training step over {shard.size} "
                         f"(samples {shard.start}:{shard.stop} of {shard.total}); layers must keep the batch axis")
    return shard.bounds


def map_chunks(fn, n):
    """``[fn(a, b) for each chunk range (a, b) of a batch of n]``."""
    return [fn(a, b) for a, b in chunks(n)]


def concat(parts):
    """Per-chunk results joined along the batch axis (the one part itself when there is one)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def tree_sum(parts):
    """Σ parts by halves: ``tree_sum(s[:m//2]) + tree_sum(s[m//2:])`` -- the fixed order that makes a
    process's partial sum a node of the sum over every chunk (module docstring)."""
    m = len(parts)
    if m == 1:
        return parts[0]
    return tree_sum(parts[: m // 2]) + tree_sum(parts[m // 2:])


def batch_total(n):
    """Samples in the global batch when this process holds ``n`` of them."""
    shard = _SHARD.get()
    return n if shard is None else shard.total


def chunk_sizes(n):
    """Samples in each chunk of the global batch, in chunk order (every process's chunks, not only
    this one's): [n] for a batch of ``n`` outside a shard."""
    shard = _SHARD.get()
    if shard is None:
        return [n]
    chunks(n)  # checks n
    t, c = shard.total, shard.num_chunks
    return [t * (j + 1) // c - t * j // c for j in range(c)]


def gather_chunks(rows):
    """Every chunk's row of partial sums, in chunk order: ``rows`` (k, w) are this process's k chunks';
    returns (C, w) with every process's (``rows`` itself in a single process).  The statistics hook:
    BatchNorm and the trainer's batch loss add the rows in a fixed order, so the same on any process
    and for any number of processes dividing C."""
    shard = _SHARD.get()
    if shard is None or shard.gather is None:
        return rows
    return shard.gather(np.ascontiguousarray(rows)).reshape(shard.num_chunks, *rows.shape[1:])


def global_rows(n):
    """(total, start, stop): where a local batch of ``n`` samples sits in the global batch, for layers that
    draw per-sample random numbers (Dropout draws for the global batch and keeps its rows)."""
    shard = _SHARD.get()
    if shard is None:
        return n, 0, n
    chunks(n)  # checks n
    return shard.total, shard.start, shard.stop
