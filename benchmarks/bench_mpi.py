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

Models: ``digits`` is configs/digits.yaml; ``cifar`` is configs/cifar-size.yaml when it exists, else the
model of that size (3x32x32 inputs, 1,024 training images, batch 64; conv widths 32, 32, pool, 64, 64,
pool, 128, 128, each with BatchNorm and ReLU; global average pool; dense 10) on random data in an .npz.

Scaling efficiency = T(1 process x 1 thread) / (2 x T(2 processes x 1 thread)); the threads-vs-processes
ratio = T(1 x 2) / T(2 x 1) (above 1: two processes beat two threads on the same two cores).
``MPIR_CVAR_POLLS_BEFORE_YIELD=1`` (MPICH yields the core while polling) is timed as a variant.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")

CIFAR_MODEL = """\
data: {dataset: npz, path: PATH, normalize: standardize, test_size: 0.2, val_fraction: 0.0}
model:
  layers:
    - {type: conv2d, out_channels: 32, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: conv2d, out_channels: 32, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {type: conv2d, out_channels: 64, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: conv2d, out_channels: 64, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {type: conv2d, out_channels: 128, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: conv2d, out_channels: 128, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: globalavgpool2d}
    - {type: dense, out_features: 10}
loss: {type: softmax_cross_entropy}
optimizer: {type: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5e-4}
schedule: {type: cosine}
trainer:
  epochs: 5
  batch_size: 64
  early_stopping: {monitor: train_loss}
  checkpoint: {monitor: train_loss}
"""

#: name, processes, threads per process, extra environment
SETUPS = (
    ("1 x 2 threads", 1, 2, {}),
    ("2 x 1 thread", 2, 1, {}),
    ("2 x 1, yield", 2, 1, {"MPIR_CVAR_POLLS_BEFORE_YIELD": "1"}),
    ("1 x 1 thread", 1, 1, {}),
)


def cifar_config(directory):
    cfg = os.path.join(ROOT, "configs", "cifar-size.yaml")
    if os.path.exists(cfg):
        return cfg
    rng = np.random.default_rng(0)
    path = os.path.join(directory, "cifar-size.npz")
    np.savez(path, X=rng.standard_normal((1280, 3, 32, 32)).astype(np.float32), y=np.arange(1280) % 10)
    cfg = os.path.join(directory, "cifar-size.yaml")
    with open(cfg, "w") as f:
        f.write(CIFAR_MODEL.replace("PATH", path))
    return cfg


# -- one run (every process of it) -------------------------------------------------------------------------------
def worker(config_path, threads, epochs):
    from cnnframe import config, distributed
    from cnnframe.trainer import Trainer

    group = distributed.group_from_environment()
    setup = config.load(config_path, [f"trainer.threads={threads}"])
    trainer = Trainer.from_config(setup, quiet=True, create_run_dir=False, group=group)
    trainer.join()
    grad_size = sum(p.grad.size for p in trainer.optimizer.params.values())
    spent = {"gradients": 0.0, "statistics": 0.0}
    if group.size > 1:
        plain_sum = group.sum

        def timed_sum(a):
            t = time.perf_counter()
            plain_sum(a)
            spent["gradients" if a.size == grad_size else "statistics"] += time.perf_counter() - t
            return a

        group.sum = timed_sum
    trainer.train_epoch(0)  # warm-up
    rows = []
    for e in range(1, epochs + 1):
        spent.update(gradients=0.0, statistics=0.0)
        t = time.perf_counter()
        trainer.train_epoch(e)
        rows.append({"seconds": time.perf_counter() - t, **spent})
    result = {"epochs": rows, "gradient_values": int(grad_size), "dtype": setup.config["trainer"]["dtype"],
              "steps": -(-len(trainer.data.train[1]) // trainer.batch_size)}
    if group.size > 1:
        group.sum = plain_sum
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
    ap.add_argument("--models", nargs="+", default=["digits", "cifar"], choices=["digits", "cifar"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    raw = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            path = os.path.join(ROOT, "configs", "digits.yaml") if model == "digits" else cifar_config(tmp)
            results = {name: [] for name, *_ in SETUPS}
            for r in range(args.rounds):
                for name, procs, threads, env in SETUPS if r % 2 == 0 else SETUPS[::-1]:
                    results[name].append(run(path, procs, threads, env, args.epochs))
            raw[model] = results
            report(model, path, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


def report(model, path, results):
    epochs = {name: [e for res in runs for e in res["epochs"]] for name, runs in results.items()}
    best = {name: min(e["seconds"] for e in rows) for name, rows in epochs.items()}
    first = results["2 x 1 thread"][0]
    print(f"\n{model} ({os.path.relpath(path, ROOT) if path.startswith(ROOT) else 'cifar-size model, random data'}): "
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
          f"yield T(2x1) / T(2x1, yield) = {best['2 x 1 thread'] / best['2 x 1, yield']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
