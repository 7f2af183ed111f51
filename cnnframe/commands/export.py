"""``python -m cnnframe export RUN_DIR|CHECKPOINT OUT.onnx``: the trained model as ONNX, run once in onnxruntime."""
import sys
import warnings

import numpy as np

from cnnframe import runinfo
from cnnframe.commands.common import load_for_inference
from cnnframe.export import OPSET, IR_VERSION, OUTPUTS, export_onnx, reference_outputs, run_onnxruntime
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


def run(args):
    require("onnx", "export")
    model, meta, cfg, ckpt = load_for_inference(args.path, resolve=False)
    output = runinfo.output_kind(cfg) if args.outputs == "auto" else args.outputs
    names = runinfo.class_names(meta, cfg)
    if not (meta or {}).get("data"):
        print(f"cnnframe: note: {ckpt} records no preprocessing; the exported model takes inputs as they are",
              file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proto = export_onnx(model, args.out, output=output, preprocessing=runinfo.preprocessing(meta, cfg),
                            class_names=names)
    for w in caught:
        print(f"cnnframe: note: {w.message}", file=sys.stderr)
    shape = ", ".join(map(str, model.input_shape))
    print(f"wrote {args.out} (opset {OPSET}, IR version {IR_VERSION}) from {ckpt}: input 'input' float32 "
          f"[N, {shape}] -> '{OUTPUTS[output]}' [N, {', '.join(map(str, model.shapes[-1]))}]"
          + (f", classes {', '.join(names)}" if names else ""))
    if args.no_check:
        return 0
    if not available("onnxruntime"):
        print("onnxruntime is not installed, so the model was checked by onnx.checker only "
              "(pip install \"cnnframe[onnx]\" to run it)")
        return 0
    x = np.random.default_rng(0).standard_normal((_CHECK_BATCH,) + tuple(model.input_shape))
    ref = reference_outputs(model, x, output)
    diff = float(np.max(np.abs(run_onnxruntime(proto, x) - ref)))
    bound = TOLERANCE * max(1.0, float(np.max(np.abs(ref))))
    if not diff <= bound:
        print(f"cnnframe: onnxruntime's outputs differ from cnnframe's by up to {diff:.3g} (more than {bound:.1g}) "
              f"on {_CHECK_BATCH} random inputs; {args.out} does not compute what the model computes", file=sys.stderr)
        return 1
    print(f"onnxruntime agrees with cnnframe to {diff:.1e} (largest difference on {_CHECK_BATCH} random inputs)")
    return 0
