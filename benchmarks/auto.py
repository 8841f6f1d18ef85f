"""``--strategy auto`` on the issue's three datasets: test accuracy, wall time, what it chose.

Cases (as in benchmarks/recommend.py): flowers17 (split 0.5/0.25/0.25, split seed 0),
oxford-pets-3 by breed (its own trainval/test split), Fashion-MNIST with 20 training images per
class (fixed seeded subsets of 1000 validation and 2000 test images). Auto cross-validates on
train+val only; the test split is touched once, by the final model. Every case runs with the
default ``--time-budget`` and states the machine load and whether features came from the cache.

Example:
    PYTHONPATH=src python benchmarks/auto.py --shared ../shared/datasets --out /tmp/auto \\
        --json benchmarks/results/auto.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from common import machine, table, write_json

from transferlab.data import Split, make_split, open_dataset, parse_fractions
from transferlab.experiments.compare import stratified_subset
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions

TARGETS = {"flowers17": 0.980, "oxford-pets-3": 0.970, "fashion-mnist-20": 0.860}


def cases(shared: Path) -> dict[str, dict[str, Any]]:
    return {
        "flowers17": {"data": str(shared / "flowers17"), "train_per_class": None, "val": None, "test": None},
        "oxford-pets-3": {"data": str(shared / "oxford-pets-3"), "train_per_class": None, "val": None, "test": None},
        "fashion-mnist-20": {"data": "fashion-mnist", "train_per_class": 20, "val": 1000, "test": 2000},
    }


def case_split(source: Any, case: dict[str, Any], d: DataOptions) -> Split:
    """The split of benchmarks/recommend.py (compare's val/test subsets)."""
    fr = parse_fractions(d.split, option="--split")
    base = make_split(source, fractions=fr, seed=d.split_seed)
    val = base.val if case["val"] is None else stratified_subset(source, base.val, case["val"], seed=d.split_seed + 1)
    test = base.test if case["test"] is None else stratified_subset(source, base.test, case["test"],
                                                                    seed=d.split_seed + 2)
    train = base.train if case["train_per_class"] is None else make_split(
        source, fractions=fr, seed=d.split_seed, train_per_class=case["train_per_class"]).train
    return Split(train=train, val=val, test=test)


def run_case(name: str, case: dict[str, Any], *, out: Path, budget: float) -> dict[str, Any]:
    d = DataOptions(split="0.5,0.25,0.25", split_seed=0)
    source = open_dataset(case["data"], quiet=True)
    split = case_split(source, case, d)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    run = run_training(case["data"], data_options=d, train_options=TrainOptions(time_budget=budget),
                       out=out / name, source=source, split=split)
    wall = time.perf_counter() - t0
    record = json.loads((out / name / "auto.json").read_text())
    return {"test_accuracy": run.test_accuracy, "target": TARGETS[name], "ok": run.test_accuracy >= TARGETS[name],
            "wall_s": round(wall, 1), "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "chosen": record["chosen"], "split_sizes": split.sizes(), "k": record["k"],
            "cost_model_s_per_image": record["cost_model_s_per_image"],
            "candidates": [{k: r.get(k) for k in ("name", "status", "cv_mean", "cv_std", "seconds", "estimated_s")}
                           for r in record["candidates"]]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--out", type=Path, required=True, help="run directories go here")
    p.add_argument("--cases", default=",".join(TARGETS), help="comma-separated (default: all three)")
    p.add_argument("--time-budget", type=float, default=TrainOptions().time_budget)
    p.add_argument("--json", type=Path, help="write results here (merged with what is already there)")
    a = p.parse_args()
    results: dict[str, Any] = json.loads(a.json.read_text()) if a.json and a.json.is_file() else {}
    results.setdefault("cases", {})
    for name in a.cases.split(","):
        res = run_case(name, cases(a.shared)[name], out=a.out, budget=a.time_budget)
        results["cases"][name] = {**res, "machine": machine()}
        write_json(a.json, results)
        print(f"{name}: test {res['test_accuracy']:.4f} (target {res['target']}) {res['wall_s']:.0f}s "
              f"load {res['load_avg_1m']} chosen {res['chosen']['name']}", file=sys.stderr)
    rows = [[n, r["test_accuracy"], r["target"], r["ok"], r["wall_s"], r["chosen"]["name"]]
            for n, r in results["cases"].items()]
    print(table(["case", "test acc", "target", "ok", "wall s", "chosen"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
