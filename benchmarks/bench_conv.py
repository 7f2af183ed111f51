"""Convolution speed: cnnframe vs plain NumPy im2col vs PyTorch CPU (when importable).

    python benchmarks/bench_conv.py [--threads 1 2] [--dtype float32] [--rounds 7] [--quick]
                                    [--only cifar] [--no-numpy] [--clock thread]

Each backend runs in its own worker process (thread pools of torch, OpenBLAS and libgomp in one
process fight and give meaningless numbers).  The workers stay alive and take turns: for every
shape, each round times every backend once, one after the other, and the best round counts.  On a
shared, noisy machine this keeps the comparison side by side: a slow spell hits all backends alike.
With ``--clock thread`` (1 thread only) each call is timed in CPU time of the calling thread, which
the time other processes take the core away does not count in.

GFLOP/s count 2·N·K·Ho·Wo·(C/g)·kh·kw per forward and twice that per backward (dW and dX), or
once for a first layer that needs no dX (marked "noDX": every backend then skips it).  "%pk" is
cnnframe's forward+backward speed as a share of this machine's float32 FMA peak at the same
thread count (benchmarks/fma_peak.py).  "spread" is (worst - best) / best of cnnframe's
forward+backward rounds.  The last column is PyTorch's time / cnnframe's time for
forward+backward: above 1 means cnnframe is faster.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fma_peak import fma_peak  # noqa: E402

Shape = namedtuple("Shape", "n c h w k ks s p groups dx tag", defaults=(1, True, ""))

SHAPES = [
    Shape(64, 1, 8, 8, 16, 3, 1, 1),
    Shape(64, 16, 8, 8, 32, 3, 1, 1),
    Shape(64, 16, 4, 4, 32, 3, 1, 1),
    Shape(64, 3, 32, 32, 32, 3, 1, 1),
    Shape(64, 32, 16, 16, 64, 3, 1, 1),
    Shape(32, 64, 16, 16, 128, 3, 1, 1),
    Shape(64, 32, 32, 32, 32, 5, 1, 2),
    Shape(64, 16, 32, 32, 32, 3, 2, 1),
    Shape(1, 32, 32, 32, 32, 3, 1, 1),
    # The conv layers of the CIFAR-size training model (the first one needs no dX).
    Shape(64, 3, 32, 32, 32, 3, 1, 1, dx=False, tag="cifar"),
    Shape(64, 32, 32, 32, 32, 3, 1, 1, tag="cifar"),
    Shape(64, 32, 16, 16, 64, 3, 1, 1, tag="cifar"),
    Shape(64, 64, 16, 16, 64, 3, 1, 1, tag="cifar"),
    Shape(64, 64, 8, 8, 128, 3, 1, 1, tag="cifar"),
    Shape(64, 128, 8, 8, 128, 3, 1, 1, tag="cifar"),
    # Depthwise and grouped.
    Shape(64, 64, 16, 16, 64, 3, 1, 1, groups=64, tag="grouped"),
    Shape(64, 64, 16, 16, 64, 3, 1, 1, groups=4, tag="grouped"),
]


def out_hw(shape):
    return (shape.h + 2 * shape.p - shape.ks) // shape.s + 1, (shape.w + 2 * shape.p - shape.ks) // shape.s + 1


def flops(shape):
    ho, wo = out_hw(shape)
    return 2.0 * shape.n * shape.k * ho * wo * (shape.c // shape.groups) * shape.ks * shape.ks


def label(shape):
    text = ",".join(map(str, shape[:8]))
    if shape.groups > 1:
        text += f" g{shape.groups}"
    if not shape.dx:
        text += " noDX"
    return text


def make_backend(name, threads):
    """Return setup(x, w, b, g, shape) -> (forward_fn, backward_fn) for one backend."""
    if name == "cnnframe":
        import cnnframe
        from cnnframe import ops

        cnnframe.set_num_threads(threads)

        def setup(x, w, b, g, sh):
            kw = dict(stride=sh.s, padding=sh.p, groups=sh.groups) if sh.groups > 1 else dict(stride=sh.s, padding=sh.p)
            return (lambda: ops.conv2d_forward(x, w, b, **kw),
                    lambda: ops.conv2d_backward(x, w, g, need_input_grad=sh.dx, **kw))

        return setup
    if name == "numpy":
        import numpy_conv
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)

        def setup(x, w, b, g, sh):
            if sh.groups > 1:
                return None
            return (lambda: numpy_conv.forward(x, w, b, sh.s, sh.p), lambda: numpy_conv.backward(x, w, g, sh.s, sh.p))

        return setup
    if name == "torch":
        import torch

        torch.set_num_threads(threads)
        F = torch.nn.functional

        def setup(x, w, b, g, sh):
            tx = torch.from_numpy(x).requires_grad_(sh.dx)
            tw = torch.from_numpy(w).requires_grad_(True)
            tb = torch.from_numpy(b).requires_grad_(True)
            tg = torch.from_numpy(g)
            y = F.conv2d(tx, tw, tb, sh.s, sh.p, 1, sh.groups)
            wrt = (tx, tw, tb) if sh.dx else (tw, tb)

            def fwd():
                with torch.no_grad():
                    return F.conv2d(tx, tw, tb, sh.s, sh.p, 1, sh.groups)

            def bwd():
                # Backward alone, through the same graph each time.
                return torch.autograd.grad(y, wrt, tg, retain_graph=True)

            return fwd, bwd

        return setup
    raise ValueError(name)


def best_time(fn, min_time, clock=time.perf_counter):
    """Best per-call time over a few short batches (each batch lasts about min_time seconds)."""
    fn()
    t0 = clock()
    fn()
    once = max(clock() - t0, 1e-7)
    reps = max(1, int(min_time / once))
    best = float("inf")
    for _ in range(3):
        t0 = clock()
        for _ in range(reps):
            fn()
        best = min(best, (clock() - t0) / reps)
    return best


def serve(backend, threads, dtype, clock_name):
    """Worker loop: read a JSON request per line, answer with the best forward/backward times."""
    setup = make_backend(backend, threads)
    clock = time.thread_time if clock_name == "thread" else time.perf_counter
    cache = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        shape = Shape(*req["shape"])
        if shape not in cache:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((shape.n, shape.c, shape.h, shape.w)).astype(dtype)
            w = (rng.standard_normal((shape.k, shape.c // shape.groups, shape.ks, shape.ks)) * 0.1).astype(dtype)
            b = rng.standard_normal(shape.k).astype(dtype)
            g = rng.standard_normal((shape.n, shape.k) + out_hw(shape)).astype(dtype)
            try:
                cache = {shape: setup(x, w, b, g, shape)}
            except (TypeError, ValueError):
                cache = {shape: None}
        fns = cache[shape]
        if fns is None:
            print(json.dumps(None), flush=True)
            continue
        try:
            answer = {"fwd": best_time(fns[0], req["min_time"], clock), "bwd": best_time(fns[1], req["min_time"], clock)}
        except (TypeError, ValueError):  # a backend that lacks this kind of layer
            answer = None
        print(json.dumps(answer), flush=True)


class Worker:
    def __init__(self, backend, threads, dtype, clock):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", backend, "--threads", str(threads), "--dtype", dtype,
               "--clock", clock]
        # Fixed thread counts: the other backends' idle workers still spin for a moment after their
        # turn, which cnnframe's dynamic threads would otherwise take for a busy machine.
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), CNNFRAME_DYNAMIC_THREADS="0")
        self.name = backend
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ok = self._read() is not None

    def _read(self):
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def time(self, shape, min_time):
        self.proc.stdin.write(json.dumps({"shape": shape, "min_time": min_time}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def torch_available():
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds per shape (best one counts)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per timed batch")
    ap.add_argument("--quick", action="store_true", help="3 rounds of shorter batches (noisier)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the NumPy baseline")
    ap.add_argument("--only", choices=["cifar", "grouped"], help="only the shapes with this tag")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: CPU time of the calling thread, for 1-thread runs on a machine other "
                         "processes keep busy (each backend computes in its calling thread then)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads[0], args.dtype, args.clock)
        return 0
    rounds, min_time = (3, 0.02) if args.quick else (args.rounds, args.min_time)
    shapes = [s for s in SHAPES if args.only is None or s.tag == args.only]

    backends = ["cnnframe"] + ([] if args.no_numpy else ["numpy"]) + (["torch"] if torch_available() else [])
    if "torch" not in backends:
        print("PyTorch is not importable: comparing with NumPy only (pip install torch to compare).")
    for threads in args.threads:
        # The machine's peak: the best of a probe now and one after the table (another process
        # holding a core during one probe would make it look smaller than it is).
        if args.clock == "thread" and threads != 1:
            print(f"\n--clock thread measures one thread's CPU time: skipping {threads} threads")
            continue
        peak, kind = fma_peak(threads)
        workers = [Worker(b, threads, args.dtype, args.clock) for b in backends]
        workers = [w for w in workers if w.ok]
        names = [w.name for w in workers]
        clock = "wall-clock" if args.clock == "wall" else "thread CPU time"
        print(f"\n{args.dtype}, {threads} thread(s): milliseconds (GFLOP/s) of {clock}, best of {rounds} alternating "
              f"rounds; float32 FMA peak {peak:.0f} GFLOP/s ({kind})")
        head = f"{'N,Cin,H,W,Cout,k,s,p':<30}" + "".join(f"{n + ' fwd':>17}{n + ' bwd':>17}" for n in names)
        head += f"{'%pk':>6}{'spread':>8}"
        if "torch" in names:
            head += f"{'torch/cnnframe':>16}"
        print(head, flush=True)
        totals = {n: 0.0 for n in names}  # the CIFAR-size model's conv layers, forward + backward
        for shape in shapes:
            times = {n: [] for n in names}
            for _ in range(rounds):
                for w in workers:
                    r = w.time(shape, min_time)
                    if r is not None:
                        times[w.name].append(r)
            fl = flops(shape)
            fl_bwd = (2 if shape.dx else 1) * fl
            row = f"{label(shape):<30}"
            best = {}
            for n in names:
                if not times[n]:
                    row += f"{'-':>17}{'-':>17}"
                    continue
                tf, tb = min(r["fwd"] for r in times[n]), min(r["bwd"] for r in times[n])
                best[n] = tf + tb
                row += f"{tf * 1e3:>8.3f} ({fl / tf / 1e9:5.1f})" + f"{tb * 1e3:>8.3f} ({fl_bwd / tb / 1e9:5.1f})"
            if "cnnframe" in best:
                tot = [r["fwd"] + r["bwd"] for r in times["cnnframe"]]
                row += f"{100 * (fl + fl_bwd) / best['cnnframe'] / 1e9 / peak:>5.0f}%"
                row += f"{100 * (max(tot) - min(tot)) / min(tot):>7.0f}%"
            else:
                row += f"{'-':>6}{'-':>8}"
            if "torch" in best and "cnnframe" in best:
                row += f"{best['torch'] / best['cnnframe']:>15.2f}x"
            print(row, flush=True)
            if shape.tag == "cifar":
                for n in best:
                    totals[n] += best[n]
        peak_after, _ = fma_peak(threads)
        if peak_after > peak * 1.05:
            print(f"(FMA peak measured again after the table: {peak_after:.0f} GFLOP/s; %pk above used "
                  f"{peak:.0f}, so it reads {peak / peak_after:.2f}x too high)")
        if "torch" in names and totals.get("cnnframe"):
            print(f"{'CIFAR-size model, all conv layers':<30}{'cnnframe':>17}{totals['cnnframe'] * 1e3:>8.2f} ms"
                  f"{'torch':>17}{totals['torch'] * 1e3:>8.2f} ms{totals['torch'] / totals['cnnframe']:>30.2f}x",
                  flush=True)
        for w in workers:
            w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
