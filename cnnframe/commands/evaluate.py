"""``python -m cnnframe evaluate RUN_DIR|CHECKPOINT``: metrics of a trained model on its data."""
from cnnframe import checkpoint
from cnnframe.commands.common import add_plugin, checkpoint_path, named_plugins, stored_setup
from cnnframe.errors import UserError
from cnnframe.trainer import format_test, test_report

NAME = "evaluate"
HELP = "test metrics of a run directory or checkpoint"


def add_arguments(p):
    p.add_argument("path", metavar="RUN_DIR_or_CHECKPOINT")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    add_plugin(p, "the run")


def run(args):
    plugins = named_plugins(args)
    saved = checkpoint.read(checkpoint_path(args.path))
    setup = stored_setup(saved, plugins)
    saved.load_into(setup.model)
    setup.model.eval()
    data = setup.load_data()
    X, y = getattr(data, args.split)
    if len(y) == 0:
        raise UserError(f"the {args.split} part of the data is empty")
    meta = saved.meta
    report = test_report(setup.model, setup.loss, X, y, data.num_classes, args.split, meta.get("kind", "checkpoint"),
                         meta.get("epoch"), setup.config["data"]["tta"]["shift"])
    print(f"checkpoint: {saved.path}")
    print(format_test(report, data.name))
    return 0
