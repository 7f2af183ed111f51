"""``python -m cnnframe validate CONFIG``: check a config completely and print the model summary.

Under ``mpiexec -n P`` it also checks the config for P processes (``trainer.batch_chunks``); the
processes agree on the outcome and the root alone prints.
"""
from cnnframe import config, distributed
from cnnframe.commands.common import add_set, exit_code
from cnnframe.errors import ConfigError
from cnnframe.layers.base import format_bytes
from cnnframe.shards import ChunkError, check_chunks

NAME = "validate"
HELP = "check a config and print the model summary"


def add_arguments(p):
    p.add_argument("config")
    add_set(p)
    p.add_argument("--show-config", action="store_true", help="also print the resolved config")


def run(args):
    group = distributed.group_from_environment()
    with distributed.agreement(group, exit_code):
        setup = config.load(args.config, args.set)
        setup.check_model()
        try:
            chunks = check_chunks(setup.config["trainer"]["batch_chunks"], group.size)
        except ChunkError as e:
            raise ConfigError(str(e), file=args.config, key="trainer.batch_chunks") from None
    if not group.is_root:
        return 0
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
    if group.size > 1 or chunks > 1:
        print(f"data-parallel: {group.describe()}, each batch in {chunks} chunks")
    print(f"memory: about {format_bytes(setup.memory)} at batch size {tr['batch_size']} ({limit})")
    print(setup.model.summary())
    return 0
