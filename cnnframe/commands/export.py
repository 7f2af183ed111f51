"""``python -m cnnframe export RUN_DIR|CHECKPOINT OUT.onnx``: the trained model as ONNX, run in onnxruntime first.

The file is written only once onnxruntime (when installed) gives the model's outputs on a batch of random inputs,
so a file on disk computes what the model computes.
"""
import sys
import warnings

import numpy as np

from cnnframe import runinfo
from cnnframe.commands.common import add_plugin, load_trained, named_plugins
from cnnframe.data import Preprocessing
from cnnframe.export import IR_VERSION, OPSET, OUTPUTS, export_onnx, reference_outputs, run_onnxruntime
from cnnframe.io import atomic_write_bytes
from cnnframe.optional import available, require

NAME = "export"
HELP = "export a run directory or checkpoint to ONNX"

#: largest |onnxruntime − cnnframe| accepted on the check batch, relative to max(1, largest |output|)
TOLERANCE = 1e-4
_CHECK_BATCH = 8


def add_arguments(p):
    p.add_argument("path", metavar="RUN_DIR_or_CHECKPOINT")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write (atomically)")
    p.add_argument("--outputs", choices=("auto",) + tuple(OUTPUTS), default="auto",
                   help="probabilities: softmax appended; raw: the model's outputs; auto (default): probabilities "
                        "for a model trained with softmax cross-entropy, raw otherwise")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the exported model in onnxruntime against cnnframe")
    add_plugin(p)


def run(args):
    require("onnx", "export")
    plugins = named_plugins(args)
    trained = load_trained(args.path, plugins)
    model, meta, cfg, ckpt = trained.model, trained.meta, trained.config, trained.path
    output = runinfo.output_kind(cfg, plugins) if args.outputs == "auto" else args.outputs
    names = runinfo.class_names(meta, cfg, plugins)
    pre = runinfo.preprocessing(meta, cfg, plugins)
    if pre is None:
        print(f"cnnframe: note: {ckpt} records no preprocessing; the exported model takes inputs as they are",
              file=sys.stderr)
    if trained.tta_shift:
        k = trained.tta_shift
        print(f"cnnframe: note: the run evaluates with test-time shifts (data.tta.shift: {k}, the average over "
              f"{(2 * k + 1) ** 2} copies shifted by up to ±{k} pixels); the exported model is one pass, so its "
              f"probabilities differ a little from evaluate's and predict's: average its outputs over the same "
              f"shifts to match them", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proto = export_onnx(model, None, output=output, preprocessing=pre or Preprocessing(), class_names=names)
    for w in caught:
        print(f"cnnframe: note: {w.message}", file=sys.stderr)
    checked = "checked by onnx.checker"
    if not args.no_check:
        if not available("onnxruntime"):
            checked += " only (onnxruntime is not installed: pip install \"cnnframe[onnx]\" to run it)"
        else:
            problem, diff = _compare(model, proto, output)
            if problem:
                print(f"cnnframe: {problem}; {args.out} was not written", file=sys.stderr)
                return 1
            checked = f"onnxruntime agrees with cnnframe to {diff:.1e} on {_CHECK_BATCH} random inputs"
    atomic_write_bytes(args.out, proto.SerializeToString())
    shape = ", ".join(map(str, model.input_shape))
    print(f"wrote {args.out} (opset {OPSET}, IR version {IR_VERSION}) from {ckpt}: input 'input' float32 "
          f"[N, {shape}] -> '{OUTPUTS[output]}' [N, {', '.join(map(str, model.shapes[-1]))}]"
          + (f", classes {', '.join(names)}" if names else ""))
    print(checked)
    return 0


def _compare(model, proto, output):
    """(what is wrong or None, largest |onnxruntime − cnnframe|) on a batch of random inputs."""
    x = np.random.default_rng(0).standard_normal((_CHECK_BATCH,) + tuple(model.input_shape))
    ref = reference_outputs(model, x, output)
    try:
        got = run_onnxruntime(proto, x)
    except Exception as e:  # onnxruntime's errors derive from Exception only (Fail, InvalidGraph, NotImplemented)
        return f"onnxruntime cannot run the exported model: {type(e).__name__}: {str(e).strip().splitlines()[0]}", None
    diff = float(np.max(np.abs(got - ref)))
    bound = TOLERANCE * max(1.0, float(np.max(np.abs(ref))))
    if not diff <= bound:
        return (f"onnxruntime's outputs differ from cnnframe's by up to {diff:.3g} (more than {bound:.1g}) on "
                f"{_CHECK_BATCH} random inputs: the export does not compute what the model computes"), diff
    return None, diff
