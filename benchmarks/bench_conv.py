"""Convolution speed: cnnframe vs plain NumPy im2col vs PyTorch CPU (when importable).

    python benchmarks/bench_conv.py [--threads 1 2] [--dtype float32] [--quick]

Each backend runs in its own process (thread pools of torch, OpenBLAS and libgomp in one process
fight and give meaningless numbers).  Times are the best of seven timed repeats (the least
disturbed by other work on a shared machine); GFLOP/s count
2·N·F·Ho·Wo·C·kh·kw per forward and twice that per backward (dW and dX).  The last column is
PyTorch's time / cnnframe's time for forward+backward: above 1 means cnnframe is faster.
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


def timeit(fn, min_time):
    fn()
    fn()  # warm-up: allocation, thread pools, JIT kernels
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        dt = time.perf_counter() - t0
        if dt > min_time / 5 or reps > 10000:
            break
        reps *= 2
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t0) / reps)
    return float(min(samples))


def make_backend(name, threads):
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

            def fwd():
                with torch.no_grad():
                    return F.conv2d(tx, tw, tb, s, p)

            def bwd():
                # The graph's forward is rebuilt each time; subtract a forward to get backward alone.
                y = F.conv2d(tx, tw, tb, s, p)
                return torch.autograd.grad(y, (tx, tw, tb), tg)

            return fwd, bwd

        return setup
    raise ValueError(name)


def worker(backend, threads, dtype, min_time, shapes):
    setup = make_backend(backend, threads)
    rng = np.random.default_rng(0)
    out = []
    for shape in shapes:
        n, c, h, w_, f, k, s, p = shape
        x = rng.standard_normal((n, c, h, w_)).astype(dtype)
        w = (rng.standard_normal((f, c, k, k)) * 0.1).astype(dtype)
        b = rng.standard_normal(f).astype(dtype)
        ho, wo = (h + 2 * p - k) // s + 1, (w_ + 2 * p - k) // s + 1
        g = rng.standard_normal((n, f, ho, wo)).astype(dtype)
        fwd, bwd = setup(x, w, b, g, s, p)
        tf = timeit(fwd, min_time)
        tb = timeit(bwd, min_time)
        if backend == "torch":
            tb = max(tb - tf, 1e-9)
        out.append({"shape": shape, "fwd": tf, "bwd": tb})
    return out


def run_worker(backend, threads, dtype, min_time, shapes):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--threads", str(threads),
           "--dtype", dtype, "--min-time", str(min_time), "--shapes", json.dumps(shapes)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        print(f"[{backend} x{threads}] failed:\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def torch_available():
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per timed measurement")
    ap.add_argument("--quick", action="store_true", help="shorter timings (noisier)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the NumPy baseline")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    min_time = 0.05 if args.quick else args.min_time
    if args.worker:
        shapes = [tuple(s) for s in json.loads(args.shapes)]
        print(json.dumps(worker(args.worker, args.threads[0], args.dtype, min_time, shapes)))
        return 0

    backends = ["cnnframe"] + ([] if args.no_numpy else ["numpy"]) + (["torch"] if torch_available() else [])
    if "torch" not in backends:
        print("PyTorch is not importable: comparing with NumPy only (pip install torch to compare).")
    for threads in args.threads:
        results = {b: run_worker(b, threads, args.dtype, min_time, SHAPES) for b in backends}
        print(f"\n{args.dtype}, {threads} thread(s): milliseconds (GFLOP/s) forward | backward")
        head = f"{'N,Cin,H,W,Cout,k,s,p':<26}" + "".join(f"{b + ' fwd':>17}{b + ' bwd':>17}" for b in backends)
        if "torch" in backends:
            head += f"{'torch/cnnframe':>16}"
        print(head)
        for i, shape in enumerate(SHAPES):
            fl = flops(shape)
            row = f"{','.join(map(str, shape)):<26}"
            for b in backends:
                r = results[b]
                if r is None:
                    row += f"{'-':>17}{'-':>17}"
                    continue
                tf, tb = r[i]["fwd"], r[i]["bwd"]
                row += f"{tf * 1e3:>8.3f} ({fl / tf / 1e9:5.1f})" + f"{tb * 1e3:>8.3f} ({2 * fl / tb / 1e9:5.1f})"
            if "torch" in backends and results["torch"] and results["cnnframe"]:
                tc = results["cnnframe"][i]["fwd"] + results["cnnframe"][i]["bwd"]
                tt = results["torch"][i]["fwd"] + results["torch"][i]["bwd"]
                row += f"{tt / tc:>15.2f}x"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
