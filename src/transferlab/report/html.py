"""One self-contained HTML report (PNG figures embedded as base64, also written to ``figures/``).

Works on a compare directory (``results.json``) or a single run directory (``metrics.json``).

Example:
    >>> from transferlab.report import build_report
    >>> build_report("cmp")  # doctest: +SKIP
    PosixPath('cmp/report.html')
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from transferlab.calibration.figures import reliability_diagram, run_reliability
from transferlab.data import ImageDataset, ImageSource, atomic_write_bytes, atomic_write_text, load_split, open_dataset
from transferlab.errors import ConfigError
from transferlab.explain.gradcam import overlays_for_run
from transferlab.report import figures
from transferlab.report.backbones import backbone_section, budget_section

REPORT = "report.html"
FIGURES = "figures"
PREDICTIONS = "predictions_test.csv"
PREDICTIONS_PNG = "predictions_test.png"
MAX_MISCLASSIFIED = 24


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _history(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "history.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _single_run_results(run_dir: Path) -> dict[str, Any]:
    """A single run directory seen as a compare of one strategy and one seed."""
    from transferlab.experiments.compare import summarize_runs

    m = _read_json(run_dir / "metrics.json")
    cfg = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    rec = {"seed": cfg.get("data_options", {}).get("seed", 0), "status": "ok", "run_dir": str(run_dir),
           "test_accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"], "top5": m["test"]["top5"],
           "test_loss": m["test"]["loss"], "val_accuracy": m["val"]["accuracy"], "best_epoch": m["best_epoch"],
           "timing": m["timing"]}
    machine = {**cfg.get("machine", {}), "versions": cfg.get("versions", {})}
    return {"status": "done", "data": cfg.get("data"), "backbone": m["backbone"], "seeds": 1,
            "strategies": {m["strategy"]: summarize_runs([rec], m["timing"]["total_s"])}, "machine": machine,
            "split": {"classes": None, "sizes": m.get("split_sizes")}, "wall_s": m["timing"]["total_s"],
            "restored": m.get("restored")}


def _restored_note(restored: dict[str, Any] | None) -> str:
    """One paragraph when best-weights restore kept an earlier epoch than the last (with the numbers)."""
    if not restored or not restored.get("message"):
        return ""
    return f'<p class="warn">Restored weights: {html.escape(restored["message"])}.</p>'


def _task_run_report(root: Path, m: dict[str, Any]) -> Path:
    """report.html of a single run of a task other than classification: metrics, predictions, curves."""
    fig_dir = root / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    title = f"transferlab {m['task']} run: {m['strategy']} / {m['backbone']}"
    scalar = [k for k, v in m["test"].items() if isinstance(v, (int, float))]
    rows = [[html.escape(k), *(f"{m[s].get(k, float('nan')):.4f}" if isinstance(m[s].get(k), float)
                               else html.escape(str(m[s].get(k, ""))) for s in ("val", "test"))] for k in scalar]
    parts = [f"<h1>{html.escape(title)}</h1>", _restored_note(m.get("restored")),
             "<h2>Metrics</h2>", _table(["metric", "val", "test"], rows, cls="results")]
    if m.get("split_sizes"):
        parts.append(f"<p>Split sizes: {html.escape(json.dumps(m['split_sizes']))}.</p>")
    if (root / PREDICTIONS_PNG).is_file():
        data = (root / PREDICTIONS_PNG).read_bytes()
        parts += ["<h2>Test images: predicted (red) and true (green)</h2>",
                  f'<img alt="predictions" src="data:image/png;base64,{base64.b64encode(data).decode()}">']
    hist = _history(root)
    if hist:
        parts += ["<h2>Learning curves</h2>", _png(figures.learning_curves({m["strategy"]: hist}), "learning_curves",
                                                   fig_dir)]
    t = m["timing"]
    parts.append(f"<p>Time: {t['total_s']:.1f} s in all, {t['extract_s']:.1f} s feature extraction, "
                 f"{t['train_s']:.1f} s training; best epoch {m.get('best_epoch')}.</p>")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    return atomic_write_text(root / REPORT, page)


def _png(fig: Figure, name: str, fig_dir: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = buf.getvalue()
    atomic_write_bytes(fig_dir / f"{name}.png", data)
    return (f'<figure><img id="fig-{name}" alt="{name}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}"><figcaption>{FIGURES}/{name}.png</figcaption></figure>')


def _fmt(mean: float | None, std: float | None, *, n: int | None = None) -> str:
    """``mean ± std``; one run (``n == 1``) has no spread, so just its value."""
    if mean is None:
        return "failed"
    return f"{mean:.4f}" if n == 1 else f"{mean:.4f} ± {std:.4f}"


def _table(header: list[str], rows: list[list[Any]], *, cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _open_source(data: str | None, source: ImageSource | None) -> ImageSource:
    if source is not None:
        return source
    if not data:
        raise ConfigError("report: the run does not record its dataset; cannot show misclassified images")
    return open_dataset(data, quiet=True)


def _predictions(run_dir: Path, source: ImageSource) -> list[tuple[int, int, int, float]]:
    """(source index, true, predicted, confidence) of the run's test split, saved or recomputed."""
    path = run_dir / PREDICTIONS
    if path.is_file():
        with path.open(newline="") as f:
            return [(source.index_of(r["identity"]), int(r["true"]), int(r["predicted"]), float(r["confidence"]))
                    for r in csv.DictReader(f)]
    from transferlab.engine import Engine, EngineOptions, SplitInputs, init_distributed
    from transferlab.experiments.artifacts import load_model

    lm = load_model(run_dir)
    idx = load_split(run_dir, source).test
    split = SplitInputs(name="test", labels=torch.as_tensor(source.labels[idx], dtype=torch.long),
                        eval_dataset=ImageDataset(source, idx, lm.transform(), draft_size=lm.preprocessing.resize_size))
    engine = Engine(lm.model, ctx=init_distributed("cpu"), options=EngineOptions(quiet=True))
    probs = (engine.predict(split, boundary=0, use_cache=False) / (lm.temperature or 1.0)).softmax(1)
    conf, pred = probs.max(1)
    return [(int(i), int(y), int(p), float(c)) for i, y, p, c in
            zip(idx, split.labels.tolist(), pred.tolist(), conf.tolist())]


def build_report(path: str | os.PathLike[str], *, source: ImageSource | None = None) -> Path:
    """Write ``path/report.html`` and ``path/figures/*.png`` for a compare or a single run directory.

    Example:
        >>> build_report("runs/ft")  # doctest: +SKIP
        PosixPath('runs/ft/report.html')
    """
    from transferlab.experiments.compare import RESULTS, best_strategy

    root = Path(path)
    if (root / RESULTS).is_file():
        results = _read_json(root / RESULTS)
        title = f"transferlab compare: {results.get('data')} / {results.get('backbone')}"
    elif (root / "metrics.json").is_file():
        single = _read_json(root / "metrics.json")
        if single.get("task", "classification") != "classification":
            return _task_run_report(root, single)
        results = _single_run_results(root)
        title = f"transferlab run: {root}"
    else:
        raise ConfigError(f"report: {root} has neither results.json (compare) nor metrics.json (run)")
    fig_dir = root / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    strategies: dict[str, Any] = results["strategies"]
    parts: list[str] = [f"<h1>{html.escape(title)}</h1>", _restored_note(results.get("restored"))]
    if results.get("status") != "done":
        parts.append('<p class="warn">The compare did not finish: these are the runs written so far.</p>')

    # results table
    rows = []
    k = (results.get("cv") or {}).get("k")
    for name, s in strategies.items():
        failed = [r for r in s["runs"] if r["status"] != "ok"]
        note = "; ".join(f"seed {r['seed']} failed: {html.escape(r['error'])}" for r in failed)
        rows.append([html.escape(name), *([_fmt(s.get("cv_mean"), s.get("cv_std"))] if k else []),
                     _fmt(s["test_accuracy_mean"], s["test_accuracy_std"], n=s["n_ok"]),
                     _fmt(s["macro_f1_mean"], s["macro_f1_std"], n=s["n_ok"]), f"{s['n_ok']}/{len(s['runs'])}",
                     f"{s['wall_s']:.1f}", f'<span class="failed">{note}</span>' if note else "ok"])
    parts += ["<h2>Results (test split, mean ± std over seeds)</h2>" if not k else
              f"<h2>Results ({k}-fold CV over the non-test pool, mean ± std across folds; test split, mean ± std "
              f"over seeds)</h2><p>{html.escape(results['cv']['folds'])}.</p>",
              _table(["strategy", *([f"{k}-fold CV accuracy"] if k else []), "test accuracy", "macro F1", "runs ok",
                      "wall s", "status"], rows, cls="results")]
    if "split" in results and results["split"].get("sizes"):
        parts.append(f"<p>Split sizes: {html.escape(json.dumps(results['split']['sizes']))}; "
                     f"training images per class: {results['split'].get('train_per_class') or 'all'}.</p>")

    parts += backbone_section(results, png=lambda fig, name: _png(fig, name, fig_dir), table=_table)

    ok_runs = {name: [r for r in s["runs"] if r["status"] == "ok"] for name, s in strategies.items()}
    histories = {name: _history(Path(rs[0]["run_dir"])) for name, rs in ok_runs.items() if rs}
    with_epochs = {k: v for k, v in histories.items() if v}
    if with_epochs:
        parts += ["<h2>Learning curves</h2><p>First seed of each strategy; shaded bands are the plan's phases. "
                  + ("Strategies without epochs (closed-form linear probe) are not drawn. " if
                     len(with_epochs) < len(histories) else "") + "</p>",
                  _png(figures.learning_curves(with_epochs), "learning_curves", fig_dir)]
    scratch = next((k for k in with_epochs if strategies[k].get("strategy", k) == "scratch"), None)
    transfer = {k: v for k, v in with_epochs.items() if strategies[k].get("strategy", k) != "scratch"}
    if scratch is not None and transfer:
        facts = [[html.escape(k), f"{f['start']:.3f}", f"{f['slope']:+.4f}", f"{f['asymptote']:.3f}"]
                 for k, f in ((k, figures.curve_facts(v)) for k, v in {scratch: with_epochs[scratch],
                                                                        **transfer}.items())]
        parts += ["<h2>The three benefits of transfer</h2>",
                  _png(figures.three_benefits(with_epochs[scratch], transfer), "three_benefits", fig_dir),
                  "<p>Start: validation accuracy after the first epoch. Slope: mean gain per epoch over the "
                  "first 3 epochs. Asymptote: mean validation accuracy of the last 3 epochs.</p>",
                  _table(["strategy", "start", "slope / epoch", "asymptote"], facts)]
    if results.get("efficiency"):
        parts += ["<h2>Data efficiency</h2>", _png(figures.data_efficiency(results["efficiency"]),
                                                   "data_efficiency", fig_dir)]

    best = best_strategy(results)
    if best is not None:
        run = max(ok_runs[best], key=lambda r: r["test_accuracy"])
        run_dir = Path(run["run_dir"])
        m = _read_json(run_dir / "metrics.json")
        classes = list(m["test"]["per_class"])
        by = f", chosen by {k}-fold CV accuracy {strategies[best]['cv_mean']:.4f}" if k and strategies[best].get(
            "cv_mean") is not None else ""
        parts += [f"<h2>Best strategy: {html.escape(best)} (seed {run['seed']}, test accuracy "
                  f"{run['test_accuracy']:.4f}{by})</h2>",
                  _png(figures.confusion(m["test"]["confusion"], classes, title=f"{best}: test confusion"),
                       "confusion", fig_dir),
                  _table(["class", "precision", "recall", "F1", "support"],
                         [[html.escape(c), f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}",
                           v["support"]] for c, v in m["test"]["per_class"].items()], cls="per-class")]
        src = _open_source(results.get("data"), source)
        preds = _predictions(run_dir, src)
        wrong = sorted((p for p in preds if p[1] != p[2]), key=lambda p: -p[3])[:MAX_MISCLASSIFIED]
        curves = run_reliability(m)
        if curves:
            parts += ["<h3>Calibration (reliability diagram, 15 confidence bins)</h3>",
                      _png(reliability_diagram(curves), "reliability", fig_dir)]
        if wrong:
            images = [src.load(i) for i, *_ in wrong]
            try:
                heat, how = overlays_for_run(run_dir, images, targets=[p for _, _, p, _ in wrong]), (
                    "with the Grad-CAM heatmap of the predicted class")
            except ConfigError as exc:  # e.g. an averaged ensemble of backbones: no single layer to read
                heat, how = images, f"without heatmaps ({exc})"
            items = [(h, classes[y], classes[p], c) for h, (i, y, p, c) in zip(heat, wrong)]
            parts += [f"<h3>Misclassified test images ({sum(p[1] != p[2] for p in preds)} of {len(preds)}; "
                      f"most confident first), {html.escape(how)}</h3>",
                      _png(figures.misclassified_grid(items), "misclassified", fig_dir)]
        else:
            parts.append("<p>No misclassified test images.</p>")

    # overfitting diagnosis, every run
    diag_rows, time_rows = [], []
    for name, rs in ok_runs.items():
        for r in rs:
            hist = _history(Path(r["run_dir"]))
            o = figures.overfitting(hist)
            if not hist:
                verdict = "no epochs (closed-form fit)"
            elif o is None:
                verdict = "no: validation loss did not turn up while training loss fell"
            else:
                verdict = (f"yes: val loss turned up at epoch {o['turned_up_at']} (min {o['min_val_loss']:.4f} at "
                           f"epoch {o['best_epoch']}, last {o['last_val_loss']:.4f}) while train loss fell "
                           f"{o['train_loss_at_min']:.4f} → {o['last_train_loss']:.4f}")
            diag_rows.append([html.escape(name), r["seed"], len(hist), r["best_epoch"], html.escape(verdict)])
            t = r["timing"]  # a cross-validated search reports its whole search (features + folds) as training
            time_rows.append((f"{name} s{r['seed']}", t["total_s"], t.get("extract_s", 0.0),
                              t.get("train_s", t.get("search_s", 0.0))))
    parts += ["<h2>Overfitting diagnosis</h2>",
              _table(["strategy", "seed", "epochs", "best epoch (kept)", "overfitting"], diag_rows)]
    if time_rows:
        parts += ["<h2>Timings</h2>", _png(figures.timings(time_rows), "timings", fig_dir),
                  _table(["run", "total s", "feature extraction s", "training s", "other s"],
                         [[html.escape(a), f"{b:.1f}", f"{c:.1f}", f"{d:.1f}", f"{max(b - c - d, 0):.1f}"]
                          for a, b, c, d in time_rows])]
        if any("search_s" in r["timing"] for rs in ok_runs.values() for r in rs):
            parts.append("<p>Cross-validated linear probes report one search time (pooled features of pool+test "
                         "once, then the K folds' fits and the final fit); it is drawn as training.</p>")
        if results.get("wall_s") is not None:
            parts.append(f"<p>Wall time of the whole job: {results['wall_s']:.1f} s.</p>")
    parts += budget_section(results, table=_table)
    if results.get("sharing"):
        parts.append(f"<p>Work sharing: {html.escape(results['sharing']['rule'])}; images through the "
                     f"backbone's first stage: {results['sharing']['forward_images']}.</p>")
    machine = results.get("machine", {})
    mrows = [[html.escape(str(k)), html.escape(str(v))] for k, v in machine.items() if k != "versions"]
    mrows += [[html.escape(k), html.escape(str(v))] for k, v in machine.get("versions", {}).items()]
    parts += ["<h2>Machine and versions</h2>", _table(["", ""], mrows)]
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>\n")
    out = root / REPORT
    atomic_write_text(out, page)
    return out


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        "th{background:#f0f0f0}img{max-width:100%}figcaption{font-size:11px;color:#777}"
        ".failed,.warn{color:#b00}")


def report_summary(path: str | os.PathLike[str]) -> list[str]:
    """Lines for the terminal: per strategy, mean ± std val (with ``--cv``: CV mean ± std across folds) and
    test accuracy and the wall time of its runs.

    Example:
        >>> report_summary("cmp")  # doctest: +SKIP
        ['strategy            val accuracy       test accuracy      wall', 'scratch             0.3050 ± 0.0120  ...']
    """
    from transferlab.experiments.compare import RESULTS

    root = Path(path)
    if not (root / RESULTS).is_file():
        m = _read_json(root / "metrics.json")
        if m.get("task", "classification") != "classification":
            from transferlab.tasks import get_task

            return [f"{m['strategy']:<20}{get_task(m['task']).summary_line(m)}"]
    results = _read_json(root / RESULTS) if (root / RESULTS).is_file() else _single_run_results(root)
    width = max([20] + [len(n) + 2 for n in results["strategies"]])
    k = (results.get("cv") or {}).get("k")
    head = f"{k}-fold CV acc" if k else "val accuracy"  # CV: mean ± std across folds
    lines = [f"{'strategy':<{width}}{head:<19}{'test accuracy':<19}wall"]
    for name, s in results["strategies"].items():
        val = (_fmt(s.get("cv_mean"), s.get("cv_std")) if k else
               _fmt(s.get("val_accuracy_mean"), s.get("val_accuracy_std"), n=s["n_ok"])
               if "val_accuracy_mean" in s else "-")
        test = _fmt(s["test_accuracy_mean"], s["test_accuracy_std"], n=s["n_ok"])
        lines.append(f"{name:<{width}}{val:<19}{test:<19}"
                     f"{s['wall_s']:.0f}s ({s['n_ok']} run{'s' if s['n_ok'] != 1 else ''})")
    return lines


__all__ = ["build_report", "report_summary"]
