"""Which threads burn CPU during training: does any thread pool compete with the kernels' OpenMP team?

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_threads.py [--config configs/cifar-size.yaml]

An idle OpenBLAS pool keeps spinning for a while after each call, and a spinning thread on a core the
OpenMP team needs makes the whole team wait.  A cnnframe training step makes no call into NumPy's
BLAS (Dense and the gradient norm run in cnnframe's kernels; the convolutions' BLAS, SciPy's, is
pinned to one thread), so NumPy's pool should stay asleep without touching the user's NumPy threading.
This runs a few training steps at 2 threads and prints the CPU seconds of every thread of the process
(from /proc/self/task, Linux), then the same steps' time with NumPy's BLAS limited to one thread by
OPENBLAS_NUM_THREADS=1 in a second process: the two should match, and only the OpenMP team (the main
thread and threads-1 workers) should show CPU time.  Finally it times a NumPy matrix product before
and after the steps, to show the user's own BLAS calls keep their threads.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))


def thread_cpu_seconds():
    """{thread id: user + system CPU seconds} of this process's threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def matmul_ms(np, a):
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def worker(config_path, steps):
    import numpy as np

    import cnnframe
    from cnnframe import config
    from cnnframe.trainer import Trainer

    cnnframe.set_num_threads(2)
    cnnframe.set_dynamic(False)
    a = np.random.default_rng(0).standard_normal((1500, 1500))
    before = matmul_ms(np, a)
    setup = config.load(config_path)
    cfg = setup.config
    tr = Trainer.from_config(setup, quiet=True, create_run_dir=False)
    X, y = tr.data.train
    model, loss, opt = tr.model, tr.loss, tr.optimizer
    bs = cfg["trainer"]["batch_size"]

    def step(i):
        idx = np.arange(i * bs, (i + 1) * bs) % len(y)
        opt.zero_grad()
        loss.forward(model.forward(X[idx]), y[idx])
        model.backward(loss.backward(), input_grad=False)
        opt.step()

    for i in range(3):
        step(i)
    cpu0 = thread_cpu_seconds()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    wall = time.perf_counter() - t0
    cpu1 = thread_cpu_seconds()
    busy = sorted((cpu1[t] - cpu0.get(t, 0.0) for t in cpu1), reverse=True)
    after = matmul_ms(np, a)
    print(json.dumps({"step_ms": 1000 * wall / steps, "threads": busy, "wall": wall,
                      "matmul_before_ms": before, "matmul_after_ms": after}))


def run(config, steps, extra_env):
    env = dict(os.environ, **extra_env)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--config", config,
                        "--steps", str(steps)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(r.stderr.strip())
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "cifar-size.yaml"))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.config, args.steps)
        return
    plain = run(args.config, args.steps, {})
    pinned = run(args.config, args.steps, {"OPENBLAS_NUM_THREADS": "1"})
    print(f"{os.path.relpath(args.config)}: {args.steps} training steps at 2 threads")
    for label, r in (("NumPy's BLAS as it is", plain), ("OPENBLAS_NUM_THREADS=1", pinned)):
        share = [f"{100 * s / r['wall']:.0f}%" for s in r["threads"] if s > 0.01 * r["wall"]]
        print(f"  {label:<24} {r['step_ms']:7.1f} ms/step; threads using CPU (share of the wall time): "
              f"{', '.join(share)} of {len(r['threads'])} threads")
    print(f"  NumPy 1500x1500 matrix product: {plain['matmul_before_ms']:.1f} ms before the training steps, "
          f"{plain['matmul_after_ms']:.1f} ms after (the user's BLAS keeps its threads)")


if __name__ == "__main__":
    main()
