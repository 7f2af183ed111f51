"""``python -m cnnframe gradcheck CONFIG``: float64 gradient check of every layer of a config's model."""
from cnnframe import config
from cnnframe.commands.common import add_set
from cnnframe.gradcheck import check_layer

NAME = "gradcheck"
HELP = "float64 gradient check of every layer of a config's model"


def add_arguments(p):
    p.add_argument("config")
    add_set(p)
    p.add_argument("--batch", type=int, default=2, help="batch size of the random inputs (default 2)")
    p.add_argument("--verbose", "-v", action="store_true", help="print every tensor's report")


def run(args):
    setup = config.load(args.config, args.set, dtype="float64")
    seed = setup.config["trainer"]["seed"]
    model = setup.model
    model.initialize(seed)
    model.reseed(seed)
    failures = 0
    in_shape = tuple(setup.input_shape)
    for i, layer in enumerate(model.layers):
        report = check_layer(layer, in_shape, seed=seed, batch_size=args.batch)
        failures += not report.passed
        tensors = ", ".join(f"{n} {t.max_rel:.1e}" for n, t in report.tensors.items())
        print(f"[{'ok' if report.passed else 'FAIL'}] layer {i:>2} {type(layer).__name__:<15} "
              f"input {str(in_shape):<13} max rel error: {tensors}")
        if not report.passed or args.verbose:
            print("\n".join("     " + line for line in str(report).splitlines()))
        in_shape = tuple(model.shapes[i])
    n = len(model.layers)
    print(f"{n - failures} of {n} layers pass the float64 gradient check")
    return 1 if failures else 0
