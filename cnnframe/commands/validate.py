"""``python -m cnnframe validate CONFIG``: check a config completely and print the model summary."""
from cnnframe import config
from cnnframe.commands.common import add_set
from cnnframe.layers.base import format_bytes

NAME = "validate"
HELP = "check a config and print the model summary"


def add_arguments(p):
    p.add_argument("config")
    add_set(p)
    p.add_argument("--show-config", action="store_true", help="also print the resolved config")


def run(args):
    setup = config.load(args.config, args.set)
    setup.check_model()
    cfg = setup.config
    if args.show_config:
        print(config.dump_config(cfg))
    tr, opt, sch = cfg["trainer"], cfg["optimizer"], cfg["schedule"]
    limit = "no limit" if tr["memory_limit"] is None else f"limit {tr['memory_limit']:g} GiB"
    print(f"{args.config}: OK")
    print(f"data: {cfg['data']['dataset']}, samples of shape {setup.input_shape}, {setup.num_classes} classes; "
          f"test {cfg['data']['test_size']}, validation {cfg['data']['val_fraction']} of the rest")
    print(f"training: {tr['epochs']} epochs, batch {tr['batch_size']}, seed {tr['seed']}, {opt['type']} "
          f"lr {opt['lr']}, schedule {sch['type']}, loss {cfg['loss']['type']}, dtype {tr['dtype']}")
    print(f"memory: about {format_bytes(setup.memory)} at batch size {tr['batch_size']} ({limit})")
    print(setup.model.summary())
    return 0
