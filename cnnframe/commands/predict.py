"""``python -m cnnframe predict CHECKPOINT --input FILE.npy|IMAGE|DIR``: class probabilities for new samples.

Inputs go through the preprocessing stored with the model (``runinfo.preprocessing``): arrays are taken in the
data set's raw units, image files are decoded as training decoded them (``datasets.image_folder.read_image``:
colour mode, resize), and both are then fed as ``Preprocessing`` says, ``(x - offset) * scale``.  A checkpoint
that records no preprocessing (a model saved from Python without it) is used as it is, and a note says so.
"""
import csv
import io
import os
import sys

import numpy as np

from cnnframe import runinfo
from cnnframe.commands.common import add_plugin, load_trained, named_plugins
from cnnframe.data import Preprocessing
from cnnframe.datasets.image_folder import EXTENSIONS, decode_settings, list_images, read_images
from cnnframe.errors import DataError, UserError
from cnnframe.io import atomic_write_text, load_array, npz_entry
from cnnframe.tta import outputs

NAME = "predict"
HELP = "classify the samples in a .npy file, an image file or a folder of images"

_BATCH = 500  # samples per forward pass


def add_arguments(p):
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint .npz, or a run directory")
    p.add_argument("--input", required=True, metavar="FILE.npy|IMAGE|DIR",
                   help="an array (N, C, H, W), (N, H, W) or one sample, in the data set's raw units; or an image "
                        f"file ({', '.join(EXTENSIONS)}); or a folder of them (sub-folders included)")
    p.add_argument("--output", metavar="FILE.csv",
                   help="write every class's probability here (CSV, a header naming the classes); for arrays "
                        "instead of stdout")
    add_plugin(p)


def run(args):
    if args.output and os.path.isdir(args.output):
        raise UserError(f"--output {args.output} is a directory; give a file name, e.g. "
                        f"{os.path.join(args.output, 'predictions.csv')}")
    plugins = named_plugins(args)
    trained = load_trained(args.checkpoint, plugins)
    model = trained.model
    pre = runinfo.preprocessing(trained.meta, trained.config, plugins)
    names = runinfo.class_names(trained.meta, trained.config, plugins)
    files = _image_files(args.input)
    decode = _decode(pre, model.input_shape, files[0], trained.path) if files else None
    if pre is None:
        pre = Preprocessing(decode=decode)
        print(f"cnnframe: note: {trained.path} records no preprocessing, so predict assumes {pre.describe()} "
              f"(save the model with preprocessing=cnnframe.Preprocessing(...) to record it)", file=sys.stderr)
    if files:
        try:
            raw = read_images(files, decode, model.input_shape)
        except DataError as e:
            raise UserError(str(e)) from None
    else:
        raw = _read_inputs(args.input, model.input_shape)
    try:
        X = pre(raw, model.layers[0].dtype)
    except DataError as e:  # e.g. values finite in float64 but not in the model's float32
        raise UserError(f"{args.input}: {e}") from None
    # averaged over shifted copies when the run evaluates so (data.tta.shift)
    out = np.concatenate([outputs(model, X[i:i + _BATCH], trained.tta_shift, trained.loss.score_activation)
                          for i in range(0, len(X), _BATCH)])
    # the loss the model was trained with says what its outputs mean (logits → softmax, or scores as they are)
    probs = trained.loss.class_scores(out)
    pred = out.argmax(axis=1)
    classes = [names[k] if names else str(k) for k in pred]
    columns = [f"p_{n}" for n in names] if names else [f"p{j}" for j in range(probs.shape[1])]
    every = [[f"{v:.6f}" for v in row] for row in probs]
    if files:
        score = "probability" if trained.loss.score_activation == "softmax" else "score"
        top = [[f, c, f"{probs[i, pred[i]]:.6f}"] for i, (f, c) in enumerate(zip(files, classes))]
        sys.stdout.write(_csv([["file", "class", score]] + top))  # per file: the class and its probability
        table = [["file", "class", score] + columns] + [t + e for t, e in zip(top, every)]
    else:
        table = [["index", "class"] + columns] + [[str(i), c] + every[i] for i, c in enumerate(classes)]
    if args.output:
        atomic_write_text(args.output, _csv(table))
        print(f"wrote {len(pred)} predictions to {args.output}")
    elif not files:
        sys.stdout.write(_csv(table))
    return 0


def _csv(rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _image_files(path):
    """The image files ``--input`` names (one file, or every image in a folder), or None when it is not images."""
    if os.path.isdir(path):
        files = list_images(path, recursive=True)
        if not files:
            raise UserError(f"--input: the folder {path} holds no image files ({', '.join(EXTENSIONS)})")
        return files
    if path.lower().endswith(EXTENSIONS):
        if not os.path.exists(path):
            raise FileNotFoundError(f"input file not found: {path}")
        return [path]
    return None


def _decode(pre, input_shape, first, checkpoint):
    """How image files are read for this model: its recorded decoding, or (nothing recorded) the model's channels
    as grayscale or RGB, without a resize.  UserError naming ``first`` (the first file) when images cannot feed it."""
    channels = input_shape[0]
    if pre is None:
        mode = {1: "grayscale", 3: "rgb"}.get(channels)
        if mode is None:
            raise UserError(f"{first}: an image file gives 1 (grayscale) or 3 (RGB) channels, but the model in "
                            f"{checkpoint} takes {channels}")
        return decode_settings(mode)
    if pre.decode is None:
        raise UserError(f"cannot classify {first}: {checkpoint} was trained on arrays, and its preprocessing records no "
                        f"way to read an image file; give --input a .npy of samples in the data set's raw units")
    if pre.decode.get("kind") != "image":
        raise UserError(f"cannot classify {first}: {checkpoint}'s preprocessing decodes files as "
                        f"{pre.decode.get('kind')!r}, not as images")
    return pre.decode


def _read_inputs(path, input_shape):
    if not os.path.exists(path):
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        X = load_array(path)
        if isinstance(X, np.lib.npyio.NpzFile):
            with X:
                if "X" not in X.files:
                    raise UserError(f"{path} is an .npz without an array 'X' (arrays: {', '.join(X.files)})")
                X = npz_entry(X, "X")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e} (image files end in {', '.join(EXTENSIONS)})") from None
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
    return X.astype(np.float64)
