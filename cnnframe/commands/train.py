"""``python -m cnnframe train CONFIG``: train from a YAML config (or ``--resume RUN_DIR``); at the end, the run's
report (``report.html``, as ``python -m cnnframe report RUN_DIR`` writes it) when matplotlib is installed.

Under ``mpiexec -n P`` (docs/distributed.md) the P processes train data-parallel.  Setting up (config,
data, model, the run directory) is agreed: it fails on every process, with one message, or on none.
Then the root process alone prints and writes, and a failure on any process ends the whole job.
"""
import os
import sys

from cnnframe import config, distributed, optional, parallel
from cnnframe.commands.common import (INTERRUPTED, WRITE_FAILED, add_plugin, add_set, exit_code, named_plugins,
                                      output_closed)
from cnnframe.commands.report import print_notes, report_run
from cnnframe.errors import JobStopped, UserError
from cnnframe.trainer import OutputClosed, Trainer, TrainingDiverged, TrainingInterrupted, TrainingWriteFailed

NAME = "train"
HELP = "train from a YAML config"


def add_arguments(p):
    p.add_argument("config", nargs="?", help="YAML config (optional with --resume: the run's config.yaml)")
    add_set(p)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (e.g. runs/latest) from its last.npz")
    add_plugin(p, "the resumed run")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop cleanly once N epochs are complete (continue later with --resume)")
    p.add_argument("--run-dir", metavar="DIR", help="directory for run directories (overrides trainer.run_dir)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write report.html and its plots into the run directory at the end")


def run(args):
    group = distributed.group_from_environment()
    out = sys.stdout
    quiet = args.quiet or not group.is_root
    setup = trainer = None
    try:
        with distributed.agreement(group, exit_code):
            plugins = named_plugins(args)
            if not args.resume:
                setup, trainer = _new(args, plugins, group, quiet, out)
            elif group.is_root:  # the root reads the run directory; the others get its config, then its state
                setup, trainer = _resumed(args, plugins, group, quiet, out)
        with distributed.agreement(group, exit_code):
            if not args.resume and group.is_root:  # once every process is ready: no run directory otherwise
                trainer.make_run_dir()
        if args.resume and group.size > 1:
            stored = group.bcast(trainer.config if group.is_root else None)
            with distributed.agreement(group, exit_code):
                if not group.is_root:  # trusted as the root trusted it: the user's CONFIG, or a stored file
                    base = os.path.dirname(os.path.abspath(args.config)) if args.config else "."
                    setup = config.resolve(stored, base_dir=base, plugins=plugins, safe=not args.config)
                    trainer = Trainer.from_config(setup, quiet=True, out=out, create_run_dir=False, group=group)
    except JobStopped:
        if trainer is not None and trainer.rundir is not None:
            trainer.rundir.release()
        raise
    with distributed.abort_on_failure(group, exit_code):
        trainer.join()
        try:
            if not quiet:
                _introduce(trainer, setup if not args.resume else None, out, group)
        except BrokenPipeError:
            return distributed.end_job(group, output_closed(
                f"output closed (broken pipe) before training started; the run can be started with: "
                f"python -m cnnframe train --resume {trainer.run_dir}"))
        try:
            summary = trainer.fit(stop_after=args.stop_after)
        except OutputClosed as e:  # the root's reader went away
            return distributed.end_job(group, output_closed(str(e)))
        except TrainingInterrupted as e:
            if group.is_root:
                print(f"cnnframe: {e}", file=sys.stderr)
            return distributed.stop_interrupted(group, INTERRUPTED)
        except TrainingDiverged as e:  # every process stops at the same step (the loss is summed over them)
            if group.is_root:
                print(f"cnnframe: {e}", file=sys.stderr)
            return 1
        except TrainingWriteFailed as e:  # the root's disk
            print(f"cnnframe: error: {e}", file=sys.stderr)
            return distributed.end_job(group, WRITE_FAILED)
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
    if not args.no_report and summary["status"] in ("completed", "early_stopped"):  # not after --stop-after
        write_report(trainer, setup.plugins if setup is not None else plugins, out, args.quiet)
    return 0


def _new(args, plugins, group, quiet, out):
    """(setup, trainer) of a new run, its run directory not made yet."""
    if not args.config:
        raise UserError("train needs a CONFIG file (or --resume RUN_DIR)")
    setup = config.load(args.config, args.set, plugins=plugins)
    if args.run_dir:
        setup.config["trainer"]["run_dir"] = args.run_dir
    return setup, Trainer.from_config(setup, quiet=quiet, out=out, create_run_dir=False, group=group)


def _resumed(args, plugins, group, quiet, out):
    """(setup or None, trainer) of the run in ``--resume RUN_DIR``, its directory locked."""
    if args.run_dir:
        raise UserError(f"--run-dir chooses where a new run is made; a resumed run stays in its own directory "
                        f"({args.resume}): leave out --run-dir")
    if not os.path.isdir(args.resume):
        raise UserError(f"--resume: run directory not found: {args.resume}")
    # A CONFIG the user names is theirs (its plugins load); without one, the run's stored config.yaml
    # is data, and only --plugin names code.
    setup = config.load(args.config, args.set, plugins=plugins) if args.config else None
    trainer = Trainer.resume(args.resume, setup, quiet=quiet, out=out, plugins=plugins, overrides=args.set,
                             group=group)
    done = trainer.finished()
    if done:
        trainer.rundir.release()
        raise UserError(f"{trainer.run_dir} {done}")
    return setup, trainer


def _introduce(trainer, setup, out, group):
    """What a run prints before its first epoch: the resolved config of a new run, or what resuming found."""
    if setup is None:
        for note in trainer.rundir.recovered:
            print(f"{trainer.run_dir}: {note}", file=out)
        what = "finishing" if trainer.epoch >= trainer.epochs else "resuming"
        print(f"{what} {trainer.run_dir} after epoch {trainer.epoch} of {trainer.epochs}", file=out)
    else:
        print("# resolved config", file=out)
        print(config.dump_config(setup.config), file=out)
    print(trainer.model.summary(), file=out)
    print(f"data: {trainer.data!r}", file=out)
    procs = f"{group.size} processes x " if group.size > 1 else ""
    print(f"threads: {procs}{parallel.get_num_threads()}   run directory: {trainer.run_dir}", file=out, flush=True)


def write_report(trainer, plugins, out, quiet):
    """The run's report at the end of training, when matplotlib is installed (else a line saying how to get one).
    A failure here is a note on stderr: the run itself is complete and intact."""
    if not optional.available("matplotlib"):
        if not quiet:
            print('no run report: pip install "cnnframe[plot]" (matplotlib) and train writes report.html with '
                  f'plots; for this run: python -m cnnframe report {trainer.run_dir}', file=out)
        return
    try:
        report = report_run(trainer.run_dir, plugins, test_data=trainer.data.test)
    except Exception as e:  # the run is saved; nothing in drawing it may turn a finished run into a failed one
        print(f"cnnframe: note: the run report could not be written ({type(e).__name__}: {e}); the run in "
              f"{trainer.run_dir} is complete; try again with: python -m cnnframe report {trainer.run_dir}",
              file=sys.stderr)
        return
    if not quiet:
        print(f"report: {report.html} ({len(report.images)} plot(s))", file=out)
        print_notes(report)
