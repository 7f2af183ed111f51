"""YAML text → plain data with the line of every key, ``--set key.path=value`` overrides, key paths.

Anchors and aliases are resolved with a bound: a document that would expand to more than
``MAX_VALUES`` values (a few kilobytes of nested aliases can stand for billions) or nest deeper than
``MAX_DEPTH`` is refused before anything walks it.
"""
import re

import yaml

from cnnframe.errors import ConfigError

__all__ = ["parse_yaml", "parse_value", "split_key_path", "join_key_path", "apply_override", "line_of",
           "override_source", "MAX_VALUES", "MAX_DEPTH"]

#: most values (mappings, lists and scalars, aliases expanded) one YAML document or --set value may hold
MAX_VALUES = 100_000
#: deepest nesting of mappings and lists
MAX_DEPTH = 100


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-4`` as a float (YAML 1.1 would make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _check_size(root, file):
    """Count the values ``root`` stands for with aliases expanded (each distinct node once, so the
    count costs as much as the text), and its depth; refuse a document past the bounds."""
    size, depth = {}, {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if not children_done:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
            continue
        size[id(node)] = 1 + sum(size.get(id(k), 0) for k in kids)
        depth[id(node)] = 1 + max((depth.get(id(k), 0) for k in kids), default=0)
        if size[id(node)] > MAX_VALUES:
            raise ConfigError(f"the YAML expands to more than {MAX_VALUES:,} values (anchors and aliases repeat "
                              f"what they name, so a short text can stand for a huge one); refusing it",
                              file=file, line=node.start_mark.line + 1)
        if depth[id(node)] > MAX_DEPTH:
            raise ConfigError(f"the YAML nests deeper than {MAX_DEPTH} levels; refusing it", file=file,
                              line=node.start_mark.line + 1)


def _load(text, file):
    """(data, root node) of one YAML document, bounded; ConfigError for malformed or oversized YAML."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_size(node, file)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError(f"malformed YAML: {what}", file=file, line=line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML: {e}", file=file) from None
    except RecursionError:
        raise ConfigError(f"the YAML nests too deeply (more than {MAX_DEPTH} levels); refusing it", file=file) from None
    return data, node


def parse_yaml(text, file=None):
    """Parse YAML text → (data, lines) where ``lines`` maps key paths to 1-based line numbers."""
    data, node = _load(text, file)
    lines = {}
    if node is not None:
        _walk_lines(node, lines, file)
    return data, lines


def parse_value(text, source=None):
    """A ``--set`` value: YAML, bounded like a file."""
    return _load(text, source)[0] if text.strip() else None


def _walk_lines(root, lines, file):
    stack = [(root, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for knode, vnode in node.value:
                key = str(knode.value)
                p = f"{path}.{key}" if path else key
                if key in seen:
                    raise ConfigError(f"duplicate key {key!r}", file=file, key=p, line=knode.start_mark.line + 1)
                seen.add(key)
                lines[p] = knode.start_mark.line + 1
                stack.append((vnode, p))
        elif isinstance(node, yaml.SequenceNode):
            for i, vnode in enumerate(node.value):
                p = f"{path}[{i}]"
                lines[p] = vnode.start_mark.line + 1
                stack.append((vnode, p))


# -- key paths and --set overrides ----------------------------------------------------------------
_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]*)((?:\[-?\d+\])*)")


def split_key_path(path):
    """``"model.layers[1].out_channels"`` → ``["model", "layers", 1, "out_channels"]``."""
    if not isinstance(path, str) or not path:
        raise ValueError("empty key path")
    parts = []
    for piece in path.split("."):
        m = _TOKEN.fullmatch(piece)
        if not m:
            raise ValueError(f"bad key path {path!r} (near {piece!r}); expected e.g. model.layers[1].out_channels")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(-?\d+)\]", m.group(2)))
    return parts


def join_key_path(parts):
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _step(node, part, parts, i, src, key):
    """The container at ``parts[i]`` inside ``node`` (a list index is normalised in ``parts``)."""
    where = join_key_path(parts[:i]) or "config"
    if isinstance(part, int):
        if not isinstance(node, list):
            raise ConfigError(f"{where} is not a list", file=src, key=key)
        if not -len(node) <= part < len(node):
            raise ConfigError(f"index {part} out of range: the list has {len(node)} items", file=src, key=key)
        parts[i] = part % len(node)  # so errors about model.layers[-1] are traced back to this --set
    elif not isinstance(node, dict):
        raise ConfigError(f"{where} is not a mapping", file=src, key=key)


def apply_override(data, assignment):
    """Apply one ``key.path=value`` (value parsed as YAML) to the raw config dict, in place.

    Returns the normalised key path.  Missing mappings on the way are created; list indices must exist.
    """
    src = f"--set {assignment}"
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError("expected KEY=VALUE, e.g. --set trainer.epochs=5", file=src)
    path, _, text = assignment.partition("=")
    path = path.strip()
    try:
        parts = split_key_path(path)
    except ValueError as e:
        raise ConfigError(str(e), file=src) from None
    try:
        value = parse_value(text, src)
    except ConfigError as e:
        raise ConfigError(f"cannot parse value {text!r} as YAML: {e.message}", file=src, key=path) from None
    node = data
    for i, part in enumerate(parts[:-1]):
        _step(node, part, parts, i, src, join_key_path(parts[: i + 1]))
        if isinstance(part, int):
            node = node[part]
        else:
            if node.get(part) is None:
                node[part] = [] if isinstance(parts[i + 1], int) else {}
            node = node[part]
    _step(node, parts[-1], parts, len(parts) - 1, src, path)
    node[parts[-1]] = value
    return join_key_path(parts)


def override_source(key, overridden):
    """The ``--set`` (of ``{normalised key: source}``) that a key path comes from or contains, if any."""
    if not key:
        return None
    for k, src in overridden.items():
        if key == k or key.startswith((k + ".", k + "[")) or k.startswith((key + ".", key + "[")):
            return src
    return None


def line_of(key, lines):
    """The line of ``key``, else of its nearest parent that has one."""
    while key:
        if key in lines:
            return lines[key]
        cut = max(key.rfind("."), key.rfind("["))
        key = key[:cut] if cut > 0 else ""
    return None
