"""How well does auto choose among its candidates? Selection rules compared on the pool only, no test split.

Reads ``candidates_oof.npz`` of auto runs (every scored candidate's out-of-fold probabilities over the
non-test pool, e.g. from ``benchmarks/auto.py --out DIR``) and splits the pool many times into a
selection half and an evaluation half (stratified, seeded). Each rule sees the selection half only
(its folds: the run's folds restricted to it); the accuracy of what it chose is read on the
evaluation half. The rules run auto's own code (:mod:`transferlab.experiments.auto`):

- ``accuracy``: the highest CV accuracy, ties by lower log loss (``auto.choose`` without ensemble selection);
- ``log-loss``: the lowest CV log loss;
- ``selection``: ensemble selection (Caruana et al. 2004; ``auto.selection_candidates``: per view policy, the
  single frozen-feature candidates and the best fine-tune), the plain or flip selection with the lower
  cross-fitted CV log loss (``auto.choose`` with ``prefer="selection"``: auto's rule);
- ``competes``: the selection candidates scored cross-fitted beside the others, highest CV accuracy wins.

Reported per case: the mean evaluation-half accuracy of each rule and its paired difference against
``accuracy`` (mean ± standard error over the repeats; wins/losses count the repeats where the rule
chose better/worse).

Example:
    PYTHONPATH=src python benchmarks/selection.py --runs /tmp/auto --json benchmarks/results/selection.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, table, write_json

from transferlab.experiments.auto import Candidate, choose, leaves, selection_candidates
from transferlab.experiments.cv import CVScore, fold_metrics

Rule = Callable[[list[Candidate], np.ndarray, list[np.ndarray]], Candidate]


def strategy_of(name: str) -> str:
    """A candidate's strategy from its name (runs before the npz kept ``strategies``)."""
    for prefix, strategy in (("linear-probe:", "linear-probe"), ("concat:", "linear-probe-concat"),
                             ("fine-tune:", "fine-tune"), ("ensemble:fine-tune", "fine-tune+features"),
                             ("ensemble-selection:", "ensemble-selection"), ("ensemble:", "linear-probe-ensemble")):
        if name.startswith(prefix):
            return strategy
    raise ValueError(f"selection.py: unknown candidate name {name!r}")


def candidates(z: Any, rows: np.ndarray, folds: list[np.ndarray]) -> list[Candidate]:
    """The run's candidates scored on ``rows`` of the pool only (``folds`` index into ``rows``)."""
    names = [str(n) for n in z["names"]]
    strategies = [str(s) for s in z["strategies"]] if "strategies" in z else [strategy_of(n) for n in names]
    flips = [bool(f) for f in z["flip"]] if "flip" in z else [n.endswith(":flip") for n in names]
    out = []
    for name, strategy, flip, oof in zip(names, strategies, flips, z["oof"]):
        if strategy == "ensemble-selection":  # the run's own, selected on the whole pool: rebuilt per half here
            continue
        c = Candidate(name=name, backbone=name, strategy=strategy, options={}, members=[], groups=[], flip=flip)
        c.score = CVScore.from_oof(oof[rows], z["labels"][rows], folds)
        out.append(c)
    return out


def by_log_loss(cands: list[Candidate], labels: np.ndarray, folds: list[np.ndarray]) -> Candidate:
    everything = [np.arange(len(labels))]  # one fold holding every item: the pooled log loss
    return min(cands, key=lambda c: fold_metrics(c.score.oof, labels, everything)[1][0])  # type: ignore[union-attr]


def _selections(cands: list[Candidate], labels: np.ndarray, folds: list[np.ndarray]) -> list[Candidate]:
    plain = [c for c in cands if c.strategy != "fine-tune"]
    return selection_candidates(plain, [c for c in cands if c.strategy == "fine-tune"], labels, folds)


RULES: dict[str, Rule] = {
    "accuracy": lambda c, y, f: choose(c, prefer="accuracy")[0],
    "log-loss": by_log_loss,
    "selection": lambda c, y, f: choose(c + _selections(c, y, f), prefer="selection")[0],
    "competes": lambda c, y, f: choose(c + _selections(c, y, f), prefer="accuracy")[0],
}


def halves(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stratified random half of the pool and the rest."""
    sel = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: (labels == c).sum() // 2]
                          for c in np.unique(labels)])
    return np.sort(sel), np.setdiff1d(np.arange(len(labels)), sel)


def evaluate(z: Any, *, repeats: int, seed: int) -> dict[str, Any]:
    labels, fold = z["labels"], z["fold"]
    full = {str(n): p for n, p in zip(z["names"], z["oof"])}
    rng = np.random.default_rng(seed)
    accs: dict[str, list[float]] = {r: [] for r in RULES}
    for _ in range(repeats):
        sel, rest = halves(labels, rng)
        folds = [np.flatnonzero(fold[sel] == f) for f in np.unique(fold)]
        cands = candidates(z, sel, folds)
        for name, rule in RULES.items():
            chosen = rule(cands, labels[sel], folds)
            probs = sum(w * full[p.name][rest] for p, w in leaves(chosen))
            accs[name].append(float((probs.argmax(1) == labels[rest]).mean()))
    base = np.array(accs["accuracy"])
    out: dict[str, Any] = {}
    for name, a in accs.items():
        d = np.array(a) - base
        out[name] = {"mean_accuracy": round(float(np.mean(a)), 5), "diff_vs_accuracy": round(float(d.mean()), 5),
                     "diff_se": round(float(d.std(ddof=1) / np.sqrt(len(d))), 5),
                     "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder searched for */candidates_oof.npz")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    files = sorted(args.runs.glob("**/candidates_oof.npz"))
    if not files:
        print(f"selection.py: no candidates_oof.npz under {args.runs}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"machine": machine(), "repeats": args.repeats, "seed": args.seed, "cases": {}}
    rows = []
    for f in files:
        z = dict(np.load(f))
        r = evaluate(z, repeats=args.repeats, seed=args.seed)
        result["cases"][f.parent.name] = {"pool": int(len(z["labels"])), "candidates": int(len(z["names"])),
                                          "rules": r}
        for name, x in r.items():
            rows.append([f.parent.name, name, f"{x['mean_accuracy']:.4f}",
                         f"{x['diff_vs_accuracy']:+.4f} ± {x['diff_se']:.4f}", f"{x['wins']}/{x['losses']}"])
    print(table(["case", "rule", "eval-half acc", "vs accuracy rule", "wins/losses"], rows))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
