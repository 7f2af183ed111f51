"""ONNX export of a ``Sequential`` model: ``export_onnx(model, path)`` (also ``model.to_onnx(path)``).

The graph takes ``"input"``, float32 ``[N, C, H, W]`` with a symbolic batch size ``N``, runs one or a few
ONNX nodes per layer, and gives either ``"probabilities"`` (a Softmax over axis 1 appended to the model's
outputs: what ``predict`` reports for a model trained with softmax cross-entropy) or ``"output"`` (the
model's outputs as they are).  Opset 17 and IR version 8, so older onnxruntime releases load it too
(``onnx.helper.make_model`` would stamp the newest IR, which they refuse).  Float32 throughout:
onnxruntime's CPU provider has no float64 Conv or AveragePool, so a float64 model is cast (with a warning).

Built-in layers are converted by the functions in ``CONVERTERS`` (keyed by the exact layer class; all ONNX
knowledge of the built-in layers lives in this file).  Any other layer exports through its own hook::

    def to_onnx(self, graph, x, input_shape):   # -> name of the output tensor
        return graph.node("Mul", [x, graph.node("Sigmoid", [x])])

(``graph`` is an ``OnnxGraph``; docs/extending.md, "Exporting to ONNX").  A layer without either is an
``ExportError`` naming it.  The model's metadata (``metadata_props``) records what the graph expects and
gives: ``preprocessing`` (JSON: the model's ``Preprocessing.to_dict()`` as checkpoints store it: inputs fed as
``(x - offset) * scale``, layout, how image files are decoded; plus the input shape and dtype), ``output``
(``probabilities`` or ``raw``), ``class_names`` (JSON list, when known) and ``cnnframe_version``.

onnx (and onnxruntime, for ``run_onnxruntime``) are optional: the ``[onnx]`` extra; they are imported only
when an export runs.
"""
import json
import math
import os
import warnings

import numpy as np

from cnnframe.data import Preprocessing
from cnnframe.io import atomic_write_bytes
from cnnframe.layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from cnnframe.layers.blocks import Concat, Residual
from cnnframe.losses import softmax
from cnnframe.optional import require
from cnnframe.version import __version__

__all__ = ["export_onnx", "OnnxGraph", "ExportError", "CONVERTERS", "OPSET", "IR_VERSION", "OUTPUTS",
           "reference_outputs", "run_onnxruntime", "read_metadata"]

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "input"
#: output kind → name of the graph's output tensor
OUTPUTS = {"probabilities": "probabilities", "raw": "output"}
_HOOK_DOC = 'docs/extending.md, "Exporting to ONNX"'


class ExportError(ValueError):
    """The model cannot be exported as asked (a layer without an ONNX export, an unbuilt model, a bad option)."""


class OnnxGraph:
    """What layer exporters add to: ONNX nodes and initializers, each under a new unique name.

    - ``node(op_type, inputs, **attributes)`` adds one node and returns the name of its output
      (``outputs=k`` for a node with k outputs returns a list of k names);
    - ``weight(array, name="weight")`` adds an initializer (floats stored as float32, integers as int64)
      and returns its name, to pass as a node input;
    - ``add_layers(layers, x, input_shape)`` adds the nodes of a chain of layers (what a block layer holding
      other layers calls from its own ``to_onnx``) and returns the chain's output name;
    - ``opset`` is the ONNX opset of the graph (17); ``scope`` prefixes new names while a layer is exported
      (``"3.conv2d"``; ``"3.block/0.conv2d"`` inside a block), so the graph reads like the model summary.
    """

    def __init__(self, opset=OPSET):
        self._onnx = require("onnx", "ONNX export")
        self.opset = opset
        self.scope = ""
        self.nodes = []
        self.initializers = []
        self._names = {INPUT_NAME}

    def fresh_name(self, hint):
        """A name not used yet in the graph, built from the current scope and ``hint``."""
        base = f"{self.scope}/{hint}" if self.scope else str(hint)
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def weight(self, array, name="weight"):
        """Add ``array`` as an initializer (floats as float32, integers as int64); returns its name."""
        a = np.asarray(array)
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        elif a.dtype.kind in "iub":
            a = a.astype(np.int64)
        else:
            raise ExportError(f"cannot store an array of dtype {a.dtype} in an ONNX graph ({self.scope or 'graph'})")
        n = self.fresh_name(name)
        self.initializers.append(self._onnx.numpy_helper.from_array(np.ascontiguousarray(a), n))
        return n

    def node(self, op_type, inputs, outputs=1, **attributes):
        """Add an ``op_type`` node (ONNX attributes as keywords) on the named ``inputs``; returns its output name(s)."""
        names = [self.fresh_name(op_type) for _ in range(outputs)]
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), names, name=self.fresh_name(op_type + "#"),
                                                      **attributes))
        return names[0] if outputs == 1 else names

    def add_layers(self, layers, x, input_shape):
        """Nodes computing ``layers`` in order (eval mode) from tensor ``x`` of per-sample shape ``input_shape``;
        returns the name of the last output.  Each layer exports by its converter or its ``to_onnx`` hook."""
        outer = self.scope
        shape = tuple(input_shape)
        try:
            for i, layer in enumerate(layers):
                tag = f"{i}.{getattr(layer, 'registered_name', None) or type(layer).__name__}"
                self.scope = f"{outer}/{tag}" if outer else tag
                where = f"layer {outer + '/' if outer else ''}{i} ({type(layer).__name__}"
                convert = _converter(layer, where)
                try:
                    out = convert(layer, self, x, shape)
                except ExportError:
                    raise
                except Exception as e:
                    raise ExportError(f"{where}): ONNX export failed: {type(e).__name__}: {e}") from e
                if not isinstance(out, str) or not self.produced(out):
                    raise ExportError(f"{where}): to_onnx returned {out!r}, which is not the name of a tensor in the "
                                      f"graph (return the name that graph.node(...) gave)")
                x, shape = out, tuple(layer.output_shape(shape))
        finally:
            self.scope = outer
        return x

    def produced(self, name):
        """True when ``name`` is the graph input, an initializer or the output of a node added so far."""
        return (name == INPUT_NAME or any(name in n.output for n in self.nodes)
                or any(name == t.name for t in self.initializers))

    def rename(self, old, new):
        """Give the tensor ``old`` the name ``new`` wherever it appears (for the graph's output)."""
        for n in self.nodes:
            n.output[:] = [new if o == old else o for o in n.output]
            n.input[:] = [new if i == old else i for i in n.input]
        self._names.add(new)


# -- converters of the built-in layers: f(layer, graph, x, input_shape) -> output name ----------------------
def _conv(layer, g, x, shape):
    (ph, pw), params = layer.padding, layer.parameters()
    inputs = [x, g.weight(params["weight"].data, "weight")]  # OIHW, as ONNX wants
    if layer.use_bias:
        inputs.append(g.weight(params["bias"].data, "bias"))
    return g.node("Conv", inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=int(getattr(layer, "groups", 1)))


def _pool_attributes(layer):
    ph, pw = layer.padding
    return dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw],
                ceil_mode=0)


def _max_pool(layer, g, x, shape):
    return g.node("MaxPool", [x], **_pool_attributes(layer))  # ONNX pads MaxPool with -inf, as cnnframe does


def _avg_pool(layer, g, x, shape):
    # cnnframe divides by kh·kw, padded zeros included (math.md, Pooling); ONNX's default would leave them out.
    return g.node("AveragePool", [x], count_include_pad=1, **_pool_attributes(layer))


def _global_avg_pool(layer, g, x, shape):
    return g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)  # (N, C, 1, 1) -> (N, C)


def _batch_norm(layer, g, x, shape):
    # Inference form: y = γ (x − running_mean) / √(running_var + eps) + β, per channel (axis 1).
    params, buffers = layer.parameters(), layer.buffers()
    inputs = [x, g.weight(params["weight"].data, "weight"), g.weight(params["bias"].data, "bias"),
              g.weight(buffers["running_mean"], "running_mean"), g.weight(buffers["running_var"], "running_var")]
    return g.node("BatchNormalization", inputs, epsilon=float(layer.eps))


def _dense(layer, g, x, shape):
    params = layer.parameters()
    inputs = [x, g.weight(params["weight"].data, "weight")]  # y = x Wᵀ + b: Gemm with transB
    if layer.use_bias:
        inputs.append(g.weight(params["bias"].data, "bias"))
    return g.node("Gemm", inputs, transB=1)


def _flatten(layer, g, x, shape):
    return g.node("Flatten", [x], axis=1)  # keeps N symbolic, unlike a Reshape to fixed sizes


def _identity(layer, g, x, shape):
    return x  # Dropout is the identity at inference


def _op(op_type, **attributes):
    def convert(layer, g, x, shape):
        return g.node(op_type, [x], **attributes)
    return convert


def _leaky_relu(layer, g, x, shape):
    return g.node("LeakyRelu", [x], alpha=float(layer.negative_slope))


def _residual(layer, g, x, shape):
    # y = act(F(x) + S(x)) (math.md, Blocks); the identity shortcut adds x itself.
    body = g.add_layers(layer.layers, x, shape)
    short = x if layer.shortcut is None else g.add_layers(layer.shortcut, x, shape)
    y = g.node("Add", [body, short])
    act = dict(layer.named_children()).get("activation")
    return y if act is None else g.add_layers([act], y, layer.output_shape(shape))


def _concat(layer, g, x, shape):
    # y = [B_1(x), ..., B_k(x)] along channels (math.md, Blocks); an empty branch passes x through.
    return g.node("Concat", [g.add_layers(b, x, shape) if b else x for b in layer.branches], axis=1)


CONVERTERS = {
    Conv2D: _conv,
    MaxPool2D: _max_pool,
    AvgPool2D: _avg_pool,
    GlobalAvgPool2D: _global_avg_pool,
    BatchNorm1D: _batch_norm,
    BatchNorm2D: _batch_norm,
    Dense: _dense,
    Flatten: _flatten,
    Dropout: _identity,
    ReLU: _op("Relu"),
    LeakyReLU: _leaky_relu,
    Sigmoid: _op("Sigmoid"),
    Tanh: _op("Tanh"),
    Softmax: _op("Softmax", axis=1),
    Residual: _residual,
    Concat: _concat,
}


def _converter(layer, where):
    hook = getattr(layer, "to_onnx", None)
    if callable(hook):
        return lambda layer, g, x, shape: hook(g, x, shape)
    convert = CONVERTERS.get(type(layer))
    if convert is not None:
        return convert
    cls = type(layer)
    parent = next((b.__name__ for b in cls.__mro__[1:] if b in CONVERTERS), None)
    what = f", a subclass of {parent}" if parent else ""
    raise ExportError(f"{where}{what}, from {cls.__module__}) has no ONNX export: give the class a "
                      f"to_onnx(graph, x, input_shape) method that adds its nodes ({_HOOK_DOC})")


# -- metadata ------------------------------------------------------------------------------------------------
def _preprocessing(model, given):
    """The metadata's preprocessing: ``given`` (a Preprocessing, or a dict of its entries and any other JSON-ready
    keys), else the model's own (``model.preprocessing``), with the input shape and dtype the graph takes."""
    given = getattr(model, "preprocessing", None) if given is None else given
    if isinstance(given, Preprocessing):
        given = given.to_dict()
    pre = {**Preprocessing().to_dict(), "input_shape": list(model.input_shape), "dtype": "float32"}
    for key, value in (given or {}).items():
        if key in ("offset", "scale"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ExportError(f"preprocessing {key} must be a finite number, got {value!r}")
            value = float(value)
        pre[key] = value
    return pre


def _class_names(names, num_outputs):
    if names is None:
        return None
    if isinstance(names, str):
        raise ExportError(f"class_names must be a list of names, got the string {names!r}")
    names = [str(n) for n in names]
    if len(names) != num_outputs:
        raise ExportError(f"{len(names)} class names given for a model with {num_outputs} outputs")
    return names


def read_metadata(onnx_model):
    """The cnnframe metadata of an exported model as a dict (JSON entries decoded)."""
    out = {}
    for p in onnx_model.metadata_props:
        try:
            out[p.key] = json.loads(p.value) if p.key in ("preprocessing", "class_names") else p.value
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


# -- export --------------------------------------------------------------------------------------------------
def export_onnx(model, path=None, *, output="probabilities", preprocessing=None, class_names=None, check=True):
    """Write ``model`` (a built ``Sequential``) as an ONNX model to ``path`` (atomically) and return the ModelProto.

    output: ``"probabilities"`` appends Softmax over axis 1 to the model's outputs (for models trained with
        softmax cross-entropy, whose outputs are logits); ``"raw"`` exports the outputs as they are.
    preprocessing: what raw inputs go through before the model, recorded in the metadata: a
        ``cnnframe.data.Preprocessing`` or a dict (``offset``, ``scale``: inputs are fed as ``(x - offset) * scale``,
        and any other JSON-ready keys); default ``model.preprocessing`` (identity when that is None).
        class_names: one name per output, recorded in the metadata; default ``model.class_names``.
    check: run ``onnx.checker.check_model(full_check=True)`` (shape inference included).
    ``path=None`` only builds the model.  Raises ExportError for a layer that cannot be exported.
    """
    onnx = require("onnx", "ONNX export")
    if output not in OUTPUTS:
        raise ExportError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if not getattr(model, "built", False):
        raise ExportError("the model is not built: give Sequential an input_shape or call model.build(shape) first")
    dtypes = sorted({np.dtype(p.dtype).name for p in model.parameters().values()}
                    | {np.dtype(b.dtype).name for b in model.buffers().values()})
    if "float64" in dtypes:
        warnings.warn("the model is float64; it is exported as float32 (onnxruntime's CPU provider has no "
                      "float64 Conv or AveragePool), so outputs differ from cnnframe's by float32 rounding",
                      UserWarning, stacklevel=2)
    out_shape = list(model.shapes[-1]) if model.layers else list(model.input_shape)
    names = _class_names(getattr(model, "class_names", None) if class_names is None else class_names,
                         math.prod(out_shape))
    pre = _preprocessing(model, preprocessing)

    g = OnnxGraph()
    x = g.add_layers(model.layers, INPUT_NAME, model.input_shape)
    out_name = OUTPUTS[output]
    if output == "probabilities":
        g.nodes.append(onnx.helper.make_node("Softmax", [x], [out_name], name="probabilities#", axis=1))
    elif x == INPUT_NAME or any(x == t.name for t in g.initializers):
        g.nodes.append(onnx.helper.make_node("Identity", [x], [out_name], name="output#"))
    else:
        g.rename(x, out_name)

    helper, TP = onnx.helper, onnx.TensorProto
    inp = helper.make_tensor_value_info(INPUT_NAME, TP.FLOAT, ["N"] + list(model.input_shape))
    inp.doc_string = (f"float32 [N, {', '.join(map(str, model.input_shape))}], NCHW; raw inputs x fed as "
                      f"(x - {pre['offset']!r}) * {pre['scale']!r}")
    out = helper.make_tensor_value_info(out_name, TP.FLOAT, ["N"] + out_shape)
    out.doc_string = ("class probabilities: softmax over axis 1 of the model's outputs" if output == "probabilities"
                      else "the model's outputs")
    graph = helper.make_graph(g.nodes, "cnnframe", [inp], [out], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="cnnframe", producer_version=__version__,
                              doc_string=f"exported by cnnframe {__version__} from a model of "
                                         f"{len(model.layers)} layers ({', '.join(dtypes) or 'no parameters'})")
    props = {"cnnframe_version": __version__, "output": output, "preprocessing": json.dumps(pre),
             "model_dtype": ",".join(dtypes) or "float32"}
    if names is not None:
        props["class_names"] = json.dumps(names)
    helper.set_model_props(proto, props)
    if check:
        try:
            onnx.checker.check_model(proto, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ExportError(f"the exported graph does not pass onnx.checker: {str(e).strip().splitlines()[0]}") \
                from e
    if path is not None:
        atomic_write_bytes(path, proto.SerializeToString())
    return proto


# -- running an exported model ----------------------------------------------------------------------------
def run_onnxruntime(onnx_model, x, threads=1):
    """Outputs of ``onnx_model`` (a ModelProto, its bytes or a file path) for the batch ``x``, run by onnxruntime's
    CPU provider on ``threads`` threads."""
    ort = require("onnxruntime", "running an exported model")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # errors only
    if isinstance(onnx_model, (str, os.PathLike)):
        src = os.fspath(onnx_model)
    else:
        src = onnx_model if isinstance(onnx_model, bytes) else onnx_model.SerializeToString()
    session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def reference_outputs(model, x, output="probabilities"):
    """What the exported graph should give for ``x``: cnnframe's eval-mode outputs (their softmax over axis 1
    for ``output="probabilities"``), in float64."""
    was = model.training
    model.eval()
    try:
        y = model.forward(np.asarray(x)).astype(np.float64)
    finally:
        model.train(was)
    return softmax(y) if output == "probabilities" else y
