"""What several commands share: exit codes, the ``--set`` option, loading a trained model."""
import json
import os
import zipfile

import numpy as np

from cnnframe import model as M
from cnnframe import parallel
from cnnframe.config import import_plugins, resolve_config
from cnnframe.errors import UserError
from cnnframe.model import load_checkpoint

USAGE_ERROR = 2
INTERRUPTED = 130


def add_set(p):
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.epochs=5 or "
                        "--set model.layers[0].out_channels=32 (repeatable; VALUE is YAML)")


def read_checkpoint_meta(path):
    """The meta dict stored in a checkpoint, read without building the model (plugins may be needed first)."""
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
