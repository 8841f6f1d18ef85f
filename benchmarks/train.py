"""Training wall time with cached features against recomputing them, side by side in one process.

1. ``feature-extraction`` for ``--epochs`` epochs: the engine with the in-memory activation cache
   and a fresh on-disk feature cache (``cached``: one forward pass through the frozen backbone),
   against ``--no-cache --feature-cache off`` (``recompute``: the frozen backbone runs on every
   training and validation batch of every epoch). Same split, seed and options: test accuracy
   should agree within 0.5 point.
2. ``fine-tune --unfreeze 1``: seconds per fine-tune epoch with frozen-prefix caching (only the
   last stage and the head run) against without (the whole network runs every epoch).

Contenders alternate within each repeat; medians of ``--repeats`` runs. ``--per-class`` picks
that many train/val/test images per class from the standard split (smaller = quicker).

Example:
    PYTHONPATH=src python benchmarks/train.py --data ../shared/datasets/flowers17 --json benchmarks/results/train.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import write_json

from transferlab.data import Split, make_split, open_dataset
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions


def per_class(indices: np.ndarray, labels: np.ndarray, k: int | None) -> np.ndarray:
    """The first ``k`` indices of every class (all with ``k=None``)."""
    if k is None:
        return indices
    return np.concatenate([indices[labels[indices] == c][:k] for c in np.unique(labels[indices])])


def one_run(data: str, *, source: Any, split: Split, train: TrainOptions) -> dict[str, Any]:
    t = time.perf_counter()
    run = run_training(data, data_options=DataOptions(quiet=True), train_options=train, source=source, split=split)
    wall = time.perf_counter() - t
    ft = [h["seconds"] for h in run.history if h["phase"] != "head"]
    return {"wall_s": round(wall, 2), "test_accuracy": round(run.test_accuracy, 4),
            "epochs": len(run.history), "finetune_epoch_s": [round(s, 2) for s in ft]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/datasets/flowers17")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=20, help="feature-extraction epochs")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--per-class", type=int, default=None, help="train/val/test images per class (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="feature-extraction,fine-tune")
    a = p.parse_args(argv)
    source = open_dataset(a.data, quiet=True)
    full = make_split(source, fractions=(0.5, 0.25, 0.25), seed=0)
    split = Split(train=per_class(full.train, source.labels, a.per_class),
                  val=per_class(full.val, source.labels, a.per_class),
                  test=per_class(full.test, source.labels, a.per_class))
    results: dict[str, Any] = {"data": a.data, "backbone": a.backbone, "split": split.sizes(), "repeats": a.repeats,
                               "cpus": os.cpu_count(), "load_avg_1m_before": round(os.getloadavg()[0], 2)}
    parts = a.parts.split(",")
    common = {"backbone": a.backbone, "patience": 10**6, "batch_size": 32}
    setups: dict[str, dict[str, dict[str, Any]]] = {}
    if "feature-extraction" in parts:
        setups["feature-extraction"] = {
            "cached": {**common, "strategy": "feature-extraction", "epochs": a.epochs},
            "recompute": {**common, "strategy": "feature-extraction", "epochs": a.epochs, "cache": False,
                          "feature_cache": "off"},
        }
    if "fine-tune" in parts:
        ft = {**common, "strategy": "fine-tune", "unfreeze": 1, "epochs": 1, "finetune_epochs": a.finetune_epochs}
        setups["fine-tune"] = {
            "cached": ft,
            "recompute": {**ft, "cache": False, "feature_cache": "off"},
        }
    for part, contenders in setups.items():
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in contenders}
        for _ in range(a.repeats):
            for label, opts in contenders.items():
                with tempfile.TemporaryDirectory() as cache_dir:  # a cold disk cache every run
                    if opts.get("feature_cache") != "off":
                        opts = {**opts, "feature_cache": cache_dir}
                    runs[label].append(one_run(a.data, source=source, split=split, train=TrainOptions(**opts)))
                print(f"{part} {label}: {runs[label][-1]} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
        summary: dict[str, Any] = {"runs": runs}
        for label, rs in runs.items():
            summary[label] = {"wall_s": statistics.median(r["wall_s"] for r in rs),
                              "test_accuracy": statistics.median(r["test_accuracy"] for r in rs)}
            if part == "fine-tune":
                summary[label]["finetune_epoch_s"] = statistics.median(s for r in rs for s in r["finetune_epoch_s"])
        key = "finetune_epoch_s" if part == "fine-tune" else "wall_s"
        summary["speedup"] = round(summary["recompute"][key] / summary["cached"][key], 2)
        summary["accuracy_gap_points"] = round(
            100 * abs(summary["cached"]["test_accuracy"] - summary["recompute"]["test_accuracy"]), 2)
        results[part] = summary
        write_json(a.json, results)  # after every part: a long run that is stopped keeps what it measured
    results["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(f"{'benchmark':<20} {'contender':<10} {'wall s':>8} {'s/ft-epoch':>10} {'test acc':>9} {'speedup':>8}")
    for part in setups:
        s = results[part]
        for label in ("cached", "recompute"):
            fte = s[label].get("finetune_epoch_s")
            print(f"{part:<20} {label:<10} {s[label]['wall_s']:>8.1f} {'' if fte is None else f'{fte:.2f}':>10} "
                  f"{s[label]['test_accuracy']:>9.3f} {s['speedup'] if label == 'cached' else '':>8}")
    print(f"split {results['split']}, repeats={a.repeats}, load average 1m: before {results['load_avg_1m_before']}, "
          f"after {results['load_avg_1m_after']}")
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
