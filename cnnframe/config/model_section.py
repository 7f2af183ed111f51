"""The ``model`` section: layer specs → layers, the shape of every layer's output, the memory it needs.

Each layer is built by ``cnnframe.layers.spec.build_layer`` (the same code that reloads a checkpoint),
its errors reported at ``model.layers[i]`` and the key they name.  Shapes come from running
``output_shape`` down the chain (``Sequential.output_shapes``), before anything is allocated.

Memory.  The estimate at the batch size B, in the model's dtype, is

    4 × (parameters and buffers)  +  3 × B × (input + every layer's output)

(values, gradients and up to two optimizer slots per parameter; the outputs kept for backward, their
gradients and the layers' saved inputs; a block counts by its output).  Past ``trainer.memory_limit`` (GiB) the config is refused:
the outputs are counted from the shapes alone, and the parameters as the layers allocate them, each
allocation checked against what is left before it is made (``layers.base.allocation_limit``).
"""
import contextlib

from cnnframe.checks import did_you_mean, show
from cnnframe.config.schema import mapping
from cnnframe.errors import ConfigError, MemoryLimitError
from cnnframe.layers.base import format_bytes
from cnnframe.layers.spec import build_layer, join_key
from cnnframe.locate import code_location
from cnnframe.model import Sequential

__all__ = ["resolve_model", "build_layer_at", "build_model", "check_model", "check_memory", "layer_errors",
           "memory_bytes", "GIB", "PARAMETER_FACTOR"]

GIB = 1 << 30
PARAMETER_FACTOR, ACTIVATION_FACTOR = 4, 3
_RAISE_LIMIT = ("; shrink the model or the batch, or raise trainer.memory_limit (GiB; e.g. "
                "--set trainer.memory_limit=32, or null for no limit)")


def _layer_name(layer):
    return type(layer).__dict__.get("registered_name") or type(layer).__name__


def build_layer_at(spec, plugins, dtype, key):
    """One layer of the config; every failure as a ConfigError at its key path."""
    try:
        return build_layer(spec, plugins, dtype)
    except ConfigError as e:
        e.key = join_key(key, e.key)
        raise
    except MemoryLimitError as e:
        raise ConfigError(f"{e}{_RAISE_LIMIT}", key=key) from None
    except Exception as e:
        where = join_key(key, getattr(e, "key", None))
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        name = getattr(e, "layer_type", None)  # set when the layer's own constructor raised
        if name is None:
            raise ConfigError(str(message), key=where) from None
        if isinstance(e, (TypeError, ValueError)):
            raise ConfigError(f"invalid layer {name!r}: {message}", key=where) from None
        raise ConfigError(f"layer {name!r} raised {type(e).__name__}: {e}{code_location(e)}", key=where) from None


def resolve_model(raw, input_shape, num_classes, dtype, plugins, key="model"):
    """Check the model section → (resolved section, layers (built objects, not yet allocated unless
    their input sizes were given), per-layer output shapes, input shape)."""
    section = mapping(raw, key)
    for k in section:
        if k not in ("input_shape", "layers"):
            raise ConfigError(f"unknown key {k!r}{did_you_mean(k, ['input_shape', 'layers'])} "
                              f"(known: input_shape, layers)", key=f"{key}.{k}")
    given = section.get("input_shape")
    if given is not None:
        if (not isinstance(given, list) or not given
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in given)):
            raise ConfigError(f"must be a list of positive integers such as [1, 8, 8], got {show(given)}",
                              key=f"{key}.input_shape")
        if input_shape is not None and tuple(given) != tuple(input_shape):
            raise ConfigError(f"is {tuple(given)} but the data's samples have shape {tuple(input_shape)}",
                              key=f"{key}.input_shape")
        input_shape = tuple(given)
    if input_shape is None:
        raise ConfigError("the input shape is unknown: give model.input_shape", key=f"{key}.input_shape")
    specs = section.get("layers")
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"must be a non-empty list of layers, got {show(specs)}", key=f"{key}.layers")
    layers = [build_layer_at(spec, plugins, dtype, f"{key}.layers[{i}]") for i, spec in enumerate(specs)]
    shapes = _shapes(layers, input_shape, f"{key}.layers")
    if num_classes is not None and shapes[-1] != (num_classes,):
        raise ConfigError(
            f"the model's output shape is {shapes[-1]} but the data has {num_classes} classes: the last layer "
            f"must output ({num_classes},), e.g. a dense layer with out_features: {num_classes}",
            key=f"{key}.layers[{len(layers) - 1}]",
        )
    resolved = {"input_shape": list(given) if given is not None else None,
                "layers": [_copy(spec) for spec in specs]}
    return resolved, layers, shapes, tuple(input_shape)


def _copy(value):
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _shapes(layers, input_shape, key):
    try:
        return Sequential(layers).output_shapes(input_shape)
    except Exception as e:
        i = getattr(e, "layer_index", None)
        if i is None:
            raise
        name, shape, reason = _layer_name(layers[i]), e.layer_input_shape, e.reason
        if reason is None:
            message = str(e)
        elif isinstance(e, (TypeError, ValueError)):
            message = f"layer {i} ({name}) does not fit its input of shape {shape}: {reason}"
        else:
            message = f"layer {i} ({name}).output_shape{shape} raised {reason}"
        raise ConfigError(message, key=f"{key}[{i}]") from None


# -- memory ------------------------------------------------------------------------------------------------------
def memory_bytes(input_shape, shapes, batch_size, itemsize, parameter_bytes):
    """(estimated total, the outputs' share) in bytes (see the module docstring)."""
    values = _size(input_shape) + sum(_size(s) for s in shapes)
    outputs = ACTIVATION_FACTOR * batch_size * itemsize * values
    return PARAMETER_FACTOR * parameter_bytes + outputs, outputs


def _size(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def check_memory(limit_bytes, input_shape, shapes, batch_size, itemsize, budget, key="model.layers"):
    """Refuse the outputs' memory past the limit; lower the parameter budget to what is left."""
    if limit_bytes is None:
        return
    total, outputs = memory_bytes(input_shape, shapes, batch_size, itemsize, budget.used)
    if total > limit_bytes:
        big = max(range(len(shapes)), key=lambda i: _size(shapes[i]))
        params = f"; parameters {format_bytes(PARAMETER_FACTOR * budget.used)}" if budget.used else ""
        raise ConfigError(
            f"the model needs about {format_bytes(total)} at batch size {batch_size} (layer outputs "
            f"{format_bytes(outputs)}, the largest {tuple(shapes[big])} per sample from this layer{params}), past "
            f"trainer.memory_limit ({format_bytes(limit_bytes)}){_RAISE_LIMIT}", key=f"{key}[{big}]")
    budget.limit = min(budget.limit, (limit_bytes - outputs) // PARAMETER_FACTOR)


@contextlib.contextmanager
def layer_errors(key="model.layers"):
    """Report an error about layer i of a model (its ``layer_index``) as a ConfigError at ``model.layers[i]``."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:
        i = getattr(e, "layer_index", None)
        if i is None:
            raise
        raise ConfigError(f"{e}{_RAISE_LIMIT if isinstance(e, MemoryLimitError) else ''}", key=f"{key}[{i}]") from None


def build_model(layers, input_shape):
    """``Sequential(layers, input_shape)``: allocates the parameters within the active budget."""
    with layer_errors():
        return Sequential(layers, input_shape=input_shape)


def check_model(model, dtype):
    """``model.check()`` (two zero samples forward and backward) with failures at ``model.layers[i]``."""
    with layer_errors():
        model.check(dtype=dtype)
