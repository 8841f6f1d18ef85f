"""Does LogME rank the backbones as the measured accuracy does? Kendall tau over the backbones with weights here.

For each dataset of ``benchmarks/recommend.py`` (same split: fractions 0.5/0.25/0.25, split seed 0,
the same training images per class and validation subsets as there) and each backbone with offline
ImageNet weights:

* LogME of the pooled features of the training split (what ``transferlab recommend`` computes);
* the linear probe's 5-fold stratified cross-validated accuracy over the non-test pool (train + val;
  test untouched), computed by the function ``recommend --cv`` uses
  (``transferlab.experiments.backbones.probe_cv``: ``experiments.cv``'s stratified folds seeded by the
  split seed, the same as ``train --cv`` on that split, StandardScaler + logistic regression, C chosen
  by the CV itself from ``--grid``).

Kendall tau between the two rankings (and, for reference, between ImageNet top-1 and the accuracy) per
dataset; with 4 backbones tau takes the values -1, -2/3, ..., 1 and one swap costs 1/3. Features go
through the same on-disk feature cache as ``train`` and ``recommend`` (a rerun extracts nothing).

Example:
    PYTHONPATH=src nice -n 10 python benchmarks/logme.py --shared ../shared/datasets --json benchmarks/results/logme.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, table, write_json
from recommend import cases
from scipy.stats import kendalltau

from transferlab.data import make_split, open_dataset
from transferlab.engine.logme import logme
from transferlab.experiments.auto import AUTO_GRID
from transferlab.experiments.backbones import backbones_with_weights, pooled_features, probe_cv
from transferlab.experiments.compare import stratified_subset
from transferlab.zoo import get_entry

GRID = AUTO_GRID  # the C values `train --cv`, auto and `recommend --cv` search


def run_case(case: dict[str, Any], *, backbones: list[str], folds: int, grid: tuple[float, ...],
             pool: str = "train+val") -> dict[str, Any]:
    src = open_dataset(case["data"], quiet=True)
    split = make_split(src, seed=0, train_per_class=case["train_per_class"])
    val = split.val if case["val"] is None else stratified_subset(src, split.val, case["val"], seed=1)
    if pool == "train":  # the CV over the training split alone (no val features to extract)
        val = val[:0]
    rows: dict[str, Any] = {}
    for bb in backbones:
        t0 = time.perf_counter()
        ftr = pooled_features(src, split.train, bb, split_name="train")
        fva = pooled_features(src, val, bb, split_name="val") if val.size else np.zeros((0, ftr.shape[1]), ftr.dtype)
        extract_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        score = logme(ftr, src.labels[split.train])
        logme_s = time.perf_counter() - t1
        # what `recommend --cv` computes: transferlab's folds (split seed 0) and fits, features from the cache
        s = probe_cv(src, [split.train, val], bb, k=folds, seed=0, grid=grid)
        cv = {"cv_mean": round(s.mean, 6), "cv_std": round(s.std, 6), "cv_loss_mean": round(s.loss_mean, 6), "C": s.C}
        rows[bb] = {"logme": round(score, 6), **cv, "top1": get_entry(bb).top1, "feature_dim": int(ftr.shape[1]),
                    "extract_s": round(extract_s, 1), "logme_s": round(logme_s, 2),
                    "cv_s": round(time.perf_counter() - t1 - logme_s, 1)}
        print(f"  {bb}: LogME {score:.4f}, CV {cv['cv_mean']:.4f}", file=sys.stderr, flush=True)
    acc = [rows[b]["cv_mean"] for b in backbones]
    tau = kendalltau([rows[b]["logme"] for b in backbones], acc)[0]
    tau_top1 = kendalltau([rows[b]["top1"] for b in backbones], acc)[0]
    return {"backbones": rows, "kendall_tau_logme": None if np.isnan(tau) else round(float(tau), 4),
            "kendall_tau_top1": None if np.isnan(tau_top1) else round(float(tau_top1), 4),
            "logme_pick": max(backbones, key=lambda b: rows[b]["logme"]),
            "best_measured": max(backbones, key=lambda b: rows[b]["cv_mean"]),
            "cv_pool": pool, "pool": {"train": int(split.train.size), "val": int(val.size)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--cases", default="oxford-pets-3,fashion-mnist-20,flowers17,fashion-mnist-500",
                   help="comma-separated subset of benchmarks/recommend.py's cases, in the order to run")
    p.add_argument("--backbones", default=",".join(backbones_with_weights()))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--grid", default=",".join(map(str, GRID)), help="C values of the CV search")
    p.add_argument("--cv-pool", choices=("train+val", "train"), default="train+val",
                   help="what the CV folds split: the non-test pool, or the training split alone (cheaper)")
    p.add_argument("--keep", action="store_true", help="keep the cases already in --json (run only the others)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    known = cases(a.shared)
    chosen = [c.strip() for c in a.cases.split(",") if c.strip()]
    if unknown := [c for c in chosen if c not in known]:
        p.error(f"--cases: unknown {unknown[0]!r}; expected some of {', '.join(known)}")
    backbones = [b.strip() for b in a.backbones.split(",") if b.strip()]
    grid = tuple(float(c) for c in a.grid.split(","))
    results: dict[str, Any] = {"backbones": backbones, "folds": a.folds, "grid": list(grid), "machine": machine(),
                               "cases": {}}
    if a.keep and a.json is not None and a.json.is_file():
        old = __import__("json").loads(a.json.read_text())
        results["cases"] = old["cases"]
        results["machine"] = {**old["machine"], "load_avg_1m_at_restart": results["machine"]["load_avg_1m"]}
    for name in [c for c in chosen if c not in results["cases"]]:
        t0 = time.perf_counter()
        print(f"{name}:", file=sys.stderr, flush=True)
        results["cases"][name] = {**run_case(known[name], backbones=backbones, folds=a.folds, grid=grid,
                                             pool=a.cv_pool),
                                  "wall_s": round(time.perf_counter() - t0, 1)}
        results["machine"]["load_avg_1m_after_" + name] = round(__import__("os").getloadavg()[0], 2)
        write_json(a.json, results)
    taus = [c["kendall_tau_logme"] for c in results["cases"].values() if c["kendall_tau_logme"] is not None]
    results["mean_kendall_tau_logme"] = round(float(np.mean(taus)), 4) if taus else None
    write_json(a.json, results)
    rows = [[n, *(f"{c['backbones'][b]['logme']:.3f} / {c['backbones'][b]['cv_mean']:.4f}" for b in backbones),
             c["kendall_tau_logme"], c["kendall_tau_top1"], c["wall_s"]] for n, c in results["cases"].items()]
    print(table(["case (LogME / CV acc)", *backbones, "tau LogME", "tau top-1", "s"], rows))
    print(f"mean Kendall tau (LogME vs CV accuracy): {results['mean_kendall_tau_logme']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
