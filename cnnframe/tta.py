"""Test-time augmentation: a prediction averaged over shifted copies of each image (no flips).

With ``shift`` k the model sees every image moved by each (dy, dx) in [−k, k]² (zero fill; (2k+1)²
copies, unshifted first) and the class scores are averaged:  p̄ = (1/S) Σ_s scores(model(shift_s(x))).
Scores are the softmax probabilities for a loss whose outputs are logits (``score_activation ==
"softmax"``), else the outputs themselves.  ``averaged_outputs`` returns outputs whose scores are p̄
-- log p̄ for softmax (softmax(log p̄) = p̄), p̄ itself otherwise -- so the loss, the accuracy and the
reported probabilities of an evaluation are those of the averaged prediction.
"""
import numpy as np

from cnnframe.augment import shift_image_batch
from cnnframe.losses import softmax

__all__ = ["tta_shifts", "averaged_outputs", "outputs"]

# log of a probability that rounds to zero: finite, so a loss of the averaged prediction stays finite
_TINY = np.finfo(np.float64).tiny


def tta_shifts(shift):
    """The (dy, dx) of the copies for ``shift`` k: (0, 0) first, then the rest of [−k, k]² row by row."""
    k = int(shift)
    rest = [(a, b) for a in range(-k, k + 1) for b in range(-k, k + 1) if (a, b) != (0, 0)]
    return [(0, 0)] + rest


def averaged_outputs(model, x, shift, score_activation=None):
    """Outputs (N, classes) whose class scores are the mean over the shifted copies of ``x`` (N, C, H, W)."""
    total = None
    copies = tta_shifts(shift)
    for dy, dx in copies:
        out = np.asarray(model.forward(shift_image_batch(x, dy, dx) if (dy or dx) else x), dtype=np.float64)
        scores = softmax(out) if score_activation == "softmax" else out
        total = scores if total is None else total + scores
    mean = total / len(copies)
    return np.log(np.maximum(mean, _TINY)) if score_activation == "softmax" else mean


def outputs(model, x, shift, score_activation=None):
    """The model's outputs for ``x``: plain with ``shift`` 0, else ``averaged_outputs``."""
    return averaged_outputs(model, x, shift, score_activation) if shift else model.forward(x)
