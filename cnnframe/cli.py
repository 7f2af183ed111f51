"""Command line: ``python -m cnnframe {train,validate,evaluate,predict,gradcheck,info}``.

Exit status: 0 success; 1 training stopped by a non-finite loss, or a failed gradient check;
2 a user error (bad config, data, paths, arguments: one message on stderr, no traceback);
130 interrupted with Ctrl-C (after saving the last completed epoch).
Set ``CNNFRAME_DEBUG=1`` to see the traceback of a user error.
"""
import argparse
import os
import sys

USAGE_ERROR = 2
INTERRUPTED = 130


class UserError(Exception):
    """A problem with the command's inputs, reported as one line with exit status 2."""


def _user_errors():
    from cnnframe.config import ConfigError
    from cnnframe.data import DataError

    return (UserError, ConfigError, DataError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, ValueError, KeyError)


def _message(e):
    from cnnframe.data import DataError

    if isinstance(e, DataError) and e.key:
        return f"{e.key}: {e}"
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) and e.filename:
        return f"{e.strerror or e}: {e.filename}" if e.strerror else str(e)
    return str(e)


# -- train ---------------------------------------------------------------------------------------------
def cmd_train(args):
    from cnnframe.config import dump_config, load_config
    from cnnframe.trainer import Trainer, TrainingDiverged, TrainingInterrupted

    out = sys.stdout
    if args.resume:
        if not os.path.isdir(args.resume):
            raise UserError(f"--resume: run directory not found: {args.resume}")
        cfg_path = args.config or os.path.join(args.resume, "config.yaml")
        cfg = load_config(cfg_path, args.set)
        trainer = Trainer.resume(args.resume, cfg, quiet=args.quiet, out=out)
        if not args.quiet:
            print(f"resuming {args.resume} after epoch {trainer.epoch} of {trainer.epochs}", file=out)
    else:
        if not args.config:
            raise UserError("train needs a CONFIG file (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.set)
        if args.run_dir:
            cfg["trainer"]["run_dir"] = args.run_dir
        trainer = Trainer.from_config(cfg, quiet=args.quiet, out=out)
        if not args.quiet:
            print("# resolved config", file=out)
            print(dump_config(cfg), file=out)
    if not args.quiet:
        print(trainer.model.summary(), file=out)
        print(f"data: {trainer.data!r}", file=out)
        from cnnframe import parallel

        print(f"threads: {parallel.get_num_threads()}   run directory: {trainer.run_dir}", file=out, flush=True)
    if trainer.epoch >= trainer.epochs:
        raise UserError(f"{trainer.run_dir} has already completed {trainer.epoch} of {trainer.epochs} epochs; "
                        f"to train longer, resume with --set trainer.epochs=N")
    try:
        summary = trainer.fit(stop_after=args.stop_after)
    except TrainingInterrupted as e:
        print(f"cnnframe: {e}", file=sys.stderr)
        return INTERRUPTED
    except TrainingDiverged as e:
        print(f"cnnframe: {e}", file=sys.stderr)
        return 1
    if args.quiet and summary["test"] is not None:
        t = summary["test"]
        print(f"test accuracy {100 * t['acc']:.2f}% ({t['samples']} samples)  loss {t['loss']:.4f}  "
              f"run: {trainer.run_dir}", file=out)
    elif summary["status"] == "paused":
        print(f"stopped after epoch {trainer.epoch} of {trainer.epochs}; continue with: "
              f"python -m cnnframe train --resume {trainer.run_dir}", file=out)
    elif summary["status"] == "early_stopped" and not args.quiet:
        print(f"early stopping after epoch {trainer.epoch}", file=out)
    return 0


# -- validate ------------------------------------------------------------------------------------------
def cmd_validate(args):
    from cnnframe.config import build_layers, check_model_runs, dump_config, load_config, make_dataset, split_seed
    from cnnframe.model import Sequential

    cfg = load_config(args.config, args.set)
    shape, classes = make_dataset(cfg["data"], split_seed(cfg)).describe()
    model = Sequential(build_layers(cfg), input_shape=shape)
    check_model_runs(model, shape, cfg["trainer"]["dtype"])
    if args.show_config:
        print(dump_config(cfg))
    tr, opt, sch = cfg["trainer"], cfg["optimizer"], cfg["schedule"]
    print(f"{args.config}: OK")
    print(f"data: {cfg['data']['dataset']}, samples of shape {tuple(shape)}, {classes} classes; "
          f"test {cfg['data']['test_size']}, validation {cfg['data']['val_fraction']} of the rest")
    print(f"training: {tr['epochs']} epochs, batch {tr['batch_size']}, seed {tr['seed']}, {opt['type']} "
          f"lr {opt['lr']}, schedule {sch['type']}, loss {cfg['loss']['type']}, dtype {tr['dtype']}")
    print(model.summary())
    return 0


# -- checkpoints -----------------------------------------------------------------------------------------
def read_checkpoint_meta(path):
    """The meta dict stored in a checkpoint, read without building the model (plugins may be needed first)."""
    import json
    import zipfile

    import numpy as np

    from cnnframe import model as M

    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory; expected a checkpoint .npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if M._META_KEY not in npz.files:
                return {}
            return json.loads(str(npz[M._META_KEY]))
    except (AttributeError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a cnnframe checkpoint: {e}") from None


def load_for_inference(path, resolve=True):
    """(model in eval mode, meta, config or None, checkpoint path) for a checkpoint or a run directory.

    The checkpoint's plugins are imported first; ``resolve`` re-validates its config (needed to reload data).
    """
    from cnnframe.config import import_plugins, resolve_config
    from cnnframe.model import load_checkpoint

    if os.path.isdir(path):
        ckpt = _run_checkpoint(path)
    else:
        ckpt = path
    meta = read_checkpoint_meta(ckpt)
    cfg = meta.get("config")
    if cfg:
        import_plugins(cfg.get("plugins"), os.path.dirname(os.path.abspath(ckpt)))
        if resolve:
            cfg = resolve_config(cfg)
        if (cfg.get("trainer") or {}).get("threads") is not None:
            from cnnframe import parallel

            parallel.set_num_threads(cfg["trainer"]["threads"])
    model, _, meta = load_checkpoint(ckpt)
    model.eval()
    return model, meta, cfg, ckpt


def _run_checkpoint(run_dir):
    last, best = os.path.join(run_dir, "last.npz"), os.path.join(run_dir, "best.npz")
    if not os.path.exists(last) and not os.path.exists(best):
        raise FileNotFoundError(f"{run_dir} holds no last.npz or best.npz")
    if os.path.exists(last):
        cfg = read_checkpoint_meta(last).get("config") or {}
        if cfg.get("trainer", {}).get("test_checkpoint") == "best" and os.path.exists(best):
            return best
        return last
    return best


def cmd_evaluate(args):
    from cnnframe.config import build_loss, split_seed
    from cnnframe.data import load_splits
    from cnnframe.trainer import format_test, test_report

    model, meta, cfg, ckpt = load_for_inference(args.path)
    if not cfg:
        raise UserError(f"{ckpt} carries no config, so its data cannot be reloaded (it was not saved by the trainer)")
    data = load_splits(cfg["data"], split_seed(cfg), cfg["trainer"]["dtype"])
    X, y = getattr(data, args.split)
    if len(y) == 0:
        raise UserError(f"the {args.split} part of the data is empty")
    report = test_report(model, build_loss(cfg), X, y, data.num_classes, args.split, meta.get("kind", "checkpoint"),
                         meta.get("epoch"))
    print(f"checkpoint: {ckpt}")
    print(format_test(report, data.name))
    return 0


# -- predict ---------------------------------------------------------------------------------------------
def cmd_predict(args):
    import numpy as np

    from cnnframe.io import atomic_write_text
    from cnnframe.losses import softmax

    model, meta, cfg, _ = load_for_inference(args.checkpoint, resolve=False)
    X = _read_inputs(args.input, model.input_shape)
    d = meta.get("data") or {}
    X = ((X - float(d.get("offset", 0.0))) * float(d.get("scale", 1.0))).astype(model.layers[0].dtype
                                                                                 if model.layers else np.float32)
    outs = [model.forward(X[i:i + 500]) for i in range(0, len(X), 500)]
    out = np.concatenate(outs).astype(np.float64)
    loss_type = (cfg or {}).get("loss", {}).get("type", "softmax_cross_entropy")
    probs = softmax(out) if loss_type in ("softmax_cross_entropy", "cross_entropy") else out
    pred = out.argmax(axis=1)
    lines = ["index,class," + ",".join(f"p{j}" for j in range(probs.shape[1]))]
    lines += [f"{i},{int(pred[i])}," + ",".join(f"{v:.6f}" for v in probs[i]) for i in range(len(pred))]
    text = "\n".join(lines) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
        print(f"wrote {len(pred)} predictions to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _read_inputs(path, input_shape):
    import numpy as np

    if not os.path.exists(path):
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        X = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as a .npy array: {e}") from None
    if isinstance(X, np.lib.npyio.NpzFile):
        with X:
            if "X" not in X.files:
                raise UserError(f"{path} is an .npz without an array 'X' (arrays: {', '.join(X.files)})")
            X = X["X"]
    if X.dtype.kind not in "biuf":
        raise UserError(f"{path} holds {X.dtype} values; expected numbers")
    shape = tuple(input_shape)
    if X.shape == shape:
        X = X[None]
    elif X.shape[1:] == shape:
        pass
    elif shape[0] == 1 and X.shape[1:] == shape[1:]:
        X = X[:, None]
    elif shape[0] == 1 and X.shape == shape[1:]:
        X = X[None, None]
    else:
        raise UserError(f"{path} holds an array of shape {X.shape}; the model takes samples of shape {shape}, "
                        f"so expected (N, {', '.join(map(str, shape))})"
                        + (f" or (N, {', '.join(map(str, shape[1:]))})" if shape[0] == 1 else ""))
    if len(X) == 0:
        raise UserError(f"{path} holds no samples")
    if not np.all(np.isfinite(X)):
        raise UserError(f"{path} holds NaN or infinite values")
    return X.astype(np.float64)


# -- gradcheck -------------------------------------------------------------------------------------------
def cmd_gradcheck(args):
    from cnnframe.config import build_layers, load_config, make_dataset, split_seed
    from cnnframe.gradcheck import check_layer
    from cnnframe.model import Sequential

    cfg = load_config(args.config, args.set)
    shape, _ = make_dataset(cfg["data"], split_seed(cfg)).describe()
    layers = build_layers(cfg, dtype="float64")
    model = Sequential(layers, input_shape=shape)
    model.initialize(cfg["trainer"]["seed"])
    model.reseed(cfg["trainer"]["seed"])
    failures = 0
    in_shape = tuple(shape)
    for i, layer in enumerate(model.layers):
        report = check_layer(layer, in_shape, seed=cfg["trainer"]["seed"], batch_size=args.batch)
        failures += not report.passed
        tensors = ", ".join(f"{n} {t.max_rel:.1e}" for n, t in report.tensors.items())
        print(f"[{'ok' if report.passed else 'FAIL'}] layer {i:>2} {type(layer).__name__:<15} "
              f"input {str(in_shape):<13} max rel error: {tensors}")
        if not report.passed or args.verbose:
            print("\n".join("     " + line for line in str(report).splitlines()))
        in_shape = tuple(model.shapes[i])
    n = len(model.layers)
    print(f"{n - failures} of {n} layers pass the float64 gradient check")
    return 1 if failures else 0


# -- info ---------------------------------------------------------------------------------------------------
def cmd_info(args):
    import platform

    import numpy as np

    import cnnframe
    from cnnframe import parallel
    from cnnframe._ext import _openmp

    print(f"cnnframe {cnnframe.__version__}  (python {platform.python_version()}, numpy {np.__version__})")
    if _openmp.openmp_enabled():
        print(f"OpenMP: compiled in (runtime default {_openmp.openmp_max_threads()} threads)")
    else:
        print("OpenMP: not compiled in (kernels run on one thread)")
    print(f"threads: {parallel.get_num_threads()}  (CNNFRAME_NUM_THREADS, trainer.threads or set_num_threads)")
    dyn = "on" if parallel.get_dynamic() else "off"
    print(f"dynamic threads: {dyn}  (fewer threads while other processes keep cores busy; CNNFRAME_DYNAMIC_THREADS)")
    from cnnframe._ext import conv as _conv

    mk = "AVX-512 micro-kernel" if _conv.microkernel_available() else "BLAS (no AVX-512 on this CPU)"
    print(f"float32 convolution products: {mk}")
    libs = parallel.blas_info()
    if not libs:
        print("BLAS: none found by threadpoolctl")
    for api, version, threads, path in libs:
        print(f"BLAS: {api} {version or '?'}, {threads} threads, {path}")
    from cnnframe.config import _ensure_registered

    _ensure_registered()
    for label, reg in (("layers", cnnframe.LAYERS), ("losses", cnnframe.LOSSES), ("optimizers", cnnframe.OPTIMIZERS),
                       ("schedules", cnnframe.SCHEDULES), ("datasets", cnnframe.DATASETS)):
        print(f"{label}: {', '.join(reg.names())}")
    return 0


# -- argument parsing -----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def build_parser():
    p = _Parser(prog="python -m cnnframe", description="Train and use small CNNs on the CPU.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add_set(sp):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.epochs=5 or "
                             "--set model.layers[0].out_channels=32 (repeatable; VALUE is YAML)")

    t = sub.add_parser("train", help="train from a YAML config", description="Train from a YAML config.")
    t.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's config.yaml)")
    add_set(t)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.npz")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    t.add_argument("--stop-after", type=int, metavar="N",
                   help="stop cleanly once N epochs are complete (continue later with --resume)")
    t.add_argument("--run-dir", metavar="DIR", help="directory for run directories (overrides trainer.run_dir)")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("validate", help="check a config and print the model summary")
    v.add_argument("config")
    add_set(v)
    v.add_argument("--show-config", action="store_true", help="also print the resolved config")
    v.set_defaults(func=cmd_validate)

    e = sub.add_parser("evaluate", help="test metrics of a run directory or checkpoint")
    e.add_argument("path", metavar="RUN_DIR_or_CHECKPOINT")
    e.add_argument("--split", choices=("test", "val", "train"), default="test")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="classify the samples in a .npy file")
    pr.add_argument("checkpoint", metavar="CHECKPOINT")
    pr.add_argument("--input", required=True, metavar="FILE.npy",
                    help="array (N, C, H, W), (N, H, W) or one sample, in the data set's raw units")
    pr.add_argument("--output", metavar="FILE.csv", help="write index,class,p0,p1,... here instead of stdout")
    pr.set_defaults(func=cmd_predict)

    g = sub.add_parser("gradcheck", help="float64 gradient check of every layer of a config's model")
    g.add_argument("config")
    add_set(g)
    g.add_argument("--batch", type=int, default=2, help="batch size of the random inputs (default 2)")
    g.add_argument("--verbose", "-v", action="store_true", help="print every tensor's report")
    g.set_defaults(func=cmd_gradcheck)

    i = sub.add_parser("info", help="version, OpenMP, threads, BLAS and registered names")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "stop_after", None) is not None and args.stop_after < 1:
        parser.error("--stop-after must be >= 1")
    if getattr(args, "batch", 1) < 1:
        parser.error("--batch must be >= 1")
    errors = _user_errors()
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("cnnframe: interrupted", file=sys.stderr)
        return INTERRUPTED
    except errors as e:
        if os.environ.get("CNNFRAME_DEBUG"):
            raise
        print(f"cnnframe: error: {_message(e)}", file=sys.stderr)
        return USAGE_ERROR
