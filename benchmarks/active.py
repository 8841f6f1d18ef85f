"""Simulated active learning on flowers17: random vs margin vs k-center, 2 to 10 labelled per class.

The pool is flowers17's training split (0.5/0.25/0.25, split seed 0: 40 images per class), the
measure the test split (340 images). Every run starts from the same seeded 2 images per class,
then labels 17 more images per round (one class's worth per class on average) chosen by:
``random``; ``margin`` (smallest top-1 minus top-2 probability of the current classifier); or
``kcenter`` (k-center greedy on the embeddings, Sener & Savarese 2018). The classifier is the
audit's: logistic regression (C=10) on L2-normalised pooled efficientnet_lite0 features, which
come from the feature cache (one forward pass of the data set, then every round is a fit of a few
hundred rows). 3 seeds; the figure plots the mean test accuracy per round.

Example:
    PYTHONPATH=src nice -n 10 python benchmarks/active.py --shared ../shared/datasets \\
        --json benchmarks/results/active.json --figure docs/active_learning.png
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, table, write_json
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from transferlab.unlabeled.select import select

STRATEGIES = ("random", "margin", "kcenter")


def flowers_features(shared: Path, *, backbone: str = "efficientnet_lite0") -> dict[str, Any]:
    """Pooled features and labels of flowers17's train / val / test split (from the feature cache)."""
    from transferlab.audit.features import Embedder
    from transferlab.data import make_split, open_dataset
    from transferlab.engine.feature_cache import FeatureCache

    src = open_dataset(str(shared / "flowers17"), quiet=True)
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    e = Embedder.create(backbone, source=src, norm_indices=split.train, cache=FeatureCache())
    out: dict[str, Any] = {"classes": src.classes}
    for name in ("train", "val", "test"):
        idx = getattr(split, name)
        out[name] = (e.embed(name, src, idx), src.labels[idx])
    out["forward_images"] = e.store.forward_images
    return out


def classifier() -> Any:
    return make_pipeline(Normalizer(), LogisticRegression(C=10.0, max_iter=1000))


def fit_score(x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> tuple[Any, float]:
    clf = classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf, float((clf.predict(xt) == yt).mean())


def simulate(strategy: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, *, seed: int,
             start: int = 2, stop: int = 10) -> list[float]:
    """Test accuracy after each round, from ``start`` to ``stop`` labelled images per class (on average)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    labelled = [int(i) for c in classes for i in rng.choice(np.flatnonzero(y == c), size=start, replace=False)]
    accs = []
    for k in range(start, stop + 1):
        clf, acc = fit_score(x[labelled], y[labelled], xt, yt)
        accs.append(acc)
        if k == stop:
            break
        pool = np.setdiff1d(np.arange(len(y)), labelled)
        n = len(classes)
        if strategy == "random":
            pick = rng.choice(pool, size=n, replace=False)
        elif strategy == "margin":
            pick = pool[select("margin", n=n, probs=clf.predict_proba(x[pool]))[0]]
        else:
            pick = pool[select("kcenter", n=n, pool=x[pool], labelled=x[labelled], seed=seed)[0]]
        labelled += [int(i) for i in pick]
    return accs


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ks = results["per_class"]
    for s in STRATEGIES:
        m, sd = np.array(results["mean"][s]), np.array(results["std"][s])
        ax.plot(ks, m, marker="o", ms=3, label=s)
        ax.fill_between(ks, m - sd, m + sd, alpha=0.15)
    ax.set_xlabel("labelled images per class (17 classes)")
    ax.set_ylabel("test accuracy (mean of 3 seeds)")
    ax.set_title("flowers17: active learning on cached features", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args(argv)
    f = flowers_features(args.shared)
    (x, y), (xt, yt) = f["train"], f["test"]
    runs = {s: [simulate(s, x, y, xt, yt, seed=seed) for seed in range(args.seeds)] for s in STRATEGIES}
    ks = list(range(2, 11))
    res: dict[str, Any] = {"machine": machine(), "per_class": ks, "seeds": args.seeds, "runs": runs,
                           "mean": {s: [round(float(v), 4) for v in np.mean(r, 0)] for s, r in runs.items()},
                           "std": {s: [round(float(v), 4) for v in np.std(r, 0)] for s, r in runs.items()},
                           "forward_images": f["forward_images"]}
    best = [max(res["mean"]["margin"][i], res["mean"]["kcenter"][i]) for i in range(len(ks))]
    res["margin_or_kcenter_at_or_above_random_every_round"] = all(
        b >= r for b, r in zip(best, res["mean"]["random"]))
    i6 = ks.index(6)
    res["gain_at_6_per_class"] = {s: round(res["mean"][s][i6] - res["mean"]["random"][i6], 4) for s in ("margin", "kcenter")}
    print(table(["per class"] + list(STRATEGIES), [[k] + [res["mean"][s][i] for s in STRATEGIES] for i, k in enumerate(ks)]))
    print("gain at 6/class vs random:", res["gain_at_6_per_class"],
          "| margin or kcenter >= random every round:", res["margin_or_kcenter_at_or_above_random_every_round"])
    if args.figure:
        plot(res, args.figure)
    write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
