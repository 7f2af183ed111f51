"""Where a training step's time goes: milliseconds per layer, forward and backward, as ``caffe time`` shows.

A step here is what ``Trainer.train_epoch`` does for one batch: gather the batch (and shift it when
augmentation is on), zero the gradients, run each layer forward, the loss forward and backward, each
layer backward in reverse order (the first layer skips its input gradient when it can), and the
optimizer step.  Layers that ``Sequential`` runs as one pass (a BatchNorm with the ReLU and the max
pooling after it) are timed as one: the first layer's row has their time, the others say they are fused.
Each piece is timed on its own with ``time.perf_counter`` around the call, after ``warmup`` untimed
steps, and averaged over ``batches`` steps.  Convolutions also get their arithmetic rate: a forward
pass is 2·N·K·Ho·Wo·C·kh·kw floating-point operations (math.md eq. (1)), the weight gradient (eq. (2))
and the input gradient (eq. (4)) as many again each.

A block (a layer with ``named_children()``: ``Residual``, ``Concat``) gets a row with its whole time
and, under it, a row for each of its children at any depth, named by path (``3.layers.0``,
``4.shortcut.0``, ``3.activation``).  The children are timed by wrapping their ``forward``,
``backward``, ``forward_fused`` and ``backward_fused`` as instance attributes while the profile runs
(removed afterwards, also on error); their shapes and flops are those of the calls they got, and a
child whose work another child ran in its own pass (a block fuses BatchNorm → ReLU → max pooling in
its child lists as ``Sequential`` does) says so.  A child's time, and so its block's, includes the
wrappers' own cost (two clock reads and a Python call, about a microsecond per call).  The step is
the sum of the top-level rows only; the convolutions' share counts every Conv2D, at any depth, once.

From Python::

    import cnnframe.config
    from cnnframe.profiler import profile_config
    print(profile_config(cnnframe.config.load("configs/cifar-size.yaml"), batches=10).table())
"""
import time

import numpy as np

from cnnframe import parallel
from cnnframe.data import batches as batch_indices
from cnnframe.data import random_shift
from cnnframe.layers.conv import Conv2D
from cnnframe.layers.fusion import backward_step, forward_step, fusion_plan
from cnnframe.trainer import Trainer

__all__ = ["Profile", "Row", "profile_training", "profile_config", "conv_flops"]


class Row:
    """One line of the table: a layer or a stage of the step (data, loss, optimizer).

    A model's layer has ``index`` >= 0, ``path`` ``str(index)`` and ``depth`` 0; a child of a block, at any
    depth, has ``index`` None, ``depth`` >= 1, a ``path`` such as ``"3.layers.0"`` and ``parent``, the
    path of its block.  Stages have neither index nor path.
    """

    def __init__(self, name, index=None, shape=None, flops=(0, 0), path=None, depth=0, parent=None):
        self.name, self.index, self.shape = name, index, shape
        self.path = str(index) if path is None and index is not None else path
        self.depth, self.parent = depth, parent
        self.flops = flops  # floating-point operations per step: (forward, backward)
        self.forward_s = 0.0
        self.backward_s = 0.0
        self.other_s = 0.0  # stages that are neither forward nor backward: data, optimizer
        self.is_conv = False
        self.fused_into = None  # path of the layer that runs this one in its own passes

    @property
    def total_s(self):
        return self.forward_s + self.backward_s + self.other_s


class Profile:
    """Per-step timings (seconds summed over ``batches`` steps) and what they were measured on.

    ``rows`` lists the top-level rows (depth 0) in step order, each block's row followed by its
    children's rows (depth >= 1), whose time is also in the block's.
    """

    def __init__(self, rows, batches, batch_size, dtype, threads, dynamic, title=""):
        self.rows, self.batches, self.batch_size = rows, batches, batch_size
        self.dtype, self.threads, self.dynamic, self.title = dtype, threads, dynamic, title

    def top_rows(self):
        """The rows whose times add up to the step: data, each layer of the model, loss, optimizer."""
        return [r for r in self.rows if r.depth == 0]

    def _step_s(self):
        return sum(r.total_s for r in self.top_rows())

    @property
    def step_ms(self):
        """Mean milliseconds of a whole step (the sum of the top-level rows)."""
        return 1000.0 * self._step_s() / self.batches

    def ms(self, row, part="total"):
        return 1000.0 * getattr(row, f"{part}_s") / self.batches

    def share(self, row):
        """The row's fraction of the step (the top-level rows' shares add up to 1)."""
        total = self._step_s()
        return row.total_s / total if total > 0 else 0.0

    def conv_share(self):
        """The fraction of the step spent in convolutions: every Conv2D row, top-level or in a block, once
        (a block's row is not a conv row, so its children's time is not counted twice)."""
        return sum(self.share(r) for r in self.rows if r.is_conv)

    def as_dict(self):
        """The profile as plain data; ``depth`` and ``parent`` (a block's ``path``) rebuild the tree."""
        return {"title": self.title, "batches": self.batches, "batch_size": self.batch_size, "dtype": self.dtype,
                "threads": self.threads, "dynamic": self.dynamic, "step_ms": self.step_ms,
                "rows": [{"name": r.name, "index": r.index, "path": r.path, "depth": r.depth, "parent": r.parent,
                          "shape": r.shape, "fused_into": r.fused_into, "forward_ms": self.ms(r, "forward"),
                          "backward_ms": self.ms(r, "backward"), "total_ms": self.ms(r), "share": self.share(r),
                          "gflops": self._rates(r)} for r in self.rows]}

    def _rates(self, row):
        if not row.is_conv:
            return None
        f = row.flops[0] / (row.forward_s / self.batches) / 1e9 if row.forward_s > 0 else 0.0
        b = row.flops[1] / (row.backward_s / self.batches) / 1e9 if row.backward_s > 0 else 0.0
        return (f, b)

    def table(self):
        """The profile as a text table: data, one row per layer (a block's children indented under it, by
        path), loss, optimizer and the whole step."""
        dyn = "on" if self.dynamic else "off"
        head = (f"{self.title + ': ' if self.title else ''}batch {self.batch_size}, mean of {self.batches} steps, "
                f"{self.dtype}, {self.threads} thread{'s' if self.threads != 1 else ''} (dynamic threads {dyn})")
        cols = ("#", "stage", "output shape", "forward ms", "backward ms", "total ms", "share", "GFLOP/s fwd/bwd")
        lines, fused = [], {}  # fused: line number → "(fused into PATH)", written across the time columns
        for r in self.rows:
            number = "" if r.index is None else str(r.index)
            label = r.name if r.depth == 0 else "  " * r.depth + f"{r.path}  {r.name}"
            shape = "" if r.shape is None else _shape(r.shape)
            if r.fused_into is not None:
                fused[len(lines)] = f"(fused into {r.fused_into})"
                lines.append((number, label, shape) + ("",) * 5)
                continue
            rates = self._rates(r)
            lines.append((
                number, label, shape,
                _num(self.ms(r, "forward")) if r.forward_s else "-",
                _num(self.ms(r, "backward")) if r.backward_s else "-",
                _num(self.ms(r)), f"{100.0 * self.share(r):.1f}%",
                "" if rates is None else f"{rates[0]:.0f} / {rates[1]:.0f}",
            ))
        fwd = sum(self.ms(r, "forward") for r in self.top_rows())
        bwd = sum(self.ms(r, "backward") for r in self.top_rows())
        total = ("", "step", "", _num(fwd), _num(bwd), _num(self.step_ms), "100.0%", "")
        widths = [max(len(x[i]) for x in [cols, total] + lines) for i in range(len(cols))]
        left = (1, 2)

        def fmt(cells):
            return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        def fmt_fused(cells, note):  # the note ends under "share", over the time columns it has no figures for
            return fmt(cells[:3]) + "  " + note.rjust(sum(widths[3:7]) + 2 * 3)

        rule = "  ".join("-" * w for w in widths)
        body = [head, fmt(cols), rule]
        body += [fmt_fused(x, fused[n]) if n in fused else fmt(x) for n, x in enumerate(lines)]
        body += [rule, fmt(total)]
        conv = self.conv_share()
        body.append(f"convolutions {100.0 * conv:.1f}% of the step, everything else {100.0 * (1 - conv):.1f}%; "
                    f"{1000.0 * self.batch_size / self.step_ms:.0f} samples/s")
        return "\n".join(line.rstrip() for line in body)

    def __str__(self):
        return self.table()


def _num(ms):
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}"


def _shape(shape):
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def conv_flops(layer, input_shape, batch, input_grad=True):
    """(forward, backward) floating-point operations of a Conv2D on ``batch`` samples of ``input_shape``."""
    c = input_shape[0]
    k, ho, wo = layer.output_shape(input_shape)
    kh, kw = layer.kernel_size
    one = 2 * batch * k * ho * wo * c * kh * kw
    return one, one * (2 if input_grad else 1)


def _clock():
    return time.perf_counter()


# -- the children of blocks ------------------------------------------------------------------------
class _Child:
    """A child of a block under the profiler: its row and what its timed calls showed."""

    def __init__(self, layer, row):
        self.layer, self.row = layer, row
        self.input_shape = None  # per-sample input shape of its last forward
        self.samples = 0  # samples through its forward over the timed steps
        self.absorbed = ()  # the layers its last forward_fused ran too
        self.input_grad = True  # whether its last backward computed dL/dx

    def saw(self, x, absorbed):
        self.input_shape = tuple(x.shape[1:])
        self.samples += len(x)
        self.absorbed = absorbed[0] if absorbed else ()


def _block_children(layer, path, depth=1):
    """A _Child for each child of ``layer`` (a block: it has ``named_children()``) at any depth, depth-first,
    each followed by its own children; paths extend the block's: ``3.layers.0``, ``3.layers.0.branches.1.0``."""
    named = getattr(layer, "named_children", None)
    children = []
    for sub, child in (named() if callable(named) else ()):
        row = Row(type(child).__name__, path=f"{path}.{sub}", depth=depth, parent=path)
        row.is_conv = isinstance(child, Conv2D)
        children.append(_Child(child, row))
        children += _block_children(child, row.path, depth + 1)
    return children


_MISSING = object()


class _ChildTimers:
    """While entered, each child's ``forward``, ``backward``, ``forward_fused`` and ``backward_fused`` (those it
    has) is an instance attribute that times the call and, when ``timed`` is true, adds the time to the child's
    row; leaving (also on an error) removes them, so the layers' own code runs unchanged and nothing is left
    behind.  A wrapper costs two clock reads and a Python call."""

    def __init__(self, children):
        self.children, self.timed = children, False
        self._saved = []  # (layer, method name, the instance attribute it replaced or _MISSING)

    def __enter__(self):
        try:
            for c in self.children:
                self._wrap(c)
        except BaseException:
            self._unwrap()
            raise
        return self

    def __exit__(self, *exc):
        self._unwrap()
        return False

    def _wrap(self, c):
        for name, timer in (("forward", self._forward), ("forward_fused", self._forward),
                            ("backward", self._backward), ("backward_fused", self._backward)):
            method = getattr(c.layer, name, None)
            if callable(method):
                self._saved.append((c.layer, name, vars(c.layer).get(name, _MISSING)))
                setattr(c.layer, name, timer(c, method))

    def _unwrap(self):
        while self._saved:
            layer, name, old = self._saved.pop()
            if old is _MISSING:
                delattr(layer, name)
            else:
                setattr(layer, name, old)

    def _forward(self, c, method):
        def forward(x, *absorbed, **options):  # forward(x) or forward_fused(x, absorbed)
            t0 = _clock()
            y = method(x, *absorbed, **options)
            t = _clock() - t0
            if self.timed:
                c.row.forward_s += t
                c.saw(x, absorbed)
            return y
        return forward

    def _backward(self, c, method):
        def backward(grad_out, *absorbed, **options):  # backward(g) or backward_fused(g, absorbed)
            input_grad = getattr(c.layer, "need_input_grad", True)  # a block turns it off for a first child
            t0 = _clock()
            g = method(grad_out, *absorbed, **options)
            t = _clock() - t0
            if self.timed:
                c.row.backward_s += t
                c.input_grad = input_grad
            return g
        return backward


def _describe_children(children, batches):
    """Fill in the children's rows from their timed calls: which ran inside another's pass (fused), the output
    shapes, and each convolution's flops per step for the inputs it got."""
    by_layer = {id(c.layer): c for c in children}
    for c in children:
        if c.input_shape is None or not c.absorbed:
            continue
        shape = tuple(c.layer.output_shape(c.input_shape))
        for layer in c.absorbed:
            other = by_layer.get(id(layer))
            if other is not None:
                other.row.fused_into, other.input_shape = c.row.path, shape
            shape = tuple(layer.output_shape(shape))
    for c in children:
        if c.input_shape is None:
            continue
        c.row.shape = tuple(int(s) for s in c.layer.output_shape(c.input_shape))
        if c.row.is_conv and c.samples:
            c.row.flops = tuple(n / batches for n in conv_flops(c.layer, c.input_shape, c.samples, c.input_grad))


# -- the step --------------------------------------------------------------------------------------
def profile_training(model, loss, optimizer, X, y, *, batch_size=64, batches=20, warmup=2, shift=0, seed=0,
                     targets=None, title=""):
    """Time ``warmup`` + ``batches`` training steps of a built ``Sequential`` on (X, y); returns a Profile.

    The steps change the model's weights and the optimizer's state, as training does.  ``targets(y_batch)``
    maps labels to what the loss takes (default: the labels themselves).  The children of blocks get rows
    of their own, timed through wrappers that are removed when this returns or raises; their times (and
    so their blocks') include the wrappers' small cost.
    """
    if batches < 1 or warmup < 0:
        raise ValueError(f"batches must be >= 1 and warmup >= 0, got batches={batches}, warmup={warmup}")
    if len(y) == 0:
        raise ValueError("profile: the training data is empty")
    layers = list(model.layers)
    shapes = [tuple(model.input_shape)] + [tuple(s) for s in model.shapes]
    first = layers[0] if layers else None
    skip_dx = first is not None and hasattr(first, "need_input_grad")
    rows, layer_rows, children = [Row("data", shape=shapes[0])], [], []
    for i, layer in enumerate(layers):
        row = Row(type(layer).__name__, i, shapes[i + 1])
        if isinstance(layer, Conv2D):
            row.is_conv = True
            bs = min(batch_size, len(y))
            row.flops = conv_flops(layer, shapes[i], bs, input_grad=not (i == 0 and skip_dx))
        inside = _block_children(layer, row.path)
        layer_rows.append(row)
        rows += [row] + [c.row for c in inside]
        children += inside
    loss_row, opt_row = Row("loss"), Row("optimizer")
    rows += [loss_row, opt_row]
    data_row = rows[0]
    groups = fusion_plan(layers)
    for i, k in groups:
        for j in range(i + 1, i + 1 + k):
            layer_rows[j].fused_into = layer_rows[i].path
    rng = np.random.default_rng(seed)
    plan = []
    model.train()
    with _ChildTimers(children) as child_timers:
        for step in range(warmup + batches):
            timed = child_timers.timed = step >= warmup
            if not plan:
                plan = list(batch_indices(len(y), batch_size, rng))
            t0 = _clock()
            idx = plan.pop(0)
            xb = random_shift(X[idx], shift, rng) if shift else X[idx]
            yb = y[idx] if targets is None else targets(y[idx])
            t1 = _clock()
            optimizer.zero_grad()
            t2 = _clock()
            if timed:
                data_row.other_s += t1 - t0
                opt_row.other_s += t2 - t1
            out = xb
            for i, k in groups:  # as Sequential.forward
                t0 = _clock()
                out = forward_step(layers, i, k, out)
                if timed:
                    layer_rows[i].forward_s += _clock() - t0
            t0 = _clock()
            loss.forward(out, yb)
            t1 = _clock()
            g = loss.backward()
            t2 = _clock()
            if timed:
                loss_row.forward_s += t1 - t0
                loss_row.backward_s += t2 - t1
            if skip_dx:
                old, first.need_input_grad = first.need_input_grad, False
            try:
                for i, k in reversed(groups):  # as Sequential.backward
                    t0 = _clock()
                    g = backward_step(layers, i, k, g)
                    if timed:
                        layer_rows[i].backward_s += _clock() - t0
            finally:
                if skip_dx:
                    first.need_input_grad = old
            t0 = _clock()
            optimizer.step()
            if timed:
                opt_row.other_s += _clock() - t0
    _describe_children(children, batches)
    dtype = np.dtype(X.dtype).name
    return Profile(rows, batches, min(batch_size, len(y)), dtype, parallel.get_num_threads(), parallel.get_dynamic(),
                   title)


def profile_config(setup, batches=20, warmup=2, title=""):
    """Profile the training step of a config on its training data: a ``Setup`` (``cnnframe.config.load``)
    or a resolved config dict."""
    trainer = Trainer.from_config(setup, quiet=True, create_run_dir=False)
    cfg = trainer.config
    X, y = trainer.data.train
    loss, classes = trainer.loss, trainer.data.num_classes
    return profile_training(trainer.model, loss, trainer.optimizer, X, y,
                            batch_size=cfg["trainer"]["batch_size"], batches=batches, warmup=warmup,
                            shift=cfg["data"]["augment"]["shift"], seed=cfg["trainer"]["seed"],
                            targets=lambda yb: loss.targets(yb, classes, X.dtype), title=title)
