"""A run you can look at: ``write_report(out_dir, ...)`` draws a run's plots as PNGs and puts them, inline, in one
self-contained ``report.html`` (images as base64 data URIs; nothing is fetched from a network).

Sections, each drawn from what is given and otherwise replaced by a line saying why it is missing:

- ``curves.png``: loss and accuracy per epoch, train and validation, the learning rate on a second axis
  (from the metrics rows: ``metrics.csv``);
- ``confusion.png``: the test confusion matrix as a heat map (rows: true class) with class names
  (``summary["test"]["confusion_matrix"]``);
- ``misclassified.png``: the first misclassified test images, each titled with its true and predicted class;
- ``filters.png``: the weights of the first convolution (the first layer with a 4-D ``weight``).

matplotlib is optional (the ``[plot]`` extra) and used without pyplot (a ``Figure`` drawn by Agg), so it never
changes the backend of the caller's session.  Every file is written atomically.
"""
import base64
import html
import io as _io
import math
import os

import numpy as np

from cnnframe.io import atomic_write_bytes, atomic_write_text
from cnnframe.losses import SoftmaxCrossEntropy
from cnnframe.optional import require
from cnnframe.trainer import evaluate_model

__all__ = ["write_report", "Report", "DPI", "FILES"]

DPI = 100
#: section → file name, in page order
FILES = {"curves": "curves.png", "confusion": "confusion.png", "misclassified": "misclassified.png",
         "filters": "filters.png"}
_TITLES = {"curves": "Training curves", "confusion": "Confusion matrix (test)",
           "misclassified": "Misclassified test images", "filters": "First convolution's filters"}
_CAPTIONS = {"curves": "curves.png: solid lines per epoch (left axis), learning rate dashed (right axis)",
             "confusion": "confusion.png: rows are true classes, columns predicted classes",
             "misclassified": "misclassified.png: true class → predicted class (its probability)",
             "filters": "filters.png: weights on one colour scale centred on 0 (red positive, blue negative)"}
_GRID_COLUMNS = 8  # misclassified images per row; also the filters per row


class Report:
    """What ``write_report`` wrote: ``html`` (path), ``images`` (section → PNG path), ``notes`` (section → why
    it is missing)."""

    def __init__(self, html_path, images, notes):
        self.html, self.images, self.notes = html_path, images, notes

    def __repr__(self):
        return f"Report({self.html!r}, images={sorted(self.images)}, missing={sorted(self.notes)})"


def _figure(width_px, height_px):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")


def _png(fig):
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # no bbox_inches="tight": the size stays figsize × DPI
    return buf.getvalue()


def _label(names, k):
    return names[k] if names is not None and 0 <= k < len(names) else str(k)


# -- the plots: each returns PNG bytes -----------------------------------------------------------------------------
def plot_curves(history):
    """Loss (left) and accuracy (right) per epoch, train and validation; learning rate on each panel's right axis.
    1000 × 400 pixels."""
    fig = _figure(1000, 400)
    epochs = np.array([r["epoch"] for r in history], dtype=float)
    lr = np.array([r.get("lr", math.nan) for r in history], dtype=float)
    for i, (metric, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for part, style in (("train", "-o"), ("val", "-s")):
            v = np.array([r.get(f"{part}_{metric}", math.nan) for r in history], dtype=float)
            if np.isfinite(v).any():
                ax.plot(epochs, v, style, markersize=3, label="validation" if part == "val" else part)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if np.isfinite(lr).any():
            ax2 = ax.twinx()
            (line,) = ax2.plot(epochs, lr, "--", color="0.5", label="learning rate")
            ax2.set_ylabel("learning rate")
            handles, labels = handles + [line], labels + ["learning rate"]
        ax.legend(handles, labels, loc="best", fontsize="small")
        ax.set_title(f"{label} per epoch")
    return _png(fig)


def confusion_size(k):
    """Pixel side of the confusion heat map for k classes (600 up to 10 classes, growing beyond)."""
    return int(max(600, 100 * math.ceil(0.45 * k + 1.5)))


def plot_confusion(cm, names=None):
    """The confusion matrix as a heat map, counts written in each cell (up to 30 classes). Square,
    ``confusion_size(k)`` pixels."""
    cm = np.asarray(cm)
    k = cm.shape[0]
    side = confusion_size(k)
    fig = _figure(side, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="test images")
    ticks = [_label(names, j) for j in range(k)]
    ax.set_xticks(range(k), ticks, rotation=45 if max(map(len, ticks)) > 2 else 0, ha="right" if
                  max(map(len, ticks)) > 2 else "center")
    ax.set_yticks(range(k), ticks)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 30:
        high = cm.max() / 2 if cm.size else 0
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize="small",
                            color="white" if cm[i, j] > high else "black")
    acc = np.trace(cm) / cm.sum() if cm.sum() else math.nan
    ax.set_title(f"accuracy {100 * acc:.2f}% on {int(cm.sum())} test images")
    return _png(fig)


def _display(img):
    """(C, H, W) → what imshow shows: (H, W) for one channel, (H, W, 3) in [0, 1] for three, else channel 0."""
    img = np.asarray(img, dtype=np.float64)
    if img.shape[0] == 3:
        lo, hi = img.min(), img.max()
        return (img.transpose(1, 2, 0) - lo) / (hi - lo) if hi > lo else np.zeros(img.shape[1:] + (3,))
    return img[0]


def misclassified_size(n):
    """Pixel size (width, height) of the grid of n misclassified images: 8 per row, 125 × 145 pixels each."""
    cols = min(n, _GRID_COLUMNS)
    return 125 * cols, 145 * math.ceil(n / cols)


def plot_misclassified(X, true, pred, prob=None, names=None):
    """A grid of images ``X`` (n, C, H, W) titled "true → predicted (probability)"; ``misclassified_size(n)``."""
    n = len(X)
    cols = min(n, _GRID_COLUMNS)
    fig = _figure(*misclassified_size(n))
    for i in range(n):
        ax = fig.add_subplot(math.ceil(n / cols), cols, i + 1)
        ax.imshow(_display(X[i]), cmap="gray", interpolation="nearest")
        p = f" ({prob[i]:.2f})" if prob is not None else ""
        ax.set_title(f"{_label(names, int(true[i]))} → {_label(names, int(pred[i]))}{p}", fontsize="small",
                     color="firebrick")
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


def filters_grid(weight_shape):
    """(rows, cols) of tiles for conv weights (K, C, kh, kw): one tile per filter (8 per row) when C is 1 or 3,
    else one row per filter and one column per input channel (at most 16)."""
    k, c = weight_shape[:2]
    if c in (1, 3):
        return math.ceil(k / min(k, _GRID_COLUMNS)), min(k, _GRID_COLUMNS)
    return k, min(c, 16)


def filters_size(weight_shape):
    """Pixel size (width, height) of the filter plot: 100 × 100 pixels per tile (at least 3 across), plus 40 for
    the title."""
    rows, cols = filters_grid(weight_shape)
    return 100 * max(cols, 3), 100 * rows + 40


def plot_filters(weight, title="first convolution"):
    """Conv weights (K, C, kh, kw): grey tiles on one diverging colour scale centred on 0 (RGB tiles, each
    stretched to [0, 1], for three input channels); ``filters_size(weight.shape)``."""
    w = np.asarray(weight, dtype=np.float64)
    k, c = w.shape[:2]
    rows, cols = filters_grid(w.shape)
    fig = _figure(*filters_size(w.shape))
    fig.suptitle(f"{title}: {k} filters of {c} channel(s), {w.shape[2]}×{w.shape[3]}", fontsize="small")
    vmax = float(np.max(np.abs(w))) or 1.0
    tiles = [(i, None) for i in range(k)] if c in (1, 3) else [(i, j) for i in range(k) for j in range(cols)]
    for t, (i, j) in enumerate(tiles):
        ax = fig.add_subplot(rows, cols, t + 1)
        if c == 3:
            ax.imshow(_display(w[i]), interpolation="nearest")
        else:
            ax.imshow(w[i, 0 if j is None else j], cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


# -- the page ------------------------------------------------------------------------------------------------------
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "img{max-width:100%;height:auto;border:1px solid #ddd}table{border-collapse:collapse}"
          "td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #eee}.note{color:#666;font-style:italic}")


def _summary_rows(summary):
    if not summary:
        return []
    rows = [("status", summary.get("status")),
            ("epochs", f"{summary.get('epochs_completed')} of {summary.get('epochs')}")]
    final = summary.get("final") or {}
    for part in ("train", "val"):
        loss, acc = final.get(f"{part}_loss"), final.get(f"{part}_acc")
        if loss is not None and acc is not None:
            rows.append((f"last epoch, {'validation' if part == 'val' else part}",
                         f"loss {loss:.4f}, accuracy {100 * acc:.2f}%"))
    test = summary.get("test")
    if test:
        rows.append(("test accuracy", f"{100 * test['acc']:.2f}% of {test['samples']} images "
                                      f"({test.get('checkpoint')} model, epoch {test.get('epoch')})"))
        rows.append(("test loss", f"{test['loss']:.4f}"))
    data = summary.get("data") or {}
    if data:
        rows.append(("data", f"{data.get('name')}: train {data.get('train')}, val {data.get('val')}, "
                             f"test {data.get('test')}"))
    if summary.get("train_seconds") is not None:
        rows.append(("training time", f"{summary['train_seconds']:.1f} s"))
    return rows


def render_html(title, summary, images, notes, captions=None, class_names=None):
    """The page: a summary table, then each section's image (inline, over its caption) or its note."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>"]
    rows = _summary_rows(summary)
    if rows:
        parts.append("<table>" + "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
                     + "</table>")
    for section in FILES:
        parts.append(f'<section id="{section}"><h2>{e(_TITLES[section])}</h2>')
        if section in images:
            data = base64.b64encode(images[section]).decode("ascii")
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{e(_TITLES[section])}">'
                         f'<p class="note">{e({**_CAPTIONS, **(captions or {})}[section])}</p>')
            if section == "confusion" and class_names:
                parts.append("<p>classes: " + ", ".join(f"{i}: {e(n)}" for i, n in enumerate(class_names)) + "</p>")
        else:
            parts.append(f'<p class="note">{e(notes.get(section, "not available"))}</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _first_conv_weight(model):
    for layer in getattr(model, "layers", ()):
        p = layer.parameters().get("weight")
        if p is not None and p.data.ndim == 4:
            return p.data
    return None


def _misclassified(model, test_data, loss, num_classes, limit, tta_shift=0):
    X, y = test_data
    res = evaluate_model(model, loss or SoftmaxCrossEntropy(), X, y, num_classes, tta_shift=tta_shift)
    wrong = np.flatnonzero(res["pred"] != y)
    probs = res["probs"]
    shown = wrong[:limit]
    prob = probs[shown, res["pred"][shown]] if probs is not None else None
    return X[shown], y[shown], res["pred"][shown], prob, len(wrong)


def write_report(out_dir, *, title="cnnframe run", history=(), summary=None, model=None, test_data=None, loss=None,
                 class_names=None, max_images=32, notes=None, tta_shift=0):
    """Write ``report.html`` and the PNGs of every section that can be drawn into ``out_dir``; returns a Report.

    history: metrics rows (``epoch``, ``lr``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``); summary:
    the run's summary dict (its ``test`` entry gives the confusion matrix); model: the tested model (eval mode is
    used) for the filters and, with ``test_data`` = (X, y) as fed to it and its ``loss``, the misclassified images;
    notes: section → reason, for sections the caller already knows it cannot supply; tta_shift: the run's
    test-time shifts (``cnnframe.tta``), so the misclassified images are those of its test report.
    """
    require("matplotlib", "the run report")
    notes = dict(notes or {})
    images, captions = {}, {}
    if history:
        images["curves"] = plot_curves(history)
    else:
        notes.setdefault("curves", "no metrics: the run has not completed an epoch (metrics.csv is empty or missing)")
    test = (summary or {}).get("test")
    cm = np.asarray(test["confusion_matrix"]) if test and test.get("confusion_matrix") is not None else None
    if cm is not None and cm.size:
        images["confusion"] = plot_confusion(cm, class_names)
    else:
        status = (summary or {}).get("status", "unknown")
        notes.setdefault("confusion", f"no test results: the run has not been tested (status: {status})")
    if "misclassified" not in notes:
        if cm is None:
            notes["misclassified"] = notes["confusion"]
        elif model is None or test_data is None:
            notes["misclassified"] = "no model or test data to find misclassified images in"
        else:
            X, true, pred, prob, total = _misclassified(model, test_data, loss, cm.shape[0], max_images, tta_shift)
            if len(X):
                images["misclassified"] = plot_misclassified(X, true, pred, prob, class_names)
                if total > len(X):
                    captions["misclassified"] = (f"{FILES['misclassified']}: the first {len(X)} of {total} "
                                                 f"misclassified test images")
            else:
                notes["misclassified"] = f"every one of the {len(test_data[1])} test images is classified correctly"
    weight = _first_conv_weight(model) if model is not None else None
    if weight is not None:
        images["filters"] = plot_filters(weight)
        if weight.shape[1] == 3:
            captions["filters"] = (f"{FILES['filters']}: each filter's three input channels as red, green and blue, "
                                   f"stretched to the full range")
    else:
        notes.setdefault("filters", "the model has no convolution layer" if model is not None
                         else "no model to show filters of")
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for section, png in images.items():
        paths[section] = os.path.join(out_dir, FILES[section])
        atomic_write_bytes(paths[section], png)
    page = os.path.join(out_dir, "report.html")
    atomic_write_text(page, render_html(title, summary, images, notes, captions, class_names))
    return Report(page, paths, {k: v for k, v in notes.items() if k in FILES and k not in images})
