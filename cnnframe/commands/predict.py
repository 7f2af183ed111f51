"""``python -m cnnframe predict CHECKPOINT --input X.npy``: class probabilities for new samples."""
import os
import sys

import numpy as np

from cnnframe.commands.common import add_plugin, load_trained, named_plugins
from cnnframe.data import preprocess
from cnnframe.errors import UserError
from cnnframe.io import atomic_write_text
from cnnframe.tta import outputs

NAME = "predict"
HELP = "classify the samples in a .npy file"


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--input", required=True, metavar="FILE.npy",
                   help="array (N, C, H, W), (N, H, W) or one sample, in the data set's raw units")
    p.add_argument("--output", metavar="FILE.csv", help="write index,class,p0,p1,... here instead of stdout")
    add_plugin(p)


def run(args):
    trained = load_trained(args.checkpoint, named_plugins(args))
    model, d = trained.model, trained.meta.get("data")
    d = d if isinstance(d, dict) else {}
    X = preprocess(_read_inputs(args.input, model.input_shape), d.get("offset", 0.0), d.get("scale", 1.0),
                   model.layers[0].dtype)
    # averaged over shifted copies when the run evaluates so (data.tta.shift)
    out = np.concatenate([outputs(model, X[i:i + 500], trained.tta_shift, trained.loss.score_activation)
                          for i in range(0, len(X), 500)])
    # the loss the model was trained with says what its outputs mean (logits → softmax, or scores as they are)
    probs = trained.loss.class_scores(out)
    pred = out.argmax(axis=1)
    lines = ["index,class," + ",".join(f"p{j}" for j in range(probs.shape[1]))]
    lines += [f"{i},{int(pred[i])}," + ",".join(f"{v:.6f}" for v in probs[i]) for i in range(len(pred))]
    text = "\n".join(lines) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
        print(f"wrote {len(pred)} predictions to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _read_inputs(path, input_shape):
    if not os.path.exists(path):
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        X = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as a .npy array: {e}") from None
    if isinstance(X, np.lib.npyio.NpzFile):
        with X:
            if "X" not in X.files:
                raise UserError(f"{path} is an .npz without an array 'X' (arrays: {', '.join(X.files)})")
            X = X["X"]
    if X.dtype.kind not in "biuf":
        raise UserError(f"{path} holds {X.dtype} values; expected numbers")
    shape = tuple(input_shape)
    if X.shape == shape:
        X = X[None]
    elif X.shape[1:] == shape:
        pass
    elif shape[0] == 1 and X.shape[1:] == shape[1:]:
        X = X[:, None]
    elif shape[0] == 1 and X.shape == shape[1:]:
        X = X[None, None]
    else:
        raise UserError(f"{path} holds an array of shape {X.shape}; the model takes samples of shape {shape}, "
                        f"so expected (N, {', '.join(map(str, shape))})"
                        + (f" or (N, {', '.join(map(str, shape[1:]))})" if shape[0] == 1 else ""))
    if len(X) == 0:
        raise UserError(f"{path} holds no samples")
    if not np.all(np.isfinite(X)):
        raise UserError(f"{path} holds NaN or infinite values")
    return X.astype(np.float64)
