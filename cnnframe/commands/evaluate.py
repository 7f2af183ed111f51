"""``python -m cnnframe evaluate RUN_DIR|CHECKPOINT``: metrics of a trained model on its data."""
from cnnframe.commands.common import load_for_inference
from cnnframe.config import build_loss, split_seed
from cnnframe.data import load_splits
from cnnframe.errors import UserError
from cnnframe.trainer import format_test, test_report

NAME = "evaluate"
HELP = "test metrics of a run directory or checkpoint"


def add_arguments(p):
    p.add_argument("path", metavar="RUN_DIR_or_CHECKPOINT")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")


def run(args):
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
