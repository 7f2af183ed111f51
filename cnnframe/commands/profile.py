"""``python -m cnnframe profile CONFIG``: milliseconds per layer of a config's training step, as a table."""
from cnnframe import config, parallel
from cnnframe.commands.common import add_set
from cnnframe.errors import UserError
from cnnframe.profiler import profile_config

NAME = "profile"
HELP = "time each layer's forward and backward pass in a config's training step"


def add_arguments(p):
    p.add_argument("config")
    add_set(p)
    p.add_argument("--batches", type=int, default=20, metavar="N", help="timed training steps (default 20)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, metavar="T", help="kernel threads (default: trainer.threads, or all cores)")


def run(args):
    if args.batches < 1:
        raise UserError(f"--batches must be >= 1, got {args.batches}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    setup = config.load(args.config, args.set)
    trainer_cfg = setup.config["trainer"]
    if args.threads is not None:
        trainer_cfg["threads"] = args.threads
    with parallel.num_threads(trainer_cfg["threads"] or parallel.get_num_threads()):
        profile = profile_config(setup, batches=args.batches, warmup=args.warmup, title=args.config)
    print(profile.table())
    return 0
