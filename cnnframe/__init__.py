"""cnnframe: a small, fast, readable CNN training framework for the CPU."""
import sys

from cnnframe.version import __version__

try:
    from cnnframe import _ext  # noqa: F401  (fails early, naming the build command, on an unbuilt tree)
except ImportError as _e:
    # Run as a command (`python -m cnnframe`, the `cnnframe` script): that one line, exit status 2.
    if sys.argv[:1] == ["-m"] or getattr(sys, "orig_argv", [])[1:3] == ["-m", "cnnframe"] \
            or sys.argv[0].rsplit("/", 1)[-1] == "cnnframe":
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
from cnnframe.errors import CheckpointError, ConfigError, DataError, UntrustedTypeError, UserError  # noqa: E402
from cnnframe.data import Preprocessing, load_dataset  # noqa: E402
from cnnframe.trainer import Trainer  # noqa: E402
from cnnframe.build_info import build_info  # noqa: E402
