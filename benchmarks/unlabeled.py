"""Unlabelled images on flowers17: 5 labelled per class, the rest of the training split unlabelled.

For 3 seeds (which 5 images per class are labelled), the linear probe of ``train --strategy
linear-probe`` (C chosen on val, refit on train+val) with labelled images only, against the same
probe refit with the unlabelled rest of train (35 per class, 595 images) through
:func:`transferlab.unlabeled.train.probe_with_unlabeled`, the function ``train --unlabeled`` calls,
by self-training and by label spreading. Features: pooled efficientnet_lite0, from the feature cache.

Example:
    PYTHONPATH=src nice -n 10 python benchmarks/unlabeled.py --shared ../shared/datasets \\
        --json benchmarks/results/unlabeled.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from active import flowers_features
from common import machine, table, write_json

from transferlab.strategies import fit_linear_probe
from transferlab.unlabeled.semi import METHODS
from transferlab.unlabeled.train import probe_with_unlabeled


def test_accuracy(probe: Any, xt: np.ndarray, yt: np.ndarray) -> float:
    logits = torch.as_tensor(xt, dtype=torch.float32) @ probe.weight.T + probe.bias
    return float((logits.argmax(1).numpy() == yt).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    f = flowers_features(args.shared)
    (x, y), (xv, yv), (xt, yt) = f["train"], f["val"], f["test"]
    k = len(f["classes"])
    rows, runs = [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        lab = np.concatenate([rng.choice(np.flatnonzero(y == c), size=args.per_class, replace=False) for c in range(k)])
        unl = np.setdiff1d(np.arange(len(y)), lab)
        base = fit_linear_probe(x[lab], y[lab], xv, yv, num_classes=k, seed=seed)
        rec: dict[str, Any] = {"seed": seed, "labelled": len(lab), "unlabelled": len(unl),
                               "labelled_only": {"test_accuracy": round(test_accuracy(base, xt, yt), 4), "C": base.C}}
        for method in METHODS:
            semi, info = probe_with_unlabeled(base, x[lab], y[lab], xv, yv, x[unl], num_classes=k, classifier="logreg",
                                              method=method, threshold=0.75, seed=seed, folder="rest-of-train")
            rec[method] = {"test_accuracy": round(test_accuracy(semi, xt, yt), 4), **info}
        runs.append(rec)
        rows.append([seed, rec["labelled_only"]["test_accuracy"]] + [rec[m]["test_accuracy"] for m in METHODS]
                    + [rec[m]["n_used"] for m in METHODS])
    mean = {m: round(float(np.mean([r[m]["test_accuracy"] for r in runs])), 4) for m in ("labelled_only", *METHODS)}
    change = {m: round(mean[m] - mean["labelled_only"], 4) for m in METHODS}
    print(table(["seed", "labelled only"] + list(METHODS) + [f"used ({m})" for m in METHODS], rows))
    print("mean:", mean, "change vs labelled-only:", change)
    write_json(args.json, {"machine": machine(), "per_class": args.per_class, "runs": runs, "mean": mean,
                           "change_vs_labelled_only": change, "forward_images": f["forward_images"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
