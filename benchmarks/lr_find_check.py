"""Is ``transferlab lr-find`` right? Its suggestion against a grid of 5 rates, chosen on validation.

On flowers17 (split 0.5/0.25/0.25, ``--train-per-class 10``), efficientnet_lite0, strategy
feature-extraction (its one phase is fine-tune's head warm-up): the range test suggests a rate; the
grid trains the strategy at 3e-4, 1e-3, 3e-3, 1e-2 and 3e-2 (``--lr``, half-decade steps, fixed
before looking at the suggestion) and picks the best by validation accuracy (ties: lower val loss).
The check passes when the suggestion is within a factor of 3 of the best grid rate. The test split
is never looked at for the choice (its accuracy is reported beside).

Example:
    PYTHONPATH=src python benchmarks/lr_find_check.py --data ../shared/datasets/flowers17 \\
        --json benchmarks/results/lr_find_flowers17.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import machine, table, write_json

from transferlab.experiments.lr_find import lr_find
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions

GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="/tmp/lr_find_check")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--strategy", default="feature-extraction")
    ap.add_argument("--train-per-class", type=int, default=10, help="0: the whole train split")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    d = DataOptions(split="0.5,0.25,0.25", split_seed=0, train_per_class=a.train_per_class or None, workers=1,
                    quiet=True)
    t = TrainOptions(backbone=a.backbone, strategy=a.strategy)
    found = lr_find(a.data, out=Path(a.out) / "lr-find", data_options=d, train_options=t)
    rows, grid = [], []
    for lr in GRID:
        run = run_training(a.data, data_options=d, train_options=replace(t, lr=lr), out=Path(a.out) / f"lr{lr:g}")
        m = run.metrics
        grid.append({"lr": lr, "val_accuracy": m["val"]["accuracy"], "val_loss": m["val"]["loss"],
                     "test_accuracy": m["test"]["accuracy"], "best_epoch": m["best_epoch"]})
        rows.append([f"{lr:g}", m["val"]["accuracy"], m["val"]["loss"], m["test"]["accuracy"]])
    best = max(grid, key=lambda g: (g["val_accuracy"], -g["val_loss"]))
    ratio = found["suggested_lr"] / best["lr"]
    ok = 1 / 3 <= ratio <= 3
    result = {"data": a.data, "backbone": a.backbone, "strategy": a.strategy, "train_per_class": a.train_per_class,
              "suggested_lr": found["suggested_lr"], "steepest_lr": found["steepest_lr"],
              "min_loss_lr": found["min_loss_lr"], "rule": found["rule"],
              "lr_find_seconds": found["seconds"], "grid": grid, "best_lr_on_val": best["lr"],
              "ratio_suggested_to_best": ratio, "within_3x": ok, "wall_s": round(time.perf_counter() - t0, 1),
              "machine": machine()}
    print(table(["lr", "val acc", "val loss", "test acc"], rows))
    print(f"suggested {found['suggested_lr']:.3g} (loss minimum at {found['min_loss_lr']:.3g}); best on val "
          f"{best['lr']:g}; ratio {ratio:.2f} -> {'within' if ok else 'NOT within'} 3x "
          f"(load {result['machine']['load_avg_1m']})")
    write_json(a.json, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
