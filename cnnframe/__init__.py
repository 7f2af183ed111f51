"""cnnframe: a small, fast, readable CNN training framework for the CPU."""
import signal
import sys

from cnnframe.version import __version__

# Run as a command (`python -m cnnframe`, the `cnnframe` script)?  Then a failure to load is one line.
_COMMAND = sys.argv[:1] == ["-m"] or getattr(sys, "orig_argv", [])[1:3] == ["-m", "cnnframe"] \
    or sys.argv[0].rsplit("/", 1)[-1] == "cnnframe"


def _interrupted_while_loading(signum, frame):
    print("cnnframe: interrupted", file=sys.stderr)
    raise SystemExit(130)  # as Ctrl-C later on: exit status 130, no traceback


if _COMMAND and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_loading)  # until the libraries below are loaded

try:
    from cnnframe import _ext  # noqa: F401  (fails early, naming the build command, on an unbuilt tree)
except ImportError as _e:
    if _COMMAND:  # that one line, exit status 2
        print(str(_e), file=sys.stderr)
        raise SystemExit(2) from None
    raise

from cnnframe.parallel import get_dynamic, get_num_threads, num_threads, set_dynamic, set_num_threads
from cnnframe.registry import (
    DATASETS,
    LAYERS,
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    register_dataset,
    register_layer,
    register_loss,
    register_optimizer,
    register_schedule,
)
from cnnframe import ops  # noqa: E402  (needs the compiled kernels)

# -- layers, losses, optimizers, model (each module adds its public names here) --------------------

# -- losses, optimizers, schedules, Sequential, checkpoints, atomic I/O --
from cnnframe import io, losses, optim  # noqa: E402
from cnnframe.losses import MSE, SoftmaxCrossEntropy  # noqa: E402
from cnnframe.model import Sequential, load, load_checkpoint  # noqa: E402
from cnnframe.optim import SGD, Adam  # noqa: E402

# -- layers, gradient checking, contract tests --
from cnnframe.layers import (  # noqa: E402
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    Layer,
    MaxPool2D,
    Parameter,
    ReLU,
    Residual,
    Sigmoid,
    Softmax,
    Tanh,
)
from cnnframe import gradcheck, layers, testing  # noqa: E402

# -- YAML configs, plugins, data sets, the trainer --
from cnnframe import checkpoint, config, data, datasets, plugins  # noqa: E402  (datasets registers "digits", "npz")
from cnnframe.config import load_config  # noqa: E402
from cnnframe.errors import (CheckpointError, ConfigError, DataError, RunDirLocked, UntrustedTypeError,  # noqa: E402
                             UserError, WriteError)
from cnnframe.data import Preprocessing, load_dataset  # noqa: E402
from cnnframe.trainer import Trainer  # noqa: E402
from cnnframe.build_info import build_info  # noqa: E402

if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
    signal.signal(signal.SIGINT, signal.default_int_handler)
