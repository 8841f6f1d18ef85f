"""Report sections of a ``compare --backbones``: transfer accuracy vs ImageNet top-1 (Kornblith et
al., CVPR 2019), accuracy vs measured latency and parameters with the Pareto front; and, for every
compare, the budget each run had (architecture, resolution, pretrained or not, epochs, seconds).

Example:
    >>> fig = accuracy_vs_top1([{"entry": "lp", "backbone": "a", "accuracy": 0.9, "top1": 72.0},
    ...                         {"entry": "lp", "backbone": "b", "accuracy": 0.95, "top1": 77.0}])
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from transferlab.experiments.backbones import backbone_points, correlation, pareto_front
from transferlab.report import figures  # noqa: F401  (selects the Agg backend before pyplot is used)

Png = Callable[[Figure, str], str]
Table = Callable[..., str]


def _by_entry(points: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        out.setdefault(p["entry"], []).append(p)
    return out


def accuracy_label(points: Sequence[Mapping[str, Any]]) -> str:
    """The y-axis label: what ``accuracy`` of the points measures.

    Example:
        >>> accuracy_label([{"measure": "5-fold CV"}]), accuracy_label([{"measure": "test"}])
        ('5-fold CV accuracy (mean ± fold std)', 'test accuracy')
    """
    measure = next((p.get("measure", "test") for p in points), "test")
    return "test accuracy" if measure == "test" else f"{measure} accuracy (mean ± fold std)"


def _draw(ax: Any, xs: Sequence[float], pts: Sequence[Mapping[str, Any]], fmt: str, **kw: Any) -> None:
    """Points (joined by ``fmt``), with fold-std error bars when the accuracy is a CV mean."""
    ys = [p["accuracy"] for p in pts]
    if pts and pts[0].get("measure", "test") != "test":
        ax.errorbar(xs, ys, yerr=[p.get("accuracy_std") or 0.0 for p in pts], fmt=fmt, capsize=3, **kw)
    else:
        ax.plot(xs, ys, fmt, **kw)


def accuracy_vs_top1(points: Sequence[Mapping[str, Any]]) -> Figure:
    """Accuracy (test, or the CV mean with fold-std bars) against ImageNet top-1, one series per strategy,
    r and rho (of the plotted accuracies) in the legend."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for entry, pts in _by_entry(points).items():
        pts = sorted(pts, key=lambda p: p["top1"])
        c = correlation([p["top1"] for p in pts], [p["accuracy"] for p in pts])
        r = "" if c["pearson"] is None else f" (r={c['pearson']:+.2f}, rho={c['spearman']:+.2f})"
        _draw(ax, [p["top1"] for p in pts], pts, "o-", label=f"{entry}{r}")
        for p in pts:
            ax.annotate(p["backbone"], (p["top1"], p["accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("ImageNet top-1 (%)")
    ax.set_ylabel(accuracy_label(points))
    ax.set_title("Do better ImageNet models transfer better?")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


COSTS = (("latency_b1_ms", "latency, batch 1 (ms, 1 thread)"),
         ("latency_b32_ms_per_image", "latency, batch 32 (ms / image, 1 thread)"),
         ("params", "parameters (millions)"))


def accuracy_vs_cost(points: Sequence[Mapping[str, Any]]) -> Figure:
    """Accuracy (test, or the CV mean with fold-std bars) against latency (batch 1, batch 32) and parameters;
    Pareto-front points (by that accuracy) ringed and joined."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COSTS), figsize=(13, 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], COSTS):
        pts = [p for p in points if p.get(key) is not None]
        scale = 1e-6 if key == "params" else 1.0
        for entry, group in _by_entry(pts).items():
            _draw(ax, [p[key] * scale for p in group], group, "o", label=entry)
        front = sorted((p for p, f in zip(pts, pareto_front([p[key] for p in pts], [p["accuracy"] for p in pts]))
                        if f), key=lambda p: p[key])
        if front:
            ax.plot([p[key] * scale for p in front], [p["accuracy"] for p in front], "k--", lw=1, zorder=0)
            ax.scatter([p[key] * scale for p in front], [p["accuracy"] for p in front], s=120, facecolors="none",
                       edgecolors="k", label="Pareto front")
        for p in pts:
            ax.annotate(p["backbone"], (p[key] * scale, p["accuracy"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(accuracy_label(points))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def backbone_section(results: Mapping[str, Any], *, png: Png, table: Table) -> list[str]:
    """HTML parts: the two figures, the per-backbone table and the correlations ([] without backbones)."""
    points = backbone_points(results)
    if not results.get("backbones") or not points:
        return []
    lat = results.get("latency", {})
    machine = next(iter(lat.values()), {}).get("machine", {})
    by_cv = points[0]["measure"] != "test"
    what = accuracy_label(points)
    rows = []
    for p in sorted(points, key=lambda p: (p["entry"], p["top1"])):
        lb = lat.get(p["backbone"], {})
        rows.append([html.escape(p["entry"]), html.escape(p["backbone"]), f"{p['top1']:.2f}",
                     f"{p['params'] / 1e6:.2f}M", _ms(lb.get("batch_1_ms")), _ms(lb.get("batch_32_ms")),
                     *([f"{p['accuracy']:.4f} ± {p['accuracy_std']:.4f}"] if by_cv else []),
                     f"{p['test_accuracy']:.4f}"])
    corr = []
    for entry, pts in _by_entry(points).items():
        c = correlation([p["top1"] for p in pts], [p["accuracy"] for p in pts])
        corr.append([html.escape(entry), c["n"], _r(c["pearson"]), _r(c["spearman"])])
    loads = ", ".join(f"{k} {v.get('load_avg_1m')}" for k, v in lat.items())
    measured = (f"the mean {html.escape(points[0]['measure'])} accuracy over the non-test pool (error bars: its "
                f"standard deviation across the folds; the test split, in no fold, is in the table)" if by_cv
                else "test accuracy (mean over seeds)")
    return ["<h2>Backbones</h2>",
            f"<p>Accuracy in both figures and in the correlations: {measured}.</p>",
            png(accuracy_vs_top1(points), "backbones_top1"),
            table(["strategy", "backbones", "Pearson r", "Spearman rho"], corr),
            f"<p>Correlation of {html.escape(what)} with the backbone's published ImageNet top-1 across the "
            "backbones (Kornblith et al. 2019 report r ~ 0.99 over 16 networks and 12 datasets; with 4 networks it "
            "is a weak test).</p>",
            png(accuracy_vs_cost(points), "backbones_cost"),
            table(["strategy", "backbone", "ImageNet top-1", "params", "ms, batch 1", "ms, batch 32",
                   *([what] if by_cv else []), "test accuracy"], rows),
            f"<p>Latency: CPU time of the fastest of several forward passes of the whole network at its input "
            f"size, on one thread of this machine (what an idle core takes; on a shared machine wall-clock time "
            f"measures the neighbours, it is in results.json as batch_B_wall_ms) "
            f"({html.escape(json.dumps(machine))}), measured once per backbone; 1-minute load average while "
            f"measured: {html.escape(loads)}. Ringed points: the Pareto front (no other point is both faster/"
            f"smaller and more accurate, by {html.escape(what)}).</p>"]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def budget_section(results: Mapping[str, Any], *, table: Table) -> list[str]:
    """HTML parts: what each run had to learn with (so "transfer beats scratch" is read fairly)."""
    rows = []
    for name, s in results.get("strategies", {}).items():
        for r in s.get("runs", []):
            if r.get("status") != "ok":
                continue
            run_dir = Path(r["run_dir"])
            cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
            m = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
            plan = cfg.get("plan") or {}  # None: a cross-validated search (no plan of phases)
            allowed = sum(p.get("epochs", 0) for p in plan.get("phases", []))
            hist = run_dir / "history.jsonl"
            ran = sum(1 for line in hist.read_text().splitlines() if line.strip()) if hist.is_file() else 0
            t = cfg.get("train_options", {})
            size = (m.get("features", {}).get("size") or t.get("input_size")
                    or _native_size(t.get("backbone")))
            pretrained = plan.get("pretrained") if plan else m.get("strategy") not in ("hog-svm", "scratch")
            knowledge = ("ImageNet weights" if pretrained else
                         "none (HOG + SVM)" if m.get("strategy") == "hog-svm" else "none (random init)")
            rows.append([html.escape(name), r["seed"], html.escape(str(m.get("backbone", t.get("backbone")))),
                         size, knowledge, f"{ran} of {allowed}" if allowed else "closed form" + (
                             f", {m['cv']['k']} folds + final fit" if "cv" in m else ""),
                         r["best_epoch"] if r.get("best_epoch") not in (None, -1) else "-",  # 1-based
                         f"{_fitting_s(r['timing']):.1f}", f"{r['timing']['total_s']:.1f}"])
    if not rows:
        return []
    return ["<h2>Budgets</h2><p>What each run had: architecture, input resolution, prior knowledge, epochs run of "
            "those its plan allowed (early stopping ends a phase after --patience epochs without a lower val "
            "loss), the epoch whose weights were kept, and seconds.</p>",
            table(["strategy", "seed", "architecture", "input px", "prior knowledge", "epochs run", "kept epoch",
                   "training s", "total s"], rows)]


def _fitting_s(timing: Mapping[str, float]) -> float:
    """Seconds of training: the epochs or the probe's fit; for a cross-validated search its whole search
    (features and the K folds' fits: ``search_s``)."""
    return float(timing.get("train_s", timing.get("search_s", 0.0)))


def _native_size(backbone: str | None) -> int | str:
    if not backbone or backbone == "none":
        return "-"
    from transferlab.zoo import get_entry

    return get_entry(backbone).input_size
