"""Report figures (matplotlib, Agg backend): each function returns a Figure, the caller saves it.

Example:
    >>> fig = learning_curves({"fine-tune": [{"epoch": 0, "phase": "head", "train_loss": 1.0,
    ...     "val_loss": 0.9, "train_accuracy": 0.5, "val_accuracy": 0.6}]})
    >>> len(fig.axes)
    2
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PHASE_COLOURS = ("#e8eef7", "#f7efe0", "#e6f4e6", "#f4e6f0", "#eeeeee")


def phase_spans(history: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(phase name, first epoch, last epoch) of consecutive epochs in the same phase.

    Example:
        >>> phase_spans([{"epoch": 1, "phase": "a"}, {"epoch": 2, "phase": "a"}, {"epoch": 3, "phase": "b"}])
        [('a', 1, 2), ('b', 3, 3)]
    """
    spans: list[tuple[str, int, int]] = []
    for h in history:
        if spans and spans[-1][0] == h["phase"]:
            spans[-1] = (spans[-1][0], spans[-1][1], h["epoch"])
        else:
            spans.append((h["phase"], h["epoch"], h["epoch"]))
    return spans


def _label_levels(spans: list[tuple[str, int, int]], *, chars_per_epoch: float) -> list[int]:
    """Height level of each phase label (centred on its span): the lowest level where it does not
    overlap a label already placed, so runs of short phases (chain-thaw's stages) do not overprint.

    Example:
        >>> _label_levels([("head", 0, 29), ("thaw-a", 30, 30), ("thaw-b", 31, 31), ("all", 32, 39)],
        ...               chars_per_epoch=1.0)
        [0, 0, 1, 0]
    """
    placed: list[tuple[float, float, int]] = []
    levels: list[int] = []
    for name, a, b in spans:
        centre, half = (a + b) / 2, len(name) / chars_per_epoch / 2
        lo, hi = centre - half, centre + half
        level = 0
        while any(lv == level and lo < h and l < hi for l, h, lv in placed):
            level += 1
        placed.append((lo, hi, level))
        levels.append(level)
    return levels


def _shade(ax: Any, history: list[dict[str, Any]]) -> None:
    spans = phase_spans(history)
    epochs = max((b for _, _, b in spans), default=0)
    # an axis of a 10-inch figure's half holds about 60 characters of 7-point text
    levels = _label_levels(spans, chars_per_epoch=60 / max(epochs, 1))
    for i, ((name, a, b), level) in enumerate(zip(spans, levels)):
        ax.axvspan(a - 0.5, b + 0.5, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], zorder=0)
        ax.text((a + b) / 2, 1.0 + 0.08 * level, name, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=7, color="#555")


def accuracy_limits(values: list[float] | np.ndarray) -> tuple[float, float]:
    """y-limits zoomed to the data (a 0.93-1.0 curve is not flattened at the top of a 0-1 axis).

    Example:
        >>> [round(v, 3) for v in accuracy_limits([0.93, 0.97, 1.0])]
        [0.92, 1.005]
    """
    v = np.asarray([x for x in np.ravel(values) if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return -0.02, 1.02
    lo, hi = float(v.min()), float(v.max())
    pad = max(0.01, 0.1 * (hi - lo))
    return max(-0.02, lo - pad), min(1.02, hi + max(pad / 2, 0.005))


def learning_curves(histories: dict[str, list[dict[str, Any]]]) -> Figure:
    """One row per run: loss and the task's score (train solid, val dashed) per epoch (from 1), phases shaded.

    The score is ``score_name`` of the history records (accuracy when absent; mean IoU for boxes ...).
    """
    rows = max(1, len(histories))
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.6 * rows), squeeze=False)
    for r, (name, hist) in enumerate(histories.items()):
        ep = [h["epoch"] for h in hist]
        score = hist[0].get("score_name", "accuracy") if hist else "accuracy"
        for c, (key, label) in enumerate((("loss", "loss"), (score, score.replace("_", " ")))):
            ax = axes[r][c]
            _shade(ax, hist)
            ax.plot(ep, [h[f"train_{key}"] for h in hist], "-o", ms=3, label=f"train {label}")
            ax.plot(ep, [h[f"val_{key}"] for h in hist], "--s", ms=3, label=f"val {label}")
            ax.set_ylabel(f"{name}\n{label}" if c == 0 else label)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if key != "loss":  # scores live in [0, 1]: zoomed to the data
                ax.set_ylim(*accuracy_limits([h[f"{part}_{key}"] for h in hist for part in ("train", "val")]))
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def curve_facts(hist: list[dict[str, Any]], *, k: int = 3) -> dict[str, float]:
    """Start (first-epoch val accuracy), slope (mean gain per epoch over the first ``k`` epochs)
    and asymptote (mean of the last ``k`` epochs' val accuracy).

    Example:
        >>> f = curve_facts([{"val_accuracy": a} for a in (0.2, 0.4, 0.6, 0.7, 0.7)])
        >>> round(f["start"], 2), round(f["slope"], 2), round(f["asymptote"], 2)
        (0.2, 0.17, 0.67)
    """
    acc = np.array([h["val_accuracy"] for h in hist], dtype=float)
    j = min(k, len(acc) - 1)
    slope = float((acc[j] - acc[0]) / j) if j > 0 else 0.0
    return {"start": float(acc[0]), "slope": slope, "asymptote": float(acc[-min(k, len(acc)):].mean())}


def three_benefits(scratch: list[dict[str, Any]], transfer: dict[str, list[dict[str, Any]]]) -> Figure:
    """Validation accuracy vs epoch, scratch against transfer, start/slope/asymptote annotated."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    curves = {"scratch": scratch, **transfer}
    for i, (name, hist) in enumerate(curves.items()):
        ep = np.array([h["epoch"] for h in hist])
        acc = [h["val_accuracy"] for h in hist]
        (line,) = ax.plot(ep, acc, "-o", ms=3, lw=2.5 if name == "scratch" else 1.8, label=name)
        f = curve_facts(hist)
        ax.annotate(f"start {f['start']:.2f}", (ep[0], acc[0]), textcoords="offset points", xytext=(6, -10 - 9 * i),
                    fontsize=7, color=line.get_color())
        ax.axhline(f["asymptote"], color=line.get_color(), ls=":", lw=1)
        ax.text(ep[-1], f["asymptote"], f" asymptote {f['asymptote']:.2f}\n slope {f['slope']:+.3f}/epoch",
                fontsize=7, color=line.get_color(), va="center")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(*accuracy_limits([h["val_accuracy"] for hist in curves.values() for h in hist]))
    ax.set_ylabel("validation accuracy")
    ax.set_title("Transfer vs scratch: higher start, higher slope, higher asymptote?")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def data_efficiency(efficiency: dict[str, Any]) -> Figure:
    """Test accuracy (mean ± std over seeds) vs training images per class, one curve per strategy."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    sizes = efficiency["train_per_class"]
    for name, by_n in efficiency["strategies"].items():
        xs, ys, es = [], [], []
        for n in sizes:
            v = by_n.get(str(n))
            if v and v["test_accuracy_mean"] is not None:
                xs.append(n)
                ys.append(v["test_accuracy_mean"])
                es.append(v["test_accuracy_std"])
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion(matrix: list[list[int]], classes: list[str], *, title: str) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    m = np.asarray(matrix)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)))
    ax.set_yticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    if len(classes) <= 25:
        hi = m.max() if m.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if m[i, j] > hi / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def misclassified_grid(items: list[tuple[Any, str, str, float]], *, cols: int = 6) -> Figure:
    """Images (PIL) with ``true -> predicted (confidence)`` captions."""
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, true, pred, conf) in zip(axes.flat, items):
        ax.imshow(img)
        ax.set_title(f"true: {true}\npred: {pred} ({conf:.0%})", fontsize=7)
    fig.tight_layout()
    return fig


def overfitting(history: list[dict[str, Any]], *, tol: float = 1e-3) -> dict[str, Any] | None:
    """Where validation loss turned up while training loss kept falling, or None.

    The turn is the epoch after the minimum of the validation loss, counted when the last epoch's
    val loss is above that minimum (by more than ``tol``) and its train loss below the train loss
    at the minimum.

    Example:
        >>> h = [{"epoch": i, "val_loss": v, "train_loss": t}
        ...      for i, (v, t) in enumerate([(1.0, 1.0), (0.5, 0.6), (0.7, 0.3), (0.9, 0.1)])]
        >>> overfitting(h)["turned_up_at"]
        2
    """
    if len(history) < 2:
        return None
    val = np.array([h["val_loss"] for h in history], dtype=float)
    tr = np.array([h["train_loss"] for h in history], dtype=float)
    m = int(np.argmin(val))
    if m == len(val) - 1 or val[-1] <= val[m] + tol or tr[-1] >= tr[m]:
        return None
    return {"turned_up_at": int(history[m + 1]["epoch"]), "best_epoch": int(history[m]["epoch"]),
            "min_val_loss": float(val[m]), "last_val_loss": float(val[-1]),
            "train_loss_at_min": float(tr[m]), "last_train_loss": float(tr[-1])}


def timings(rows: list[tuple[str, float, float, float]]) -> Figure:
    """Stacked bars per run (label, total, extraction, training): extraction + training + other = total.

    Example:
        >>> len(timings([("fine-tune s0", 23.2, 9.3, 13.9)]).axes[0].patches)
        3
    """
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows) + 2), 3.5))
    x = np.arange(len(rows))
    ext = np.array([r[2] for r in rows], dtype=float)
    trn = np.array([r[3] for r in rows], dtype=float)
    other = np.maximum(np.array([r[1] for r in rows], dtype=float) - ext - trn, 0.0)
    ax.bar(x, ext, label="feature extraction")
    ax.bar(x, trn, bottom=ext, label="training")
    ax.bar(x, other, bottom=ext + trn, color="#bbbbbb", label="other (scan, setup, evaluation, writing)")
    ax.set_xticks(x)
    ax.set_xticklabels([r[0] for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
