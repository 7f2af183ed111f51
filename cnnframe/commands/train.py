"""``python -m cnnframe train CONFIG``: train from a YAML config (or ``--resume RUN_DIR``)."""
import os
import sys

from cnnframe import parallel
from cnnframe.commands.common import INTERRUPTED, add_set
from cnnframe.config import dump_config, load_config
from cnnframe.errors import UserError
from cnnframe.trainer import Trainer, TrainingDiverged, TrainingInterrupted

NAME = "train"
HELP = "train from a YAML config"


def add_arguments(p):
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's config.yaml)")
    add_set(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.npz")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop cleanly once N epochs are complete (continue later with --resume)")
    p.add_argument("--run-dir", metavar="DIR", help="directory for run directories (overrides trainer.run_dir)")


def run(args):
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
