"""``python -m cnnframe validate CONFIG``: check a config completely and print the model summary."""
from cnnframe.commands.common import add_set
from cnnframe.config import build_layers, check_model_runs, dump_config, load_config, make_dataset, split_seed
from cnnframe.model import Sequential

NAME = "validate"
HELP = "check a config and print the model summary"


def add_arguments(p):
    p.add_argument("config")
    add_set(p)
    p.add_argument("--show-config", action="store_true", help="also print the resolved config")


def run(args):
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
