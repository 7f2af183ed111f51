"""What several commands share: exit codes, the ``--set`` and ``--plugin`` options, and finding a
trained model (a checkpoint, or the right one in a run directory) and the code it may use."""
import os
import sys

from cnnframe import checkpoint, config, parallel
from cnnframe.errors import ConfigError, DataError, MemoryLimitError, UserError, WriteError
from cnnframe.losses import SoftmaxCrossEntropy
from cnnframe.model import load_checkpoint
from cnnframe.plugins import Plugins
from cnnframe.trainer import TrainingWriteFailed

# Exit status (docs/cli.md): 1 is training's divergence and a failed check, said by the commands themselves.
USAGE_ERROR = 2
WRITE_FAILED = 74  # sysexits.h EX_IOERR: a full or failing disk; what was written before is intact
INTERRUPTED = 130  # 128 + SIGINT
BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away


def output_closed(message=None):
    """Stop writing to a standard output whose reader went away (``... | head``): send stdout to the null
    device, so nothing fails again at exit, say ``message`` on stderr if it can, and return BROKEN_PIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    if message:
        try:
            print(f"cnnframe: {message}", file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr went too (``2>&1 | head``)
            pass
    return BROKEN_PIPE
#: what the command line reports as one line with exit status 2 (the user's input is at fault)
USER_ERRORS = (UserError, ConfigError, DataError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               PermissionError, ValueError, KeyError, MemoryLimitError)


def exit_code(error):
    """The exit status the command line gives an exception (docs/cli.md): 130 for Ctrl-C, 74 for a file
    that could not be written, 141 for a closed standard output, 2 for a user error, else 1."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(error, (WriteError, TrainingWriteFailed)):
        return WRITE_FAILED
    if isinstance(error, BrokenPipeError):
        return BROKEN_PIPE
    return USAGE_ERROR if isinstance(error, USER_ERRORS) else 1


def add_set(p):
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.epochs=5 or "
                        "--set model.layers[0].out_channels=32 (repeatable; VALUE is YAML)")


def add_plugin(p, what="the checkpoint"):
    p.add_argument("--plugin", action="append", default=[], metavar="FILE|MODULE",
                   help=f"a .py file or module that defines types {what} uses (its layers, loss, ...), imported "
                        f"first; repeatable. Stored configs and checkpoints never import code by themselves")


def named_plugins(args):
    """The plugins the user named with ``--plugin`` (imported now; their errors name the option)."""
    return Plugins(args.plugin, ".", "--plugin")


def checkpoint_path(path):
    """``path`` itself, or for a run directory its ``last.npz`` (``best.npz`` when the run reports the
    best model, ``trainer.test_checkpoint: best``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint or run directory not found: {path}")
    if not os.path.isdir(path):
        return path
    last, best = os.path.join(path, "last.npz"), os.path.join(path, "best.npz")
    if not os.path.exists(last) and not os.path.exists(best):
        raise FileNotFoundError(f"{path} holds no last.npz or best.npz")
    if not os.path.exists(last):
        return best
    cfg = checkpoint.read_meta(last).get("config")
    test_checkpoint = ((cfg or {}).get("trainer") or {}).get("test_checkpoint") if isinstance(cfg, dict) else None
    return best if test_checkpoint == "best" and os.path.exists(best) else last


class Trained:
    """A trained model loaded for use: ``model`` (eval mode), ``meta``, ``config`` (the run's stored config
    as a plain dict, or None), ``path`` (the checkpoint), ``loss`` (what it was trained with; softmax
    cross-entropy when the checkpoint does not say), ``tta_shift`` (the run's ``data.tta.shift``, 0 when
    not stored)."""

    def __init__(self, model, meta, config, path, loss):
        self.model, self.meta, self.config, self.path, self.loss = model, meta, config, path, loss
        tta = ((config or {}).get("data") or {}).get("tta")
        shift = tta.get("shift", 0) if isinstance(tta, dict) else 0
        self.tta_shift = shift if isinstance(shift, int) and not isinstance(shift, bool) and shift >= 0 else 0


def load_trained(path, plugins):
    """The model of a checkpoint or run directory, rebuilt from the checkpoint's stored model config with
    ``plugins`` only (``load_checkpoint``), with the loss its run config names; threads as the run asked."""
    ckpt = checkpoint_path(path)
    model, _, meta = load_checkpoint(ckpt, plugins)
    model.eval()
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else None
    use_threads(cfg)
    loss = config.build_loss(cfg, plugins) if cfg and cfg.get("loss") else SoftmaxCrossEntropy()
    return Trained(model, meta, cfg, ckpt, loss)


def stored_setup(saved, plugins):
    """The ``Setup`` of the run config stored in a checkpoint, resolved as a stored file (``safe``: only
    the registry and ``plugins``), its model allocated no larger than the checkpoint's arrays need."""
    cfg = saved.meta.get("config")
    if not cfg:
        raise UserError(f"{saved.path} carries no config, so its data cannot be reloaded (it was not saved by the "
                        f"trainer)")
    try:
        setup = config.resolve(cfg, base_dir=os.path.dirname(os.path.abspath(saved.path)), safe=True,
                               plugins=plugins, parameter_bytes=saved.build_budget)
    except ConfigError as e:
        e.file = f"{saved.path} (its stored config)"
        raise
    use_threads(setup.config)
    return setup


def use_threads(cfg):
    """Run with the thread count a stored config asks for (``trainer.threads``), if any."""
    threads = ((cfg or {}).get("trainer") or {}).get("threads")
    if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        parallel.set_num_threads(threads)
