"""Convolution speed: cnnframe vs plain NumPy im2col vs PyTorch CPU (when importable).

    python benchmarks/bench_conv.py [--threads 1 2] [--dtype float32] [--rounds 7] [--quick]

Each backend runs in its own worker process (thread pools of torch, OpenBLAS and libgomp in one
process fight and give meaningless numbers).  The workers stay alive and take turns: for every
shape, each round times every backend once, one after the other, and the best round counts.  On a
shared, noisy machine this keeps the comparison side by side: a slow spell hits all backends alike.

GFLOP/s count 2·N·F·Ho·Wo·C·kh·kw per forward and twice that per backward (dW and dX; every
backend computes the input gradient).  The last column is PyTorch's time / cnnframe's time for
forward+backward: above 1 means cnnframe is faster.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# (N, Cin, H, W, Cout, k, stride, pad)
SHAPES = [
    (64, 1, 8, 8, 16, 3, 1, 1),
    (64, 16, 8, 8, 32, 3, 1, 1),
    (64, 16, 4, 4, 32, 3, 1, 1),
    (64, 3, 32, 32, 32, 3, 1, 1),
    (64, 32, 16, 16, 64, 3, 1, 1),
    (32, 64, 16, 16, 128, 3, 1, 1),
    (64, 32, 32, 32, 32, 5, 1, 2),
    (64, 16, 32, 32, 32, 3, 2, 1),
    (1, 32, 32, 32, 32, 3, 1, 1),
]


def flops(shape):
    n, c, h, w, f, k, s, p = shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return 2.0 * n * f * ho * wo * c * k * k


def make_backend(name, threads):
    """Return setup(x, w, b, g, stride, pad) -> (forward_fn, backward_fn) for one backend."""
    if name == "cnnframe":
        import cnnframe
        from cnnframe import ops

        cnnframe.set_num_threads(threads)

        def setup(x, w, b, g, s, p):
            return (lambda: ops.conv2d_forward(x, w, b, s, p), lambda: ops.conv2d_backward(x, w, g, s, p))

        return setup
    if name == "numpy":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import numpy_conv
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)

        def setup(x, w, b, g, s, p):
            return (lambda: numpy_conv.forward(x, w, b, s, p), lambda: numpy_conv.backward(x, w, g, s, p))

        return setup
    if name == "torch":
        import torch

        torch.set_num_threads(threads)
        F = torch.nn.functional

        def setup(x, w, b, g, s, p):
            tx = torch.from_numpy(x).requires_grad_(True)
            tw = torch.from_numpy(w).requires_grad_(True)
            tb = torch.from_numpy(b).requires_grad_(True)
            tg = torch.from_numpy(g)
            y = F.conv2d(tx, tw, tb, s, p)

            def fwd():
                with torch.no_grad():
                    return F.conv2d(tx, tw, tb, s, p)

            def bwd():
                # Backward alone, through the same graph each time.
                return torch.autograd.grad(y, (tx, tw, tb), tg, retain_graph=True)

            return fwd, bwd

        return setup
    raise ValueError(name)


def best_time(fn, min_time):
    """Best per-call time over a few short batches (each batch lasts about min_time seconds)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    reps = max(1, int(min_time / once))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def serve(backend, threads, dtype):
    """Worker loop: read a JSON request per line, answer with the best forward/backward times."""
    setup = make_backend(backend, threads)
    cache = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        shape = tuple(req["shape"])
        if shape not in cache:
            n, c, h, w_, f, k, s, p = shape
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, c, h, w_)).astype(dtype)
            w = (rng.standard_normal((f, c, k, k)) * 0.1).astype(dtype)
            b = rng.standard_normal(f).astype(dtype)
            ho, wo = (h + 2 * p - k) // s + 1, (w_ + 2 * p - k) // s + 1
            g = rng.standard_normal((n, f, ho, wo)).astype(dtype)
            cache = {shape: setup(x, w, b, g, s, p)}
        fwd, bwd = cache[shape]
        print(json.dumps({"fwd": best_time(fwd, req["min_time"]), "bwd": best_time(bwd, req["min_time"])}), flush=True)


class Worker:
    def __init__(self, backend, threads, dtype):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", backend, "--threads", str(threads), "--dtype", dtype]
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
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads[0], args.dtype)
        return 0
    rounds, min_time = (3, 0.02) if args.quick else (args.rounds, args.min_time)

    backends = ["cnnframe"] + ([] if args.no_numpy else ["numpy"]) + (["torch"] if torch_available() else [])
    if "torch" not in backends:
        print("PyTorch is not importable: comparing with NumPy only (pip install torch to compare).")
    for threads in args.threads:
        workers = [Worker(b, threads, args.dtype) for b in backends]
        workers = [w for w in workers if w.ok]
        names = [w.name for w in workers]
        print(f"\n{args.dtype}, {threads} thread(s): milliseconds (GFLOP/s), best of {rounds} alternating rounds")
        head = f"{'N,Cin,H,W,Cout,k,s,p':<24}" + "".join(f"{n + ' fwd':>17}{n + ' bwd':>17}" for n in names)
        if "torch" in names:
            head += f"{'torch/cnnframe':>16}"
        print(head, flush=True)
        for shape in SHAPES:
            best = {n: {"fwd": float("inf"), "bwd": float("inf")} for n in names}
            for _ in range(rounds):
                for w in workers:
                    r = w.time(shape, min_time)
                    for key in ("fwd", "bwd"):
                        best[w.name][key] = min(best[w.name][key], r[key])
            fl = flops(shape)
            row = f"{','.join(map(str, shape)):<24}"
            for n in names:
                tf, tb = best[n]["fwd"], best[n]["bwd"]
                row += f"{tf * 1e3:>8.3f} ({fl / tf / 1e9:5.1f})" + f"{tb * 1e3:>8.3f} ({2 * fl / tb / 1e9:5.1f})"
            if "torch" in names:
                tc = best["cnnframe"]["fwd"] + best["cnnframe"]["bwd"]
                tt = best["torch"]["fwd"] + best["torch"]["bwd"]
                row += f"{tt / tc:>15.2f}x"
            print(row, flush=True)
        for w in workers:
            w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
