"""One training epoch of a config's model: cnnframe vs the same architecture in PyTorch (when importable).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train.py \\
        [--config configs/digits.yaml --config configs/cifar-size.yaml] [--threads 1 2] [--rounds 5]

Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (as above): some machines set them, and
they make a current OpenBLAS slower.  By default it runs configs/digits.yaml, configs/cifar-size.yaml
and configs/resnet8-cifar-size.yaml (residual blocks) at 1 and 2 threads.

Each backend and thread count runs in its own worker process (OpenMP runtimes and BLAS pools of two
libraries in one process fight).  The workers stay alive and take turns: every round asks each of
them for one epoch, one after the other, so a slow spell on a shared machine hits all of them; after
one warm-up epoch each, ``--rounds`` epochs are timed and the best (the least disturbed) counts, with
the median beside it.  Both backends do the same work per epoch: the config's training part (saved
once by cnnframe, so the split is the config's), batches from the same shuffled partition, the same
random shifts when the config augments (cnnframe through ``cnnframe.data.random_shift``, PyTorch
through the same draws in NumPy), forward, softmax cross-entropy with the config's label smoothing,
backward, and an SGD step with the config's momentum / Nesterov / weight decay (not on biases and
BatchNorm parameters) and a per-step learning rate.  Peak memory is each worker's ru_maxrss (the
libraries' own code included).  ratio = PyTorch / cnnframe: above 1 means cnnframe's epoch is faster.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
CONFIGS = [os.path.join(ROOT, "configs", name)
           for name in ("digits.yaml", "cifar-size.yaml", "resnet8-cifar-size.yaml")]
PAUSE = 0.2  # seconds between two workers' epochs, so one's spinning threads do not meet the next


# -- shared by both workers (NumPy only, so the torch worker never loads cnnframe's OpenMP runtime) -----------
def shift_batch(x, k, rng):
    """Random shift of up to ±k pixels per sample, zero fill (the draws of cnnframe.data.random_shift)."""
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


def epoch_plan(n, batch_size, epoch):
    rng = np.random.default_rng([epoch, 12345])
    steps = max(1, math.ceil(n / batch_size))
    return rng, np.array_split(rng.permutation(n), steps)


def lr_curve(cfg):
    """A cheap stand-in learning-rate curve over 100 epochs (the cost per step matters, not the values)."""
    peak = cfg["optimizer"]["lr"]
    return lambda t: peak * (0.5 + 0.5 * math.cos(math.pi * min(t / 100.0, 1.0)))


def prepare(config_path, out_path):
    """Resolve the config and save its training part, via cnnframe in a short-lived child process."""
    code = ("import json, sys, numpy as np; from cnnframe import config; setup = config.load(sys.argv[1]); "
            "d = setup.load_data(); np.savez(sys.argv[2], X=d.train[0], y=d.train[1]); "
            "print(json.dumps(setup.config))")
    r = subprocess.run([sys.executable, "-c", code, config_path, out_path], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr.strip())
    return json.loads(r.stdout)


# -- workers ---------------------------------------------------------------------------------------------------------
def cnnframe_epoch(cfg, X, y, threads):
    import cnnframe
    from cnnframe.config import build_layers, build_loss, build_optimizer
    from cnnframe.data import random_shift

    cnnframe.set_num_threads(threads)
    model = cnnframe.Sequential(build_layers(cfg), input_shape=X.shape[1:])
    model.initialize(0)
    loss = build_loss(cfg)
    opt = build_optimizer(cfg, model.parameters())
    lr_at = lr_curve(cfg)
    shift, bs = cfg["data"]["augment"]["shift"], cfg["trainer"]["batch_size"]

    def one_epoch(e):  # Trainer.train_epoch without the progress bar and bookkeeping
        rng, parts = epoch_plan(len(y), bs, e)
        model.reseed(e)
        model.train()
        for i, idx in enumerate(parts):
            opt.lr = lr_at(e + i / len(parts))
            xb = random_shift(X[idx], shift, rng) if shift else X[idx]
            opt.zero_grad()
            out = model.forward(xb)
            loss.forward(out, y[idx])
            model.backward(loss.backward(), input_grad=False)
            opt.step()

    return one_epoch


def torch_layers(specs, shape):
    """The PyTorch modules of a list of cnnframe layer configs (blocks included) for per-sample input
    ``shape``, and the per-sample output shape."""
    import torch
    from torch import nn

    class Residual(nn.Module):  # y = a(F(x) + S(x)), S the identity when there is no shortcut
        def __init__(self, body, shortcut, activation):
            super().__init__()
            self.body, self.shortcut, self.activation = body, shortcut, activation

        def forward(self, x):
            return self.activation(self.body(x) + self.shortcut(x))

    class Concat(nn.Module):
        def __init__(self, branches):
            super().__init__()
            self.branches = nn.ModuleList(branches)

        def forward(self, x):
            return torch.cat([b(x) for b in self.branches], dim=1)

    def out_shape(m, shape):
        with torch.no_grad():
            return tuple(m.eval()(torch.zeros((2,) + shape)).shape[1:])

    layers = []
    for spec in specs:
        t = spec["type"]
        if t == "conv2d":
            m = nn.Conv2d(shape[0], spec["out_channels"], spec["kernel_size"], stride=spec.get("stride", 1),
                          padding=spec.get("padding", 0), dilation=spec.get("dilation", 1),
                          groups=spec.get("groups", 1), bias=spec.get("bias", True))
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
        elif t == "globalavgpool2d":
            m = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif t == "flatten":
            m = nn.Flatten()
        elif t == "dropout":
            m = nn.Dropout(spec.get("p", 0.5))
        elif t == "dense":
            m = nn.Linear(int(np.prod(shape)), spec["out_features"], bias=spec.get("bias", True))
        elif t == "residual":
            body, _ = torch_layers(spec["layers"], shape)
            short = nn.Identity() if not spec.get("shortcut") else torch_layers(spec["shortcut"], shape)[0]
            act = spec.get("activation")
            if act not in (None, "relu"):
                sys.exit(f"bench_train.py: no PyTorch equivalent for residual activation {act!r}")
            m = Residual(body, short, nn.ReLU() if act == "relu" else nn.Identity())
        elif t == "concat":
            m = Concat([torch_layers(b, shape)[0] if b else nn.Identity() for b in spec["branches"]])
        else:
            sys.exit(f"bench_train.py: no PyTorch equivalent for layer type {t!r}")
        layers.append(m)
        shape = out_shape(m, shape)
    return nn.Sequential(*layers), shape


def torch_model(cfg, shape):
    return torch_layers(cfg["model"]["layers"], shape)[0]


def torch_epoch(cfg, X, y, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    model = torch_model(cfg, tuple(X.shape[1:]))
    o = cfg["optimizer"]
    if o["type"] != "sgd":
        sys.exit("bench_train.py compares SGD only")
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": o["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg["loss"].get("label_smoothing", 0.0))
    lr_at = lr_curve(cfg)
    shift, bs = cfg["data"]["augment"]["shift"], cfg["trainer"]["batch_size"]
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

    return one_epoch


def serve(backend, cfg, data_path, threads):
    """Worker loop: one line in ("epoch" or "stats"), one JSON line out."""
    with np.load(data_path) as d:
        X, y = d["X"], d["y"]
    one_epoch = (cnnframe_epoch if backend == "cnnframe" else torch_epoch)(cfg, X, y, threads)
    one_epoch(0)  # warm-up: allocations, thread pools
    epoch = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "epoch":
            epoch += 1
            t0 = time.perf_counter()
            one_epoch(epoch)
            print(json.dumps({"ms": 1000 * (time.perf_counter() - t0)}), flush=True)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            print(json.dumps({"peak_mb": peak / 1024}), flush=True)
            return


# -- driver -------------------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, backend, cfg, data_path, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), CNNFRAME_NUM_THREADS=str(threads),
                   CNNFRAME_DYNAMIC_THREADS="0")  # a fixed thread count, as for torch
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", backend, "--cfg-json", json.dumps(cfg),
               "--data", data_path, "--threads", str(threads)]
        self.name, self.threads, self.times, self.error = backend, threads, [], None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self._reply()

    def _reply(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            self.error = err[-1] if err else f"exit status {self.proc.wait()}"
            return None
        return json.loads(line)

    def ask(self, command):
        if self.error:
            return None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def epoch(self):
        r = self.ask("epoch")
        if r is not None:
            self.times.append(r["ms"])

    def finish(self):
        r = self.ask("stats")
        self.proc.wait()
        return None if r is None else r["peak_mb"]


def bench_config(path, threads_list, rounds, backends):
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "train.npz")
        cfg = prepare(path, data_path)
        n = len(np.load(data_path)["y"])
        print(f"{os.path.relpath(path)}: one epoch of {n} training samples, batch {cfg['trainer']['batch_size']}; "
              f"best of {rounds} alternating rounds (median in brackets)")
        workers = {(b, t): Worker(b, cfg, data_path, t) for t in threads_list for b in backends}
        for r in range(rounds):
            order = list(workers.values())
            for w in order if r % 2 == 0 else order[::-1]:
                w.epoch()
                time.sleep(PAUSE)
        peaks = {k: w.finish() for k, w in workers.items()}
    head = f"  {'threads':>7}  {'cnnframe ms':>18}  {'PyTorch ms':>18}  {'PyTorch/cnnframe':>16}  {'peak MB cnnframe / PyTorch':>26}"
    print(head)
    best = {}
    for t in threads_list:
        cells = []
        for b in backends:
            w = workers[(b, t)]
            if w.error or not w.times:
                cells.append(f"{'unavailable':>18}")
                continue
            best[(b, t)] = min(w.times)
            cells.append(f"{min(w.times):8.1f} ({statistics.median(w.times):7.1f})")
        ratio = ""
        if ("cnnframe", t) in best and ("torch", t) in best:
            med = statistics.median(workers[("torch", t)].times) / statistics.median(workers[("cnnframe", t)].times)
            ratio = f"{best[('torch', t)] / best[('cnnframe', t)]:5.2f} ({med:4.2f})"
        mem = " / ".join("-" if peaks[(b, t)] is None else f"{peaks[(b, t)]:.0f}" for b in backends)
        print(f"  {t:>7}  {cells[0]:>18}  {cells[1] if len(cells) > 1 else '':>18}  {ratio:>16}  {mem:>26}")
    for b, label in (("cnnframe", "cnnframe"), ("torch", "PyTorch")):
        ts = sorted(t for (bb, t) in best if bb == b)
        if len(ts) > 1:
            print(f"  {label} {ts[-1]}-thread speedup over 1 thread: {best[(b, ts[0])] / best[(b, ts[-1])]:.2f}x")
    for w in workers.values():
        if w.error:
            print(f"  {w.name} ({w.threads} threads) unavailable: {w.error}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", help="config to time (repeatable; default: digits and cifar-size)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5, help="timed epochs per worker (after one warm-up)")
    p.add_argument("--serve", choices=("cnnframe", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--cfg-json", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, json.loads(args.cfg_json), args.data, args.threads[0])
        return
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var} is set; run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` for "
                  f"figures comparable with the README", file=sys.stderr)
    for path in args.config or CONFIGS:
        bench_config(path, args.threads, args.rounds, ("cnnframe", "torch"))


if __name__ == "__main__":
    main()
