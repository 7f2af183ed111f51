"""cnnframe: a small, fast, readable CNN training framework for the CPU."""
__version__ = "0.1.0"

from cnnframe.parallel import get_num_threads, num_threads, set_num_threads
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
