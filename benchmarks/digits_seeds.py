"""Accuracy over many seeds, honestly: a config's runs vs the reference PyTorch recipe, side by side.

    python benchmarks/digits_seeds.py --seeds 10-29                    # report: test accuracy, mean ± std
    python benchmarks/digits_seeds.py --seeds 100-109 --split val \\
        --set data.val_fraction=0.1 --set trainer.epochs=30              # tuning: validation accuracy only
    python benchmarks/digits_seeds.py --seeds 10-29 --backend both      # and the PyTorch recipe
    python benchmarks/digits_seeds.py --seeds 100-119 --split val --set data.val_fraction=0.1 \\
        --jobs 2 --threads 1                                             # accuracy only, faster

Each run is a whole process (``python -m cnnframe train CONFIG --set trainer.seed=S --quiet --no-report``),
timed from start to exit, so start-up, the test evaluation and the checkpoints of every epoch count, as they
do for a user.  The PyTorch recipe runs in its own process too (``--backend torch|both``; needs torch),
timed the same way, on the same split of the same seed.  It writes no report, so neither does cnnframe's
run unless ``--report`` asks for ``report.html`` (its plots add 1.5-2 s to a digits run).

Method: choose a recipe by validation accuracy (``--split val``) on seeds kept for tuning, then report test
accuracy on other seeds, never used for choosing.  ``--split val`` prints no test figure at all.

``--jobs N`` runs N seeds at once (give ``--threads 1``): accuracy is the same bits whatever the thread
count and the load, so this is for accuracy tables; the seconds it prints are not run times.  Time with
``--jobs 1`` (the default), which runs one process at a time, alternating the backends.

The reference PyTorch recipe (shared/design digits-recipe): conv16-BN-ReLU, conv16-BN-ReLU, maxpool 2,
conv32-BN-ReLU, maxpool 2, flatten, dropout 0.3, dense 10; a ±1 px random shift per batch; SGD Nesterov
momentum 0.9, weight decay 5e-4 (not on biases and BatchNorm); one-cycle lr, peak 0.1, 30 % warm-up;
label smoothing 0.1; batch 64; 40 epochs on the whole training part (train + validation, 80 % of the data).

Run with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset (they slow current OpenBLAS):
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/digits_seeds.py ...``.
"""
import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_seeds(text):
    """'10-29' or '3,5,7' or '10-14,20' → a sorted list of ints."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            seeds.extend(range(int(a), int(b) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return sorted(set(seeds))


# -- cnnframe: one whole `python -m cnnframe train` process per seed ------------------------------------------------
def run_cnnframe(config, seed, overrides, threads, split, report=False):
    with tempfile.TemporaryDirectory(prefix="cnnframe-seeds-") as tmp:
        cmd = [sys.executable, "-m", "cnnframe", "train", config, "--quiet", "--run-dir", tmp,
               "--set", f"trainer.seed={seed}"] + ([] if report else ["--no-report"])
        for o in overrides:
            cmd += ["--set", o]
        env = dict(os.environ, CNNFRAME_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"seed {seed}: cnnframe train failed (exit {r.returncode}):\n{r.stderr.strip()}")
        (run,) = [d for d in os.listdir(tmp) if d != "latest"]  # the run directory; runs/latest links to it
        with open(os.path.join(tmp, run, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    if split == "val":
        final = summary["final"] or {}
        if final.get("val_acc") is None:
            sys.exit(f"seed {seed}: the run has no validation part (data.val_fraction is 0); tune with a validation "
                     f"part, e.g. --set data.val_fraction=0.1")
        return {"acc": final["val_acc"], "loss": final["val_loss"], "seconds": seconds,
                "epochs": summary["epochs_completed"]}
    return {"acc": summary["test"]["acc"], "loss": summary["test"]["loss"], "seconds": seconds,
            "epochs": summary["epochs_completed"]}


# -- the reference PyTorch recipe (a worker process of this script) ------------------------------------------------
def torch_worker(seed, threads, epochs):
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    d = load_digits()
    X = (d.images.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    model = nn.Sequential(*block(1, 16), *block(16, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 2 * 2, 10))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    batch = 64
    steps = math.ceil(len(tr) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * steps, pct_start=0.3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    rng = np.random.default_rng(seed)
    Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(tr))
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            xb = Xtr[idx]
            dy, dx = rng.integers(-1, 2, size=2)
            xb = torch.roll(xb, shifts=(int(dy), int(dx)), dims=(2, 3))
            if dy == 1:
                xb[:, :, 0, :] = 0
            elif dy == -1:
                xb[:, :, -1, :] = 0
            if dx == 1:
                xb[:, :, :, 0] = 0
            elif dx == -1:
                xb[:, :, :, -1] = 0
            opt.zero_grad()
            loss_fn(model(xb), ytr[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(X[te])).argmax(1).numpy()
    return {"acc": float((pred == y[te]).mean())}


def run_torch(seed, threads, epochs):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", str(seed), "--threads", str(threads),
           "--torch-epochs", str(epochs)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["seconds"] = seconds
    return out, None


# -- driver ---------------------------------------------------------------------------------------------------------
def mean_std(values):
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, s


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "digits.yaml"))
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("10-19"), help="e.g. 10-19 or 3,5,7")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="val: validation accuracy (for choosing a recipe; prints no test figure)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--backend", choices=("cnnframe", "torch", "both"), default="cnnframe")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1,
                   help="seeds run at once (accuracy tables only: with N > 1 the seconds are not run times)")
    p.add_argument("--torch-epochs", type=int, default=40)
    p.add_argument("--report", action="store_true", help="cnnframe runs also write report.html (as train does "
                                                          "by default when matplotlib is installed)")
    p.add_argument("--torch-worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker is not None:
        print(json.dumps(torch_worker(args.torch_worker, args.threads, args.torch_epochs)))
        return
    if args.split == "val" and args.backend != "cnnframe":
        p.error("--split val is for choosing a cnnframe recipe; the PyTorch recipe has no validation part")
    what = "validation accuracy (final epoch)" if args.split == "val" else "test accuracy"
    print(f"{os.path.relpath(args.config)} {' '.join('--set ' + s for s in args.set)}".rstrip()
          + ("" if args.report else "  (cnnframe runs with --no-report)"))
    print(f"{what}, seeds {args.seeds[0]}..{args.seeds[-1]} ({len(args.seeds)} seeds), {args.threads} threads; "
          + ("seconds = one whole process" if args.jobs == 1 else
             f"{args.jobs} runs at once: seconds are NOT run times"))
    cols = []
    if args.backend in ("cnnframe", "both"):
        cols.append("cnnframe")
    if args.backend in ("torch", "both"):
        cols.append("torch")
    print("seed  " + "  ".join(f"{c + ' acc':>13} {'s':>6}" for c in cols))
    results = {c: [] for c in cols}

    def one_seed(seed):
        # Alternate which backend runs first, so a slow spell of the shared machine hits both alike.
        order = cols if seed % 2 == 0 else cols[::-1]
        got = {}
        for c in order:
            if c == "cnnframe":
                got[c] = run_cnnframe(args.config, seed, args.set, args.threads, args.split, args.report)
            else:
                res, err = run_torch(seed, args.threads, args.torch_epochs)
                if res is None:
                    sys.exit(f"the PyTorch recipe failed: {err}")
                got[c] = res
        return got

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for seed, got in zip(args.seeds, pool.map(one_seed, args.seeds)):  # rows in seed order
            row = f"{seed:>4}  "
            for c in cols:
                results[c].append(got[c])
                row += f"{100 * got[c]['acc']:>12.2f}% {got[c]['seconds']:>6.2f}  "
            print(row.rstrip(), flush=True)
    print("-" * (6 + 23 * len(cols)))
    for c in cols:
        acc_m, acc_s = mean_std([100 * r["acc"] for r in results[c]])
        sec_m, sec_s = mean_std([r["seconds"] for r in results[c]])
        lo, hi = min(100 * r["acc"] for r in results[c]), max(100 * r["acc"] for r in results[c])
        loss = (f"; loss {statistics.fmean(r['loss'] for r in results[c]):.4f}"
                if all(r.get("loss") is not None for r in results[c]) else "")
        print(f"{c:<9} {what}: {acc_m:.2f} ± {acc_s:.2f} % (range {lo:.2f}-{hi:.2f}){loss}; "
              f"seconds per run {sec_m:.2f} ± {sec_s:.2f}")


if __name__ == "__main__":
    main()
