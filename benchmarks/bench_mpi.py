"""Data-parallel training on one machine: 1 process x 2 threads against 2 processes x 1 thread (MPI).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_mpi.py [--models digits cifar]
        [--rounds 3] [--epochs 2]

Each configuration runs in its own process(es), the configurations alternating round by round; every run
times ``--epochs`` training epochs (``Trainer.train_epoch``: batches, forward, loss, backward, the sums
over processes, the optimizer step; no validation) after one warm-up epoch.  Reported per configuration:
the best and the median epoch over all rounds (the machine is shared: best-of is the least disturbed).

For the 2-process runs the root also reports, per epoch, the time spent in the sums over processes
(``MPIGroup.sum``) -- the gradient buffer, and the small BatchNorm statistics and batch-loss sums -- which
includes waiting for the slower process; and, measured alone after a barrier, the median time of one sum
of the gradient buffer (the pure communication cost) and of a 64-value sum (the latency).

Models: ``digits`` is configs/digits.yaml; ``cifar`` is configs/cifar-size.yaml (3x32x32 synthetic images,
1,024 training images, batch 64; conv widths 32, 32, pool, 64, 64, pool, 128, 128, each with BatchNorm and
ReLU; global average pool; dense 10).

Scaling efficiency = T(1 process x 1 thread) / (2 x T(2 processes x 1 thread)); the threads-vs-processes
ratio = T(1 x 2) / T(2 x 1) (above 1: two processes beat two threads on the same two cores).
cnnframe sets ``MPIR_CVAR_POLLS_BEFORE_YIELD=1`` (a waiting rank yields its core after every poll);
MPICH's own default, 1000 polls before yielding, is timed as the variant "spin".
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"digits": os.path.join(ROOT, "configs", "digits.yaml"),
          "cifar": os.path.join(ROOT, "configs", "cifar-size.yaml")}
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


#: name, processes, threads per process, extra environment
SETUPS = (
    ("1 x 2 threads", 1, 2, {}),
    ("2 x 1 thread", 2, 1, {}),
    ("2 x 1, spin", 2, 1, {"MPIR_CVAR_POLLS_BEFORE_YIELD": "1000"}),
    ("1 x 1 thread", 1, 1, {}),
)


# -- one run (every process of it) -------------------------------------------------------------------------------
def worker(config_path, threads, epochs):
    from cnnframe import config, distributed
    from cnnframe.trainer import Trainer

    group = distributed.group_from_environment()
    setup = config.load(config_path, [f"trainer.threads={threads}"])
    trainer = Trainer.from_config(setup, quiet=True, create_run_dir=False, group=group)
    trainer.join()
    grad_size = sum(p.grad.size for p in trainer.optimizer.params.values())
    spent = {"gradients": 0.0, "statistics": 0.0, "exchanges": 0, "statistics_bytes": 0}
    if group.size > 1:  # time the gradient sums (group.sum) and the statistics and loss exchanges (group.gather)
        plain_sum, plain_gather = group.sum, group.gather

        def timed(fn, key):
            def call(a):
                t = time.perf_counter()
                out = fn(a)
                spent[key] += time.perf_counter() - t
                spent["exchanges"] += 1
                if key == "statistics":
                    spent["statistics_bytes"] += a.nbytes
                return out
            return call

        group.sum, group.gather = timed(plain_sum, "gradients"), timed(plain_gather, "statistics")
    trainer.train_epoch(0)  # warm-up
    rows = []
    for e in range(1, epochs + 1):
        spent.update(gradients=0.0, statistics=0.0, exchanges=0, statistics_bytes=0)
        t = time.perf_counter()
        trainer.train_epoch(e)
        rows.append({"seconds": time.perf_counter() - t, **spent})
    result = {"epochs": rows, "gradient_values": int(grad_size), "dtype": setup.config["trainer"]["dtype"],
              "steps": -(-len(trainer.data.train[1]) // trainer.batch_size)}
    if group.size > 1:
        group.sum, group.gather = plain_sum, plain_gather
        flat = next(iter(trainer._flat_grads.buffers.values())).copy()
        result["sum_gradients_ms"] = _median_ms(group, flat)
        result["sum_64_values_us"] = 1000 * _median_ms(group, np.ones(64, flat.dtype))
    if group.is_root:
        print(json.dumps(result), flush=True)


def _median_ms(group, a, calls=40):
    times = []
    for _ in range(calls):
        group.comm.Barrier()
        t = time.perf_counter()
        group.sum(a.copy())
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


# -- the driver --------------------------------------------------------------------------------------------------
def run(config_path, processes, threads, env_extra, epochs):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config_path, str(threads), str(epochs)]
    if processes > 1:
        cmd = [MPIEXEC, "-n", str(processes), *cmd]
    env = dict(os.environ, **env_extra)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits", "cifar"], choices=list(MODELS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--from-json", metavar="PATH", help="report the raw results of an earlier run (runs nothing)")
    ap.add_argument("--step-ms", type=float, help="the scaling estimate's compute per step of 64 samples "
                                                  "(default: the best 1 x 2 threads epoch measured)")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            for model, results in json.load(f).items():
                report(model, MODELS[model], results, args.step_ms)
        return
    raw = {}
    for model in args.models:
        results = {name: [] for name, *_ in SETUPS}
        for r in range(args.rounds):
            for name, procs, threads, env in SETUPS if r % 2 == 0 else SETUPS[::-1]:
                results[name].append(run(MODELS[model], procs, threads, env, args.epochs))
        raw[model] = results
        report(model, MODELS[model], results, args.step_ms)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


def report(model, path, results, step_ms=None):
    epochs = {name: [e for res in runs for e in res["epochs"]] for name, runs in results.items()}
    best = {name: min(e["seconds"] for e in rows) for name, rows in epochs.items()}
    first = results["2 x 1 thread"][0]
    print(f"\n{model} ({os.path.relpath(path, ROOT)}): "
          f"{first['steps']} steps per epoch, gradient {first['gradient_values']:,} values ({first['dtype']})")
    print(f"{'setup':16s} {'best epoch':>11s} {'median':>8s} {'spread':>7s}   in sums per epoch (share of the best epoch)")
    for name, rows in epochs.items():
        secs = sorted(e["seconds"] for e in rows)
        med = statistics.median(secs)
        line = f"{name:16s} {best[name]:10.3f}s {med:7.3f}s {100 * (secs[-1] - secs[0]) / secs[0]:6.0f}%"
        if rows[0].get("gradients") or rows[0].get("statistics"):
            top = min(rows, key=lambda e: e["seconds"])
            g, s = top["gradients"], top["statistics"]
            line += (f"   gradients {1000 * g:6.1f} ms, statistics {1000 * s:6.1f} ms "
                     f"({100 * (g + s) / top['seconds']:.1f}%)")
        print(line)
    two = results["2 x 1 thread"]
    print(f"one sum of the gradient buffer alone: {statistics.median(r['sum_gradients_ms'] for r in two):.3f} ms "
          f"(median); one 64-value sum: {statistics.median(r['sum_64_values_us'] for r in two):.1f} us; "
          f"per step {1000 * best['2 x 1 thread'] / first['steps']:.2f} ms")
    print(f"scaling efficiency T(1x1) / (2 T(2x1)) = {best['1 x 1 thread'] / (2 * best['2 x 1 thread']):.2f}; "
          f"threads vs processes T(1x2) / T(2x1) = {best['1 x 2 threads'] / best['2 x 1 thread']:.2f}; "
          f"yielding T(2x1, spin) / T(2x1) = {best['2 x 1, spin'] / best['2 x 1 thread']:.2f}")
    e = two[0]["epochs"][0]
    estimate(step_ms / 1000 if step_ms else best["1 x 2 threads"] / first["steps"], first["gradient_values"] * (4 if first["dtype"] == "float32" else 8),
             e["exchanges"] / first["steps"], e["statistics_bytes"] / max(1, e["exchanges"] - first["steps"]))


#: link speed (Gb/s) and the latency of one message: TCP over Ethernet, RDMA (InfiniBand, RoCE)
LINKS = ((10, 25e-6), (25, 25e-6), (100, 3e-6))


def estimate(step, grad_bytes, exchanges, row_bytes, machines=(8, 32, 128), batches=(64, 256), faster=(1, 16)):
    """Projected efficiency on N machines, each computing ``b`` samples per step as fast as this one
    (``step`` seconds per 64 samples) or ``faster`` times faster (a node with 16x the cores).

    The gradient sum costs 2(N-1)/N·bytes/bandwidth + 2(N-1)·latency (the slice exchange and gather
    of ``MPIGroup.sum``, like a ring allreduce); each other exchange ⌈log2 N⌉·latency +
    (N-1)·row/bandwidth (a recursive-doubling allgather).  Without overlap a step is compute + every
    exchange; with gradient bucketing the gradient sum hides behind the backward pass (2/3 of the
    compute): forward + max(backward, gradient sum) + statistics."""
    print(f"estimate: {1000 * step:.1f} ms per step of 64 samples on this machine, gradient {grad_bytes / 1e6:.2f} MB, "
          f"{exchanges:.0f} exchanges per step (1 gradient sum + statistics/loss of {row_bytes:.0f} bytes per process)")
    print(f"{'speed':>5s} {'machines':>8s} {'batch/machine':>13s} " + " ".join(f"{f'{g} Gb/s':>24s}" for g, _ in LINKS))
    print(f"{'':5s} {'':8s} {'':13s} " + " ".join(f"{'sum ms  eff  overlapped':>24s}" for _ in LINKS))
    for speed in faster:
        for b in batches:
            compute = step * b / 64 / speed
            for n in machines:
                cells = []
                for gbps, latency in LINKS:
                    bandwidth = gbps * 1e9 / 8
                    grad = 2 * (n - 1) / n * grad_bytes / bandwidth + 2 * (n - 1) * latency
                    stats = (exchanges - 1) * (math.ceil(math.log2(n)) * latency + (n - 1) * row_bytes / bandwidth)
                    plain = compute / (compute + grad + stats)
                    overlapped = compute / (compute / 3 + max(2 * compute / 3, grad) + stats)
                    cells.append(f"{1000 * (grad + stats):8.2f} {100 * plain:4.0f}% {100 * overlapped:9.0f}%")
                print(f"{f'{speed}x':>5s} {n:8d} {b:13d} " + " ".join(f"{c:>24s}" for c in cells))

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
