"""The reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration."""

from __future__ import annotations

from typing import Any

from matplotlib import pyplot as plt
from matplotlib.figure import Figure


def reliability_diagram(curves: dict[str, dict[str, Any]], *, title: str = "") -> Figure:
    """One panel per entry of ``curves`` (label -> :func:`calibration_summary`-like dict with
    ``reliability`` and ``ece``): bars of accuracy per bin, the gap to the diagonal, and each bin's
    image count at the foot of its bar (a bin of 2 images has a large gap by chance alone).

    Example:
        >>> from transferlab.calibration import calibration_summary
        >>> import torch
        >>> s = calibration_summary(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), torch.tensor([0, 0]))
        >>> ax = reliability_diagram({"test": s}).axes[0]
        >>> ax.get_title(), [t.get_text() for t in ax.texts]
        ('test: ECE 0.453', ['2'])
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.6), squeeze=False)
    for ax, (label, c) in zip(axes[0], curves.items()):
        rel = c["reliability"]
        edges = rel["edges"]
        width = edges[1] - edges[0]
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        ax.plot([0, 1], [0, 1], ls="--", color="#888", lw=1, label="perfect")
        shown = [(x, a, m, n) for x, a, m, n in zip(centres, rel["accuracy"], rel["confidence"], rel["count"])
                 if a is not None]
        if shown:
            xs, accs, confs, counts = zip(*shown)
            ax.bar(xs, accs, width=width * 0.95, color="#2f6fdf", edgecolor="#1d4aa0", label="accuracy")
            ax.bar(xs, [m - a for a, m in zip(accs, confs)], bottom=accs, width=width * 0.95, color="#e0573a",
                   alpha=0.45, label="gap to confidence")
            for x, n in zip(xs, counts):  # images per bin, along the foot of the bars
                ax.text(x, 0.01, str(n), ha="center", va="bottom", fontsize=6, color="white",
                        bbox={"boxstyle": "square,pad=0.1", "facecolor": "#333", "edgecolor": "none"})
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label}: ECE {c['ece']:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def run_reliability(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The panels of a run's ``metrics.json``: test before and after calibration, or test alone.

    Example:
        >>> sorted(run_reliability({"test": {"ece": 0.1, "reliability": {}}}))
        ['test']
    """
    test = metrics.get("test", {})
    if "reliability" not in test:
        return {}
    if "reliability_uncalibrated" in test:
        return {"test, uncalibrated": {"ece": test["ece_uncalibrated"], "reliability": test["reliability_uncalibrated"]},
                f"test, T = {test['temperature']:.2f}": {"ece": test["ece"], "reliability": test["reliability"]}}
    return {"test": {"ece": test["ece"], "reliability": test["reliability"]}}
