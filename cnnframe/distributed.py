"""Data-parallel training on MPI: launch detection, the process group, sums in a fixed order, ending a job.

``mpiexec -n P python -m cnnframe train CONFIG`` starts P processes (ranks).  Each computes its part of
every global batch (``cnnframe.shards``); gradients, BatchNorm statistics and the batch loss are summed
over the ranks with ``MPIGroup.sum`` before they are used, so every rank applies the same update to the
same weights.  docs/distributed.md describes the whole design and what it reproduces.

- A single-process run imports nothing from MPI: ``detect_launch`` reads the variables a launcher sets
  in every process it starts (MPICH/Hydra and Intel MPI ``PMI_RANK``/``PMI_SIZE``, also set by Slurm's
  ``srun --mpi=pmi2``; Open MPI ``OMPI_COMM_WORLD_RANK``/``..._SIZE``; Slurm with PMIx ``PMIX_RANK`` and
  ``SLURM_STEP_NUM_TASKS``; MVAPICH ``MV2_COMM_WORLD_RANK``/``..._SIZE``), and ``mpi4py`` is imported only
  when they say there are several processes.  ``Group`` is the single-process group: every method is
  the identity.
- ``MPIGroup.sum`` never uses MPI's own reduction, whose order of additions depends on the number of
  processes and the algorithm MPI picks.  Each rank's partial sums are gathered and added in the same
  fixed order on every rank (``shards.tree_sum`` over the ranks), so a run is bit-reproducible for a
  given number of processes, and, with chunked batches, across numbers of processes.
- A process that raises while the others wait in a collective would hang the job (mpi4py finalises MPI
  at exit, which waits for them).  Setup errors are *agreed* (``agreement``): every rank reports success
  or its exit status, and all stop together with one copy of the message.  Later, a failure on one rank
  calls ``MPI_Abort`` (``abort_on_failure``, and the ``sys.excepthook`` set by ``group_from_environment``),
  which ends every process of the job within about a second.
"""
import contextlib
import os
import sys
import time
import traceback

import numpy as np

from cnnframe.errors import JobStopped, UserError
from cnnframe.shards import tree_sum

__all__ = ["Group", "MPIGroup", "SINGLE", "detect_launch", "group_from_environment", "FlatGradients",
           "agreement", "abort_on_failure", "end_job", "stop_interrupted", "MPI_EXTRA"]

MPI_EXTRA = 'pip install "cnnframe[mpi]"'

#: (rank variable, size variable) of each launcher, as set in every process it starts
LAUNCH_VARIABLES = (
    ("PMI_RANK", "PMI_SIZE"),  # MPICH (Hydra), Intel MPI, Slurm srun --mpi=pmi2
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI
    ("PMIX_RANK", "SLURM_STEP_NUM_TASKS"),  # Slurm srun --mpi=pmix
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),  # MVAPICH
)

#: a rank whose Ctrl-C found the root busy waits this long for the root to save, then ends the job
INTERRUPT_GRACE = 5.0

#: MPICH polls this many times before yielding the core while a rank waits (MPICH's default: 1000)
POLLS_BEFORE_YIELD = 1

_FORWARD_SECONDS = 0.2

# Sums of at most this many bytes per rank, and every sum over two ranks, gather every partial sum on every
# rank (one collective); larger ones over more ranks exchange 1/P slices first, as a ring allreduce does.
_GATHER_BYTES = 1 << 18


def detect_launch(environ=None):
    """(rank, size) when an MPI launcher started this process as one of several; None otherwise (no
    launcher, or ``mpiexec -n 1``).  ``size`` is None when the launcher's variables do not say it."""
    env = os.environ if environ is None else environ
    for rank_var, size_var in LAUNCH_VARIABLES:
        rank = _int(env.get(rank_var))
        if rank is None:
            continue
        size = _int(env.get(size_var))
        return None if size == 1 else (rank, size)
    return None


def _int(text):
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


class Group:
    """The processes training together; this one is the single-process group, where every operation
    is the identity.  ``MPIGroup`` is the same interface over MPI."""

    rank, size, is_root = 0, 1, True

    def sum(self, a):
        """``a`` (1-D, contiguous, modified in place) summed over the processes in a fixed order; returns ``a``."""
        return a

    def gather(self, a):
        """Every process's array ``a`` (same shape everywhere), stacked in rank order: (P, *a.shape)."""
        return a[None]

    def bcast(self, obj):
        """The root's ``obj`` on every process."""
        return obj

    def from_root(self, fn):
        """``fn()`` computed on the root only, its result sent to every process."""
        return fn()

    def exit_codes(self, code):
        """Every process's exit status (0: fine), given this process's ``code``: the agreement round."""
        return [code]

    def abort(self, code):
        """End every process of the job with ``code`` (here: this process)."""
        raise SystemExit(code)

    def threads_per_process(self):
        """Default OpenMP threads for this process (None: the usual default, all cores)."""
        return None

    def describe(self):
        return "1 process"


SINGLE = Group()


class MPIGroup(Group):
    """The processes of ``comm`` (an ``mpi4py.MPI.Comm``, normally ``COMM_WORLD``); rank 0 is the root."""

    def __init__(self, comm, mpi):
        self.comm, self._mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        self.gather_bytes = _GATHER_BYTES

    def sum(self, a):
        """Σ over the ranks of ``a``, added as ``tree_sum`` over the ranks on every rank (not MPI_SUM, whose
        order depends on P and the algorithm): bit-identical on every rank, and for a given P in every run."""
        if a.ndim != 1 or not a.flags.c_contiguous:
            raise ValueError(f"MPIGroup.sum: needs a contiguous 1-D array, got shape {a.shape}")
        p, n = self.size, a.size
        if p <= 2 or n < p or n * a.itemsize <= self.gather_bytes:
            # every rank's partial sums, on every rank
            parts = np.empty((p, n), dtype=a.dtype)
            self.comm.Allgather(a, parts)
            a[...] = tree_sum(list(parts))
            return a
        # Rank r adds slice r of everyone's partial sums, then the added slices are gathered: each rank
        # sends and receives 2(P-1)/P of the array, like a ring allreduce, and the additions are the same.
        bounds = [n * r // p for r in range(p + 1)]
        counts, displs = np.diff(bounds).tolist(), bounds[:-1]
        mine = counts[self.rank]
        parts = np.empty((p, mine), dtype=a.dtype)
        self.comm.Alltoallv([a, counts, displs, self._mpi_type(a)],
                            [parts, [mine] * p, [mine * r for r in range(p)], self._mpi_type(a)])
        own = np.ascontiguousarray(tree_sum(list(parts)))
        self.comm.Allgatherv(own, [a, counts, displs, self._mpi_type(a)])
        return a

    def _mpi_type(self, a):
        return self._mpi.DOUBLE if a.dtype == np.float64 else self._mpi.FLOAT

    def gather(self, a):
        out = np.empty((self.size, *a.shape), dtype=a.dtype)
        self.comm.Allgather(np.ascontiguousarray(a), out)
        return out

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def from_root(self, fn):
        return self.comm.bcast(fn() if self.is_root else None, root=0)

    def exit_codes(self, code):
        return self.comm.allgather(int(code))

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(_FORWARD_SECONDS)  # MPI_Abort tears the job down at once: let the launcher pass on what we printed
        self.comm.Abort(int(code))

    def threads_per_process(self):
        """The cores the processes on this node may use (the union of their CPU affinities), divided by
        the number of processes on the node (``Split_type(COMM_TYPE_SHARED)``); at least 1."""
        node = self.comm.Split_type(self._mpi.COMM_TYPE_SHARED, key=self.rank)
        try:
            cpus = set()
            for mask in node.allgather(sorted(_affinity())):
                cpus.update(mask)
            return max(1, min(len(_affinity()), len(cpus) // node.Get_size()))
        finally:
            node.Free()

    def describe(self):
        return f"{self.size} processes (MPI)"


def _affinity():
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def group_from_environment(environ=None):
    """The group this process belongs to: ``SINGLE`` unless an MPI launcher started several processes;
    then ``MPIGroup(COMM_WORLD)`` (mpi4py imported now), with an excepthook that aborts the job.

    Without mpi4py under a launcher: UserError naming ``pip install "cnnframe[mpi]"`` on rank 0 and
    JobStopped(2) on the others (one copy of the message, every process exits 2, no collective)."""
    global _WORLD
    launch = detect_launch(environ)
    if launch is None:
        return SINGLE
    if _WORLD is not None:
        return _WORLD
    rank, size = launch
    # A rank waiting in a collective polls; MPICH yields the core only every 1000 polls by default, and a
    # spinning rank then slows the processes and threads that share its core (docs/distributed.md).
    os.environ.setdefault("MPIR_CVAR_POLLS_BEFORE_YIELD", str(POLLS_BEFORE_YIELD))
    try:
        import mpi4py

        mpi4py.rc.thread_level = "funneled"  # MPI is called from the main thread only; OpenMP teams never call it
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as e:
        if rank:
            raise JobStopped(2) from None
        raise UserError(f"started by an MPI launcher as one of {size or 'several'} processes, but MPI for Python "
                        f"is not available ({e}); data-parallel training needs it: {MPI_EXTRA}") from None
    group = MPIGroup(MPI.COMM_WORLD, MPI)
    if group.size == 1:
        return SINGLE
    _abort_on_uncaught(group)
    _WORLD = group
    return group


_WORLD = None  # the MPIGroup of COMM_WORLD, once made


def _abort_on_uncaught(group):
    """An exception nobody catches prints its traceback and ends the whole job (not just this process)."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        group.abort(1)

    sys.excepthook = hook


class FlatGradients:
    """Every parameter's ``.grad`` as a view into one contiguous buffer per dtype, so the gradients are
    summed over the processes in one call (``group.sum(flat)``), not one per parameter."""

    def __init__(self, params):
        self.params = list(params.values())
        sizes = {}
        for p in self.params:
            sizes[p.grad.dtype] = sizes.get(p.grad.dtype, 0) + p.grad.size
        self.buffers = {dt: np.zeros(n, dtype=dt) for dt, n in sizes.items()}
        offsets = dict.fromkeys(sizes, 0)
        self.views = []
        for p in self.params:
            o, flat = offsets[p.grad.dtype], self.buffers[p.grad.dtype]
            view = flat[o:o + p.grad.size].reshape(p.grad.shape)
            view[...] = p.grad
            p.grad = view
            offsets[p.grad.dtype] = o + p.grad.size
            self.views.append(view)

    def sum(self, group):
        """Sum every gradient over ``group`` in place (re-attaching a ``.grad`` a layer replaced)."""
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                view[...] = p.grad
                p.grad = view
        for flat in self.buffers.values():
            group.sum(flat)


@contextlib.contextmanager
def agreement(group, exit_code):
    """Run the block on every process, then agree: if it raised anywhere, every process stops with the
    status of the lowest failing rank, which alone raises its own exception (one copy of the message);
    the others raise JobStopped(status).  ``exit_code(exception)`` gives the status of an exception.
    In a single process this is just the block."""
    error = None
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 -- reported below, on one rank
        if group.size == 1:
            raise
        error = e
    codes = group.exit_codes(exit_code(error) if error is not None else 0)
    failed = [r for r, c in enumerate(codes) if c]
    if not failed:
        return
    if group.rank == failed[0]:
        raise error
    raise JobStopped(codes[failed[0]])


@contextlib.contextmanager
def abort_on_failure(group, exit_code):
    """Within the block, an exception on one process ends the whole job: it is reported (rank, message,
    and the traceback of an unexpected error) and ``MPI_Abort`` is called with its status.  (What every
    process raises at the same point, such as a non-finite loss, is caught inside the block.)  In a
    single process this is just the block."""
    try:
        yield
    except BaseException as e:
        if group.size == 1 or isinstance(e, (SystemExit, JobStopped)):
            raise
        code = exit_code(e)
        if not isinstance(e, KeyboardInterrupt):
            print(f"cnnframe: error on process {group.rank} of {group.size}: {e}; ending the job", file=sys.stderr)
        if code not in (0, 2, 130):
            traceback.print_exc(file=sys.stderr)
        group.abort(code)


def end_job(group, code):
    """``code`` for a single process to exit with; with several, a failure only this one saw: end the job."""
    if group.size > 1:
        group.abort(code)
    return code


def stop_interrupted(group, code):
    """After Ctrl-C: the root (which has saved the last completed epoch) ends the job now; another rank
    gives the root ``INTERRUPT_GRACE`` seconds to do so (it may be saving) and then ends it itself."""
    if group.size > 1 and not group.is_root:
        time.sleep(INTERRUPT_GRACE)
    return end_job(group, code)
