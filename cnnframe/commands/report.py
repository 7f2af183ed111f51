"""``python -m cnnframe report RUN_DIR``: report.html with the run's curves, confusion matrix, mistakes and filters."""
import os
import sys

from cnnframe import runinfo
from cnnframe.commands.common import add_plugin, load_trained, named_plugins
from cnnframe.config import load_data
from cnnframe.errors import ConfigError, DataError, UserError
from cnnframe.optional import require
from cnnframe.report import write_report

NAME = "report"
HELP = "write report.html and plots of a run directory"


def add_arguments(p):
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="directory for report.html and the PNGs (default: RUN_DIR)")
    p.add_argument("--max-images", type=int, default=32, metavar="N",
                   help="show at most N misclassified test images (default 32)")
    add_plugin(p, "the run")


def run(args):
    require("matplotlib", "report")
    run_dir = args.run_dir
    if not os.path.isdir(run_dir):
        raise UserError(f"run directory not found: {run_dir}" if not os.path.exists(run_dir) else
                        f"{run_dir} is a file; report takes a run directory (made by train)")
    if args.max_images < 1:
        raise UserError("--max-images must be >= 1")
    report = report_run(run_dir, named_plugins(args), args.out, args.max_images)
    print(f"wrote {report.html} with {len(report.images)} plot(s): "
          + (", ".join(os.path.basename(p) for p in report.images.values()) or "none"))
    print_notes(report)
    return 0


def print_notes(report):
    """Each section the report could not draw, and why, on stderr."""
    for section, why in report.notes.items():
        print(f"cnnframe: note: no {section} plot: {why}", file=sys.stderr)


def report_run(run_dir, plugins, out_dir=None, max_images=32, test_data=None):
    """Write the report of the run in ``run_dir`` (into ``out_dir``, default the run directory) → ``Report``.

    Reads what the run wrote: metrics, summary, the tested checkpoint (its model, class names and loss) and, for
    the misclassified images, the test part of the data reloaded from the stored config (``test_data`` = (X, y)
    as fed to the model, when the caller holds it already: ``train``)."""
    history, summary = runinfo.read_metrics(run_dir), runinfo.read_summary(run_dir)
    has_ckpt = any(os.path.exists(os.path.join(run_dir, f)) for f in ("last.npz", "best.npz"))
    if not history and summary is None and not has_ckpt:
        raise UserError(f"{run_dir} is not a run directory: it has no metrics.csv, summary.json or checkpoint")
    notes, model, cfg, loss, names, tta_shift = {}, None, None, None, None, 0
    if has_ckpt:
        trained = load_trained(run_dir, plugins)
        model, cfg, loss, tta_shift = trained.model, trained.config, trained.loss, trained.tta_shift
        names = runinfo.class_names(trained.meta, cfg, plugins)
    else:
        notes["filters"] = notes["misclassified"] = f"no checkpoint in {run_dir}"
    if test_data is None and cfg and (summary or {}).get("test"):
        try:
            test_data = load_data(cfg, plugins=plugins).test
        except (ConfigError, DataError, OSError, KeyError, ValueError) as e:
            notes["misclassified"] = f"the test images could not be loaded: {e}"
    elif model is not None and not cfg:
        notes["misclassified"] = "the checkpoint carries no config, so its test images cannot be reloaded"
    title = (summary or {}).get("name") or os.path.basename(os.path.normpath(run_dir))
    return write_report(out_dir or run_dir, title=f"cnnframe run {title}", history=history, summary=summary,
                        model=model, test_data=test_data, loss=loss, class_names=names, max_images=max_images,
                        notes=notes, tta_shift=tta_shift)
