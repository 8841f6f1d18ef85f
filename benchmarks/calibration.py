"""Temperature scaling measured on a run's own split, with the noise of the measurement beside it.

The run's raw (unscaled) val and test logits are recomputed (or read from ``--logits``, which this
script writes on its first pass); ``T`` is fitted on val exactly as ``--calibrate temperature``
does, and the test split measures once:

- test ECE (torchmetrics, 15 equal-width bins, L1, top-1) before/after and its relative change,
  each with a 95 % percentile bootstrap interval over the test images (scipy.stats.bootstrap
  on the row indices, so before and after see the same resampled images), and the share of resamples with a
  change >= 30 %; test NLL and Brier score (proper scores) before/after with paired intervals;
- the bootstrap interval of ``T`` itself (val resampled; a resample without a misclassified image
  keeps ``T = 1``, as ``--calibrate temperature`` does, and their share is reported);
- the noise floor: the mean ECE of a *perfectly calibrated* model with the test confidences
  (labels drawn from its own probabilities), before and after;
- diagnostics that look at the test labels (never a choice): the ``T`` that minimises test NLL
  and the lowest test ECE any ``T`` reaches;
- alternatives fitted on val and measured once on test: ``T`` chosen by the lowest val ECE,
  ensemble temperature scaling (Zhang et al., ICML 2020), vector and matrix scaling (Guo et al.,
  ICML 2017), top-label isotonic regression (scikit-learn);
- re-splits: the run's val and test images pooled (both held out from training) and cut into
  random stratified halves, each method (but matrix scaling and isotonic regression) fitted on one
  half and measured on the other: how the acceptance statistic varies for one and the same model.

    PYTHONPATH=src python benchmarks/calibration.py --run runs/cal --logits /tmp/cal_logits.pt \\
        --out benchmarks/results/calibration_flowers17.json --figure docs/reliability_flowers17.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import bootstrap
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_json  # noqa: E402

from transferlab.calibration import calibrate_splits, calibration_summary, fit_temperature  # noqa: E402
from transferlab.calibration import expected_calibration_error as ece  # noqa: E402
from transferlab.calibration.temperature import misclassified  # noqa: E402

Calibrator = Callable[[torch.Tensor], torch.Tensor]  # logits -> probabilities
TARGET = 0.30  # the acceptance line: test ECE lowered by >= 30 %


def run_logits(run: Path, cache: Path | None) -> dict[str, Any]:
    """Raw val/test logits (the model before any temperature) and labels, cached in ``cache``."""
    if cache is not None and cache.is_file():
        return torch.load(cache, weights_only=True)  # dict of (logits, labels) tensors: no pickle needed
    from transferlab.data import ImageDataset, load_split, open_dataset
    from transferlab.engine import Engine, EngineOptions, SplitInputs, init_distributed
    from transferlab.experiments.artifacts import load_model
    from transferlab.experiments.train import config_data

    source = open_dataset(config_data(json.loads((run / "config.json").read_text())), quiet=True)
    split, lm = load_split(run, source), load_model(run)
    out: dict[str, Any] = {}
    for name in ("val", "test"):
        idx = getattr(split, name)
        si = SplitInputs(name=name, labels=torch.as_tensor(source.labels[idx], dtype=torch.long),
                         eval_dataset=ImageDataset(source, idx, lm.transform(), draft_size=lm.preprocessing.resize_size))
        engine = Engine(lm.model, ctx=init_distributed("cpu"), options=EngineOptions(batch_size=64, quiet=True))
        out[name] = (engine.predict(si, boundary=0, use_cache=False).float(), si.labels)
    if cache is not None:
        torch.save(out, cache)
    return out


# ---- calibrators, each fitted on (logits, labels) of one split
def tool_temperature(z: torch.Tensor, y: torch.Tensor) -> float:
    """What ``--calibrate temperature`` fits: the val-NLL temperature, or 1 where val has no error."""
    return fit_temperature(z, y) if misclassified(z, y) else 1.0


def temperature(z: torch.Tensor, y: torch.Tensor) -> Calibrator:
    t = tool_temperature(z, y)
    return lambda x: (x / t).softmax(1)


def temperature_by_ece(z: torch.Tensor, y: torch.Tensor) -> Calibrator:
    grid = np.exp(np.linspace(math.log(0.5), math.log(4.0), 120))
    t = float(grid[int(np.argmin([ece((z / g).softmax(1), y) for g in grid]))])
    return lambda x: (x / t).softmax(1)


def ensemble_temperature(z: torch.Tensor, y: torch.Tensor) -> Calibrator:
    """w1 softmax(z/T) + w2 softmax(z) + w3 uniform, T from temperature scaling, w by val NLL."""
    t, k = tool_temperature(z, y), z.shape[1]

    def mix(x: torch.Tensor, a: np.ndarray) -> torch.Tensor:
        w = torch.as_tensor(np.exp(a) / np.exp(a).sum(), dtype=x.dtype)
        return w[0] * (x / t).softmax(1) + w[1] * x.softmax(1) + w[2] / k

    a = minimize(lambda a: float(nn.functional.nll_loss(mix(z, a).log(), y)), np.zeros(3), method="Nelder-Mead").x
    return lambda x: mix(x, a)


def vector_scaling(z: torch.Tensor, y: torch.Tensor) -> Calibrator:
    a = torch.ones(z.shape[1], requires_grad=True)
    b = torch.zeros(z.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([a, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z * a + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = a.detach(), b.detach()
    return lambda x: (x * a + b).softmax(1)


def matrix_scaling(z: torch.Tensor, y: torch.Tensor) -> Calibrator:
    """``z @ W.T + b`` (K x K + K parameters; Guo et al., 2017), unregularised, by val NLL."""
    w = torch.eye(z.shape[1], dtype=z.dtype, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(z @ w.T + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda x: (x @ w.T + b).softmax(1)


def top_label_isotonic(z: torch.Tensor, y: torch.Tensor) -> Calibrator:
    """Isotonic regression (scikit-learn) of correctness on the top-1 confidence; the other classes
    share the rest in their old proportions (a class whose share then beats the top one flips the arg-max)."""
    from sklearn.isotonic import IsotonicRegression

    p = z.softmax(1)
    conf, pred = p.max(1)
    k = z.shape[1]
    iso = IsotonicRegression(y_min=1.0 / k, y_max=1.0, out_of_bounds="clip").fit(conf.numpy(), (pred == y).numpy())

    def apply(x: torch.Tensor) -> torch.Tensor:
        q = x.softmax(1)
        c, j = q.max(1)
        new = torch.as_tensor(iso.predict(c.numpy()), dtype=q.dtype)
        rows = torch.arange(len(q))
        out = q * ((1 - new) / (1 - c).clamp_min(1e-12))[:, None]
        out[rows, j] = new
        return out

    return apply


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], Calibrator]] = {
    "temperature (val NLL; --calibrate temperature)": temperature, "temperature (lowest val ECE)": temperature_by_ece,
    "ensemble temperature": ensemble_temperature, "vector scaling": vector_scaling}
#: also measured once (val fit, test once), not on the re-splits: they change the arg-max or the metric's own bins
ONCE_ONLY = {"matrix scaling": matrix_scaling, "top-label isotonic regression": top_label_isotonic}


# ---- statistics
def nll(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.nll_loss(p.clamp_min(1e-12).log(), y))


def brier(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(((p - nn.functional.one_hot(y, p.shape[1])) ** 2).sum(1).mean())


def interval(stat: Callable[..., float], *data: torch.Tensor, n: int) -> tuple[list[float], np.ndarray]:
    """95 % percentile bootstrap interval of ``stat(*data)``, rows resampled together; and the resampled values."""
    rows = np.arange(len(data[0]))  # resample row indices: one draw indexes every array (a paired bootstrap)
    res = bootstrap((rows,), lambda i: stat(*(d[torch.as_tensor(i)] for d in data)), vectorized=False,
                    n_resamples=n, method="percentile", random_state=0)
    ci = res.confidence_interval
    return [round(float(ci.low), 4), round(float(ci.high), 4)], res.bootstrap_distribution


def calibrated_floor(p: torch.Tensor, *, n: int = 500) -> dict[str, Any]:
    """ECE of a perfectly calibrated model with probabilities ``p``: labels drawn from ``p`` itself."""
    g = torch.Generator().manual_seed(0)
    e = np.array([ece(p, torch.multinomial(p, 1, generator=g)[:, 0]) for _ in range(n)])
    return {"mean": round(float(e.mean()), 4), "range95": [round(float(v), 4) for v in np.percentile(e, [2.5, 97.5])]}


def test_split(zv: torch.Tensor, yv: torch.Tensor, zt: torch.Tensor, yt: torch.Tensor, *, n: int) -> dict[str, Any]:
    """The acceptance measurement with its bootstrap intervals, the proper scores and the noise floor."""
    t = tool_temperature(zv, yv)
    p0, p1 = zt.softmax(1), (zt / t).softmax(1)
    ci0, _ = interval(ece, p0, yt, n=n)
    ci1, _ = interval(ece, p1, yt, n=n)
    ci_red, dist = interval(lambda a, b, y: 1 - ece(b, y) / ece(a, y), p0, p1, yt, n=n)
    draws = np.random.default_rng(0).integers(0, len(yv), (300, len(yv)))
    tb = np.array([tool_temperature(zv[i], yv[i]) for i in draws])
    no_error = float(np.mean([misclassified(zv[i], yv[i]) == 0 for i in draws]))
    out = {"accuracy": float((zt.argmax(1) == yt).float().mean()),
           "accuracy_calibrated": float((p1.argmax(1) == yt).float().mean()),
           "temperature": t, "temperature_ci95": [round(float(v), 3) for v in np.percentile(tb, [2.5, 97.5])],
           "share_of_val_resamples_without_an_error": round(no_error, 3),
           "ece_uncalibrated": ece(p0, yt), "ece": ece(p1, yt), "ece_uncalibrated_ci95": ci0, "ece_ci95": ci1}
    out.update(ece_reduction=round(1 - out["ece"] / out["ece_uncalibrated"], 4), ece_reduction_ci95=ci_red,
               share_of_resamples_reduction_ge_30=round(float((dist >= TARGET).mean()), 3))
    for name, f in (("nll", nll), ("brier", brier)):
        out[f"{name}_uncalibrated"], out[name] = f(p0, yt), f(p1, yt)
        out[f"{name}_change_ci95"], _ = interval(lambda a, b, y, f=f: f(b, y) - f(a, y), p0, p1, yt, n=n)
    out["noise_floor"] = {"uncalibrated": calibrated_floor(p0), "calibrated": calibrated_floor(p1)}
    return out


def test_diagnostics(zt: torch.Tensor, yt: torch.Tensor) -> dict[str, Any]:
    """What the test labels themselves say (diagnosis only, never a choice)."""
    grid = np.exp(np.linspace(math.log(0.5), math.log(4.0), 300))
    e = np.array([ece((zt / g).softmax(1), yt) for g in grid])
    t_nll = tool_temperature(zt, yt)
    return {"temperature_min_test_nll": round(t_nll, 4), "ece_at_that_temperature": ece((zt / t_nll).softmax(1), yt),
            "lowest_ece_over_temperatures": float(e.min()), "at_temperature": round(float(grid[e.argmin()]), 4)}


def alternatives(zv: torch.Tensor, yv: torch.Tensor, zt: torch.Tensor, yt: torch.Tensor) -> dict[str, Any]:
    """Every method fitted on val, measured once on test."""
    e0 = ece(zt.softmax(1), yt)
    out = {}
    for name, fit in {**METHODS, **ONCE_ONLY}.items():
        p = fit(zv, yv)(zt)
        out[name] = {"ece": ece(p, yt), "ece_reduction": round(1 - ece(p, yt) / e0, 4), "nll": nll(p, yt),
                     "accuracy": float((p.argmax(1) == yt).float().mean())}
    return out


def resplits(z: torch.Tensor, y: torch.Tensor, *, n: int) -> dict[str, Any]:
    """Random stratified halves of pooled held-out logits: fit on one half, measure on the other."""
    got: dict[str, dict[str, list[float]]] = {m: {"red": [], "nll": []} for m in METHODS}
    for s in range(n):
        rng = np.random.default_rng(1000 + s)
        halves = [rng.permutation(np.flatnonzero(y.numpy() == c)) for c in np.unique(y.numpy())]
        fit = torch.as_tensor(np.concatenate([h[: len(h) // 2] for h in halves]))
        ev = torch.as_tensor(np.concatenate([h[len(h) // 2:] for h in halves]))
        p0 = z[ev].softmax(1)
        for m, make in METHODS.items():
            p = make(z[fit], y[fit])(z[ev])
            got[m]["red"].append(1 - ece(p, y[ev]) / ece(p0, y[ev]))
            got[m]["nll"].append(nll(p, y[ev]) / nll(p0, y[ev]) - 1)
    return {m: {"ece_reduction_median": round(float(np.median(g["red"])), 4),
                "ece_reduction_iqr": [round(float(v), 4) for v in np.percentile(g["red"], [25, 75])],
                "ece_reduction_range95": [round(float(v), 4) for v in np.percentile(g["red"], [2.5, 97.5])],
                "share_reduction_ge_30": round(float(np.mean(np.array(g["red"]) >= TARGET)), 3),
                "nll_change_median": round(float(np.median(g["nll"])), 4)} for m, g in got.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a trained classification run directory")
    ap.add_argument("--logits", type=Path, default=None, help="cache of the run's raw val/test logits (.pt)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test images")
    ap.add_argument("--resplits", type=int, default=200, help="random val+test halves (0: skip)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON")
    ap.add_argument("--figure", type=Path, default=None, help="reliability diagram PNG (test, before and after)")
    args = ap.parse_args()
    meta = json.loads((args.run / "metrics.json").read_text())
    if meta.get("probe", {}).get("refit_on") == "train+val":
        raise SystemExit(f"{args.run}: a linear probe refit on train+val; its val logits are in-sample, so a "
                         f"temperature fitted on them here would not be --calibrate's (fitted on the train-only fit)")
    lg = run_logits(args.run, args.logits)
    (zv, yv), (zt, yt) = lg["val"], lg["test"]
    zv, zt = zv.double(), zt.double()
    t, cal = calibrate_splits("temperature", val=(zv, yv), test=(zt, yt))
    test = test_split(zv, yv, zt, yt, n=args.bootstrap)
    results = {
        "benchmark": "temperature scaling", "run": str(args.run), "strategy": meta["strategy"],
        "backbone": meta["backbone"], "n_val": len(yv), "n_test": len(yt),
        "ece_estimator": "torchmetrics multiclass_calibration_error: top-1, 15 equal-width bins, L1",
        "val_used_for": {"best_epoch": meta.get("best_epoch"), "restored": meta.get("restored"),
                         "early_stops": meta.get("early_stops")},
        "temperature_in_metrics_json": meta["test"].get("temperature"),
        "val": {"accuracy": float((zv.argmax(1) == yv).float().mean()),
                **{k: cal["val"][k] for k in ("ece_uncalibrated", "ece")}},
        "test": test, "test_diagnostics": test_diagnostics(zt, yt), "alternatives_val_fit_test_once": alternatives(zv, yv, zt, yt),
    }
    if args.resplits:
        results["resplits"] = {"n": args.resplits, "pooled": "val + test", "methods": resplits(
            torch.cat([zv, zt]), torch.cat([yv, yt]), n=args.resplits)}
    results["machine"] = machine()
    print(table(["split", "accuracy", "ECE before", "ECE after", "T"],
                [["val", results["val"]["accuracy"], cal["val"]["ece_uncalibrated"], cal["val"]["ece"], t],
                 ["test", test["accuracy"], test["ece_uncalibrated"], test["ece"], None]]))
    print(f"test ECE reduction {test['ece_reduction']:.1%}, 95 % CI {test['ece_reduction_ci95']}; "
          f">= 30 % in {test['share_of_resamples_reduction_ge_30']:.0%} of resamples; T 95 % CI {test['temperature_ci95']}")
    print(f"noise floor (perfectly calibrated, same confidences): {test['noise_floor']}")
    print(f"test diagnostics: {results['test_diagnostics']}")
    print(table(["method (fit on val)", "test ECE", "reduction", "test NLL", "accuracy"],
                [[m, r["ece"], r["ece_reduction"], r["nll"], r["accuracy"]]
                 for m, r in results["alternatives_val_fit_test_once"].items()]))
    if args.resplits:
        print(table(["method (re-splits)", "median reduction", "IQR", "share >= 30 %", "NLL change"],
                    [[m, r["ece_reduction_median"], str(r["ece_reduction_iqr"]), r["share_reduction_ge_30"],
                      r["nll_change_median"]] for m, r in results["resplits"]["methods"].items()]))
    if args.figure is not None:
        from transferlab.calibration.figures import reliability_diagram, run_reliability

        panels = run_reliability({"test": calibration_summary(zt, yt, temperature=t)})
        fig = reliability_diagram(panels, title=f"{meta['strategy']} / {meta['backbone']}: test")
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=80)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
