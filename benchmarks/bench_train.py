"""One training epoch of a config's model: cnnframe vs the same architecture in PyTorch (when importable).

    python benchmarks/bench_train.py [--config configs/digits.yaml] [--threads 2] [--epochs 5]

Each backend runs in its own process with the same thread count (OpenMP runtimes and BLAS pools of
two libraries in one process fight).  Both do the same work per epoch: the training part of the
config's split, batches from the same shuffled partition, the same random shifts (NumPy), forward,
loss (softmax cross-entropy with the config's label smoothing), backward and an SGD step with the
config's momentum / Nesterov / weight decay and a per-step learning rate.  Validation is not timed.
After one warm-up epoch, ``--epochs`` epochs are timed; the best epoch is reported (the least
disturbed by other work on a shared machine), with the median beside it.  ratio = PyTorch / cnnframe:
above 1 means cnnframe's epoch is faster.
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


# -- shared by both workers (NumPy only, so the torch worker never loads cnnframe's OpenMP runtime) -----------
def shift_batch(x, k, rng):
    """Random shift of up to ±k pixels per sample, zero fill (same draws as cnnframe.data.random_shift)."""
    if k <= 0:
        return x
    n, c, h, w = x.shape
    dy = rng.integers(-k, k + 1, size=n)
    dx = rng.integers(-k, k + 1, size=n)
    padded = np.zeros((n, c, h + 2 * k, w + 2 * k), dtype=x.dtype)
    padded[:, :, k:k + h, k:k + w] = x
    out = np.empty_like(x)
    for a in range(-k, k + 1):
        for b in range(-k, k + 1):
            sel = np.flatnonzero((dy == a) & (dx == b))
            if sel.size:
                out[sel] = padded[sel, :, k - a:k - a + h, k - b:k - b + w]
    return out


def read_config(path):
    """The resolved config, via cnnframe in a short-lived child so this process stays library-free."""
    code = ("import json, sys; from cnnframe.config import load_config; "
            "print(json.dumps(load_config(sys.argv[1])))")
    r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr.strip())
    return json.loads(r.stdout)


def digits_train(cfg):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if cfg["data"]["dataset"] != "digits":
        sys.exit("bench_train.py supports dataset: digits only")
    d = load_digits()
    X = (d.images.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    seed = cfg["trainer"]["seed"] if cfg["data"]["seed"] is None else cfg["data"]["seed"]
    idx = np.arange(len(y))
    tr, _ = train_test_split(idx, test_size=cfg["data"]["test_size"], stratify=y, random_state=seed)
    if cfg["data"]["val_fraction"] > 0:
        tr, _ = train_test_split(tr, test_size=cfg["data"]["val_fraction"], stratify=y[tr], random_state=seed)
    return X[tr], y[tr]


def epoch_plan(n, batch_size, epoch):
    rng = np.random.default_rng([epoch, 12345])
    steps = max(1, math.ceil(n / batch_size))
    return rng, np.array_split(rng.permutation(n), steps)


def onecycle_like(cfg, epochs):
    """A cheap stand-in lr curve (the cost per step is what matters, not the values)."""
    peak = cfg["optimizer"]["lr"]
    return lambda t: peak * (0.5 + 0.5 * math.cos(math.pi * min(t / epochs, 1.0)))


# -- workers ---------------------------------------------------------------------------------------------------------
def worker_cnnframe(cfg, threads, epochs):
    import cnnframe
    from cnnframe.config import build_layers, build_loss, build_optimizer

    cnnframe.set_num_threads(threads)
    X, y = digits_train(cfg)
    model = cnnframe.Sequential(build_layers(cfg), input_shape=X.shape[1:])
    model.initialize(0)
    loss = build_loss(cfg)
    opt = build_optimizer(cfg, model.parameters())
    lr_at = onecycle_like(cfg, epochs + 1)
    shift = cfg["data"]["augment"]["shift"]
    bs = cfg["trainer"]["batch_size"]
    def one_epoch(e):  # Trainer.train_epoch without the progress bar and bookkeeping
        rng, parts = epoch_plan(len(y), bs, e)
        model.reseed(e)
        model.train()
        for i, idx in enumerate(parts):
            opt.lr = lr_at(e + i / len(parts))
            xb = shift_batch(X[idx], shift, rng)
            opt.zero_grad()
            out = model.forward(xb)
            loss.forward(out, y[idx])
            model.backward(loss.backward(), input_grad=False)
            opt.step()

    return run_epochs(one_epoch, epochs)


def worker_torch(cfg, threads, epochs):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    X, y = digits_train(cfg)
    layers, shape = [], tuple(X.shape[1:])
    for spec in cfg["model"]["layers"]:
        t = spec["type"]
        if t == "conv2d":
            m = nn.Conv2d(shape[0], spec["out_channels"], spec["kernel_size"], stride=spec.get("stride", 1),
                          padding=spec.get("padding", 0), dilation=spec.get("dilation", 1), bias=spec.get("bias", True))
        elif t == "batchnorm2d":
            m = nn.BatchNorm2d(shape[0], eps=spec.get("eps", 1e-5), momentum=spec.get("momentum", 0.1))
        elif t == "batchnorm1d":
            m = nn.BatchNorm1d(shape[0], eps=spec.get("eps", 1e-5), momentum=spec.get("momentum", 0.1))
        elif t == "relu":
            m = nn.ReLU()
        elif t == "maxpool2d":
            m = nn.MaxPool2d(spec["kernel_size"], stride=spec.get("stride"), padding=spec.get("padding", 0))
        elif t == "avgpool2d":
            m = nn.AvgPool2d(spec["kernel_size"], stride=spec.get("stride"), padding=spec.get("padding", 0))
        elif t == "flatten":
            m = nn.Flatten()
        elif t == "dropout":
            m = nn.Dropout(spec.get("p", 0.5))
        elif t == "dense":
            m = nn.Linear(int(np.prod(shape)), spec["out_features"], bias=spec.get("bias", True))
        else:
            sys.exit(f"bench_train.py: no PyTorch equivalent for layer type {t!r}")
        layers.append(m)
        with torch.no_grad():
            shape = tuple(m(torch.zeros((2,) + shape)).shape[1:]) if t != "batchnorm1d" else shape
    model = nn.Sequential(*layers)
    o = cfg["optimizer"]
    if o["type"] != "sgd":
        sys.exit("bench_train.py compares SGD only")
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": o["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg["loss"].get("label_smoothing", 0.0))
    lr_at = onecycle_like(cfg, epochs + 1)
    shift = cfg["data"]["augment"]["shift"]
    bs = cfg["trainer"]["batch_size"]
    yt = torch.from_numpy(y)

    def one_epoch(e):
        rng, parts = epoch_plan(len(y), bs, e)
        model.train()
        for i, idx in enumerate(parts):
            for g in opt.param_groups:
                g["lr"] = lr_at(e + i / len(parts))
            xb = torch.from_numpy(shift_batch(X[idx], shift, rng))
            opt.zero_grad(set_to_none=False)
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()

    return run_epochs(one_epoch, epochs)


def run_epochs(one_epoch, epochs):
    one_epoch(0)  # warm-up: allocations, thread pools
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        one_epoch(e)
        times.append(time.perf_counter() - t0)
    return {"best_ms": 1000 * min(times), "median_ms": 1000 * statistics.median(times)}


# -- driver -------------------------------------------------------------------------------------------------------------
def run_worker(backend, args, cfg):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), CNNFRAME_NUM_THREADS=str(args.threads),
               CNNFRAME_DYNAMIC_THREADS="0")  # a fixed thread count, as for torch
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--cfg-json", json.dumps(cfg),
           "--threads", str(args.threads), "--epochs", str(args.epochs)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}"
    return json.loads(r.stdout.strip().splitlines()[-1]), None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "digits.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per backend (after one warm-up)")
    p.add_argument("--worker", choices=("cnnframe", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--cfg-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        cfg = json.loads(args.cfg_json)
        fn = worker_cnnframe if args.worker == "cnnframe" else worker_torch
        print(json.dumps(fn(cfg, args.threads, args.epochs)))
        return
    cfg = read_config(args.config)
    n = len(digits_train(cfg)[1])
    print(f"one training epoch of {os.path.relpath(args.config)} ({n} samples, batch {cfg['trainer']['batch_size']}, "
          f"{args.threads} threads; best of {args.epochs} epochs, median in brackets)")
    results = {}
    for backend in ("cnnframe", "torch"):
        res, err = run_worker(backend, args, cfg)
        if res is None:
            print(f"  {backend:<9} unavailable: {err}")
            continue
        results[backend] = res
        print(f"  {backend:<9} {res['best_ms']:8.1f} ms/epoch  ({res['median_ms']:.1f})")
    if len(results) == 2:
        ratio = results["torch"]["best_ms"] / results["cnnframe"]["best_ms"]
        med = results["torch"]["median_ms"] / results["cnnframe"]["median_ms"]
        print(f"  ratio torch / cnnframe: {ratio:.2f} ({med:.2f} by medians); > 1 means cnnframe is faster")


if __name__ == "__main__":
    main()
