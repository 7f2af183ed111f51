"""``python -m cnnframe train CONFIG``: train from a YAML config (or ``--resume RUN_DIR``).

Under ``mpiexec -n P`` (docs/distributed.md) the P processes train data-parallel.  Setting up (config,
data, model, the run directory) is agreed: it fails on every process, with one message, or on none.
Then the root process alone prints and writes, and a failure on any process ends the whole job.
"""
import os
import sys

from cnnframe import config, distributed, parallel
from cnnframe.commands.common import INTERRUPTED, add_plugin, add_set, exit_code, named_plugins
from cnnframe.errors import JobStopped, UserError
from cnnframe.trainer import Trainer, TrainingDiverged, TrainingInterrupted

NAME = "train"
HELP = "train from a YAML config"


def add_arguments(p):
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's config.yaml)")
    add_set(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.npz")
    add_plugin(p, "the resumed run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop cleanly once N epochs are complete (continue later with --resume)")
    p.add_argument("--run-dir", metavar="DIR", help="directory for run directories (overrides trainer.run_dir)")


def run(args):
    group = distributed.group_from_environment()
    out = sys.stdout
    quiet = args.quiet or not group.is_root
    trainer = None
    try:
        with distributed.agreement(group, exit_code):
            plugins = named_plugins(args)
            if not args.resume:
                trainer = _new(args, plugins, group, quiet, out)
            elif group.is_root:  # the root reads the run directory; the others get its config, then its state
                trainer = _resumed(args, plugins, group, quiet, out)
        if args.resume and group.size > 1:
            stored = group.bcast(trainer.config if group.is_root else None)
            with distributed.agreement(group, exit_code):
                if not group.is_root:
                    setup = config.resolve(stored, plugins=plugins, safe=not args.config)
                    trainer = Trainer.from_config(setup, quiet=True, out=out, create_run_dir=False, group=group)
    except JobStopped:
        if trainer is not None and trainer.run_dir and not args.resume:
            _remove_if_empty(trainer.run_dir)  # another process failed: leave no empty run directory
        raise
    with distributed.abort_on_failure(group, exit_code, together=(TrainingDiverged, TrainingInterrupted)):
        trainer.join()
        if not quiet:
            _describe(args, trainer, group, out)
        try:
            summary = trainer.fit(stop_after=args.stop_after)
        except TrainingInterrupted as e:
            if group.is_root:
                print(f"cnnframe: {e}", file=sys.stderr)
            return distributed.stop_interrupted(group, INTERRUPTED)
        except TrainingDiverged as e:
            if group.is_root:
                print(f"cnnframe: {e}", file=sys.stderr)
            return 1
    if not group.is_root:
        return 0
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


def _new(args, plugins, group, quiet, out):
    if not args.config:
        raise UserError("train needs a CONFIG file (or --resume RUN_DIR)")
    setup = config.load(args.config, args.set, plugins=plugins)
    if args.run_dir:
        setup.config["trainer"]["run_dir"] = args.run_dir
    trainer = Trainer.from_config(setup, quiet=quiet, out=out, group=group)
    if not quiet:
        print("# resolved config", file=out)
        print(config.dump_config(setup.config), file=out)
    return trainer


def _resumed(args, plugins, group, quiet, out):
    if not os.path.isdir(args.resume):
        raise UserError(f"--resume: run directory not found: {args.resume}")
    # A CONFIG the user names is theirs (its plugins load); without one, the run's stored config.yaml
    # is data, and only --plugin names code.
    setup = config.load(args.config, args.set, plugins=plugins) if args.config else None
    trainer = Trainer.resume(args.resume, setup, quiet=quiet, out=out, plugins=plugins, overrides=args.set,
                             group=group)
    if trainer.epoch >= trainer.epochs:
        raise UserError(f"{trainer.run_dir} has already completed {trainer.epoch} of {trainer.epochs} epochs; "
                        f"to train longer, resume with --set trainer.epochs=N")
    if not quiet:
        print(f"resuming {args.resume} after epoch {trainer.epoch} of {trainer.epochs}", file=out)
    return trainer


def _describe(args, trainer, group, out):
    print(trainer.model.summary(), file=out)
    print(f"data: {trainer.data!r}", file=out)
    procs = f"{group.size} processes x " if group.size > 1 else ""
    print(f"threads: {procs}{parallel.get_num_threads()}   run directory: {trainer.run_dir}", file=out, flush=True)


def _remove_if_empty(path):
    try:
        os.rmdir(path)
    except OSError:
        pass
