"""Where a training step's time goes: milliseconds per layer, forward and backward, as ``caffe time`` shows.

A step here is what ``Trainer.train_epoch`` does for one batch: gather the batch (and shift it when
augmentation is on), zero the gradients, run each layer forward, the loss forward and backward, each
layer backward in reverse order (the first layer skips its input gradient when it can), and the
optimizer step.  Layers that ``Sequential`` runs as one pass (a BatchNorm with the ReLU and the max
pooling after it) are timed as one: the first layer's row has their time, the others say they are fused.  Each piece is timed on its own with ``time.perf_counter`` around the call, after
``warmup`` untimed steps, and averaged over ``batches`` steps.  Convolutions also get their
arithmetic rate: a forward pass is 2·N·K·Ho·Wo·C·kh·kw floating-point operations (math.md eq. (1)),
the weight gradient (eq. (2)) and the input gradient (eq. (4)) as many again each.

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
from cnnframe.layers.fusion import fusion_plan
from cnnframe.trainer import Trainer

__all__ = ["Profile", "Row", "profile_training", "profile_config", "conv_flops"]


class Row:
    """One line of the table: a layer (``index`` >= 0) or a stage of the step (data, loss, optimizer)."""

    def __init__(self, name, index=None, shape=None, flops=(0, 0)):
        self.name, self.index, self.shape = name, index, shape
        self.flops = flops  # floating-point operations per step: (forward, backward)
        self.forward_s = 0.0
        self.backward_s = 0.0
        self.other_s = 0.0  # stages that are neither forward nor backward: data, optimizer
        self.is_conv = False
        self.fused_into = None  # index of the layer that runs this one in its own passes

    @property
    def total_s(self):
        return self.forward_s + self.backward_s + self.other_s


class Profile:
    """Per-step timings (seconds summed over ``batches`` steps) and what they were measured on."""

    def __init__(self, rows, batches, batch_size, dtype, threads, dynamic, title=""):
        self.rows, self.batches, self.batch_size = rows, batches, batch_size
        self.dtype, self.threads, self.dynamic, self.title = dtype, threads, dynamic, title

    @property
    def step_ms(self):
        """Mean milliseconds of a whole step (the sum of every row)."""
        return 1000.0 * sum(r.total_s for r in self.rows) / self.batches

    def ms(self, row, part="total"):
        return 1000.0 * getattr(row, f"{part}_s") / self.batches

    def share(self, row):
        """The row's fraction of the step (the rows' shares add up to 1)."""
        total = sum(r.total_s for r in self.rows)
        return row.total_s / total if total > 0 else 0.0

    def conv_share(self):
        return sum(self.share(r) for r in self.rows if r.is_conv)

    def as_dict(self):
        return {"title": self.title, "batches": self.batches, "batch_size": self.batch_size, "dtype": self.dtype,
                "threads": self.threads, "dynamic": self.dynamic, "step_ms": self.step_ms,
                "rows": [{"name": r.name, "index": r.index, "shape": r.shape, "forward_ms": self.ms(r, "forward"),
                          "backward_ms": self.ms(r, "backward"), "total_ms": self.ms(r), "share": self.share(r),
                          "gflops": self._rates(r)} for r in self.rows]}

    def _rates(self, row):
        if not row.is_conv:
            return None
        f = row.flops[0] / (row.forward_s / self.batches) / 1e9 if row.forward_s > 0 else 0.0
        b = row.flops[1] / (row.backward_s / self.batches) / 1e9 if row.backward_s > 0 else 0.0
        return (f, b)

    def table(self):
        """The profile as a text table, one row per layer plus data, loss, optimizer and the whole step."""
        dyn = "on" if self.dynamic else "off"
        head = (f"{self.title + ': ' if self.title else ''}batch {self.batch_size}, mean of {self.batches} steps, "
                f"{self.dtype}, {self.threads} thread{'s' if self.threads != 1 else ''} (dynamic threads {dyn})")
        cols = ("#", "stage", "output shape", "forward ms", "backward ms", "total ms", "share", "GFLOP/s fwd/bwd")
        lines = []
        for r in self.rows:
            rates = self._rates(r)
            if r.fused_into is not None:
                lines.append((str(r.index), r.name, _shape(r.shape), "-", "-", "-", f"(fused into {r.fused_into})", ""))
                continue
            lines.append((
                "" if r.index is None else str(r.index), r.name, "" if r.shape is None else _shape(r.shape),
                _num(self.ms(r, "forward")) if r.forward_s else "-",
                _num(self.ms(r, "backward")) if r.backward_s else "-",
                _num(self.ms(r)), f"{100.0 * self.share(r):.1f}%",
                "" if rates is None else f"{rates[0]:.0f} / {rates[1]:.0f}",
            ))
        fwd = sum(self.ms(r, "forward") for r in self.rows)
        bwd = sum(self.ms(r, "backward") for r in self.rows)
        total = ("", "step", "", _num(fwd), _num(bwd), _num(self.step_ms), "100.0%", "")
        widths = [max(len(x[i]) for x in [cols, total] + lines) for i in range(len(cols))]
        left = (1, 2)

        def fmt(cells):
            return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "  ".join("-" * w for w in widths)
        body = [head, fmt(cols), rule] + [fmt(x) for x in lines] + [rule, fmt(total)]
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


def profile_training(model, loss, optimizer, X, y, *, batch_size=64, batches=20, warmup=2, shift=0, seed=0,
                     targets=None, title=""):
    """Time ``warmup`` + ``batches`` training steps of a built ``Sequential`` on (X, y); returns a Profile.

    The steps change the model's weights and the optimizer's state, as training does.  ``targets(y_batch)``
    maps labels to what the loss takes (default: the labels themselves).
    """
    if batches < 1 or warmup < 0:
        raise ValueError(f"batches must be >= 1 and warmup >= 0, got batches={batches}, warmup={warmup}")
    if len(y) == 0:
        raise ValueError("profile: the training data is empty")
    layers = list(model.layers)
    shapes = [tuple(model.input_shape)] + [tuple(s) for s in model.shapes]
    first = layers[0] if layers else None
    skip_dx = first is not None and hasattr(first, "need_input_grad")
    rows = [Row("data", shape=shapes[0])]
    for i, layer in enumerate(layers):
        row = Row(type(layer).__name__, i, shapes[i + 1])
        if isinstance(layer, Conv2D):
            row.is_conv = True
            bs = min(batch_size, len(y))
            row.flops = conv_flops(layer, shapes[i], bs, input_grad=not (i == 0 and skip_dx))
        rows.append(row)
    loss_row, opt_row = Row("loss"), Row("optimizer")
    rows += [loss_row, opt_row]
    data_row, layer_rows = rows[0], rows[1:1 + len(layers)]
    groups = fusion_plan(layers)
    for i, k in groups:
        for j in range(i + 1, i + 1 + k):
            layer_rows[j].fused_into = i
    rng = np.random.default_rng(seed)
    plan = []
    model.train()
    for step in range(warmup + batches):
        timed = step >= warmup
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
            out = layers[i].forward_fused(out, tuple(layers[i + 1:i + 1 + k])) if k else layers[i].forward(out)
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
                g = layers[i].backward_fused(g, tuple(layers[i + 1:i + 1 + k])) if k else layers[i].backward(g)
                if timed:
                    layer_rows[i].backward_s += _clock() - t0
        finally:
            if skip_dx:
                first.need_input_grad = old
        t0 = _clock()
        optimizer.step()
        if timed:
            opt_row.other_s += _clock() - t0
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
