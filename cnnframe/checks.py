"""Argument checks: the one vocabulary that constructors and the config schema share.

Each ``check_*`` returns the value normalised (a float, an int, ...) or raises ``ValueError`` naming
the owner, the argument and what was expected::

    check_number("lr", -1, "SGD", gt=0)          # ValueError: SGD: lr must be > 0, got -1
    check_int("out_features", 0, "Dense", ge=1)  # ValueError: Dense: out_features must be a positive integer
                                                 # (>= 1), got 0

Without an owner the message starts at "must be", which is how the config schema reports a value
against its key path.  ``check_keywords`` compares keyword arguments with a constructor's
signature (unknown names get a did-you-mean).  Each value is checked once, where it is used.
"""
import difflib
import inspect
import math
import numbers

__all__ = ["check_number", "check_int", "pair", "check_bool", "check_str", "check_choice", "check_keywords",
           "KeywordError", "did_you_mean", "show", "signature", "keyword_defaults", "plain"]


def show(value):
    """A value as a message shows it: strings quoted, lists in brackets, mappings by name only."""
    if isinstance(value, (list, tuple)):
        return f"a list {list(value)!r}"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def did_you_mean(name, candidates):
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""``."""
    hint = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _fail(owner, name, what, value):
    head = f"{owner}: {name} must be" if owner else "must be"
    raise ValueError(f"{head} {what}, got {show(value)}")


def _bounds(gt, ge, lt, le):
    return [(op, b) for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]


def _in_bounds(v, bounds):
    ops = {">": v.__gt__, ">=": v.__ge__, "<": v.__lt__, "<=": v.__le__}
    return all(ops[op](b) for op, b in bounds)


def describe_number(kind, gt=None, ge=None, lt=None, le=None, nullable=False):
    """'a number > 0 and <= 1', 'a positive integer (>= 1)', ...: what a check accepts, in words."""
    bounds = _bounds(gt, ge, lt, le)
    if kind == "integer" and bounds in ([(">=", 1)], [(">=", 0)]):
        text = "a positive integer (>= 1)" if bounds[0][1] == 1 else "a non-negative integer (>= 0)"
    else:
        text = ("an integer" if kind == "integer" else "a number") + "".join(
            (" " if i == 0 else " and ") + f"{op} {b}" for i, (op, b) in enumerate(bounds))
    return text + (" or null" if nullable else "")


def pair(value, name, minimum, owner=None):
    """An int or an (h, w) pair → a tuple of two ints >= ``minimum`` (kernel sizes, strides, padding, dilation).

    Layers normalise their pairs once at construction and the ops once per call, so the common case
    (plain ints, or a tuple of ints) takes a fast path: the ABC checks below cost microseconds.
    """
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if value[0] >= minimum and value[1] >= minimum:
            return value
    elif type(value) is int and value >= minimum:
        return (value, value)
    head = f"{owner}: {name}" if owner else name
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        items = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        items = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{head} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{head} must be >= {minimum}, got {value!r}")
    return items


def check_number(name, value, owner, gt=None, ge=None, lt=None, le=None, nullable=False, what=None):
    """A finite real number within the given bounds, as a float (None passes when ``nullable``)."""
    if value is None and nullable:
        return None
    bounds = _bounds(gt, ge, lt, le)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        _fail(owner, name, what or "a finite number", value)
    v = float(value)
    if not _in_bounds(v, bounds):
        _fail(owner, name, what or " and ".join(f"{op} {b}" for op, b in bounds), value)
    return v


def check_int(name, value, owner, ge=None, le=None, nullable=False, allow_float=False):
    """An integer within the bounds, as an int.  ``allow_float``: 3.0 counts as 3 (YAML reads 1e3 as a float)."""
    if value is None and nullable:
        return None
    what = describe_number("integer", ge=ge, le=le, nullable=nullable)
    if allow_float and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(owner, name, what, value)
    v = int(value)
    if not _in_bounds(v, _bounds(None, ge, None, le)):
        _fail(owner, name, what, value)
    return v


def check_bool(name, value, owner, nullable=False):
    if value is None and nullable:
        return None
    if not isinstance(value, bool):
        _fail(owner, name, "true or false", value)
    return value


def check_str(name, value, owner, nullable=False):
    """A non-empty string."""
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        _fail(owner, name, "a non-empty string" + (" or null" if nullable else ""), value)
    return value


def check_choice(name, value, owner, choices, nullable=False):
    """One of ``choices`` (a did-you-mean for a near miss)."""
    if value is None and nullable:
        return None
    if value not in choices:
        head = f"{owner}: {name} must be" if owner else "must be"
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"{head} one of {', '.join(map(str, choices))}, got {show(value)}{hint}")
    return value


# -- keyword arguments against a signature ------------------------------------------------------------
class KeywordError(TypeError):
    """A keyword argument a constructor does not take, or a required one that is missing; ``name`` is it."""

    def __init__(self, message, name=None):
        super().__init__(message)
        self.name = name


def signature(obj):
    """(parameters by name, accepts **kwargs) of a class's constructor or a function."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}, True
    params = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return params, var_kw


def check_keywords(obj, kwargs, reserved=()):
    """Raise KeywordError for a keyword ``obj`` does not accept (with a did-you-mean) or a required one
    missing from ``kwargs``; ``reserved`` are supplied by the caller.  Returns (parameters, accepts **kwargs)."""
    params, var_kw = signature(obj)
    allowed = [n for n in params if n not in reserved]
    if not var_kw:
        for k in kwargs:
            if k not in allowed:
                raise KeywordError(f"unknown key {k!r}{did_you_mean(k, allowed)} "
                                   f"(accepted: {', '.join(allowed) or 'none'})", k)
    for n, p in params.items():
        if n not in reserved and n not in kwargs and p.default is inspect.Parameter.empty:
            raise KeywordError(f"missing required key {n!r}", n)
    return params, var_kw


def keyword_defaults(obj, reserved=()):
    """The plain (YAML-ready) default values of ``obj``'s keyword parameters."""
    params, _ = signature(obj)
    out = {}
    for n, p in params.items():
        d = p.default
        if n in reserved or d is inspect.Parameter.empty:
            continue
        if d is None or isinstance(d, (bool, int, float, str, tuple, list)):
            out[n] = plain(d)
    return out


def plain(value):
    """Tuples → lists, recursively, so a value is plain YAML and JSON."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
