"""Is ``transferlab recommend`` right? Its pick against the best measured strategy, on four datasets.

For every case, ``recommend`` measures the data (size, similarity to the source) and names a
strategy; ``compare`` then measures, on the same split and seed, the candidates
``linear-probe``, ``feature-extraction``, ``fine-tune`` (top 3 stages), ``fine-tune:unfreeze=4``
(deeper) and the recommended entry itself when it is none of these. The recommendation passes
when its test accuracy is the best or within ``--tolerance`` (1 point) of it.

Cases (the issue's): flowers17 (split 0.5/0.25/0.25), Fashion-MNIST with 20 and with 500 training
images per class (fixed seeded subsets of 1000 validation and 2000 test images), oxford-pets-3 as
classification by breed (its own trainval/test split). Scratch is left out: it is the baseline,
measured by ``transferlab compare`` and never the best on these sets.

Example:
    PYTHONPATH=src python benchmarks/recommend.py --shared ../shared/datasets --json benchmarks/results/recommend.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import machine, table, write_json

from transferlab.data import open_dataset
from transferlab.experiments.compare import compare, variant_options
from transferlab.experiments.recommend import recommend
from transferlab.options import DataOptions, TrainOptions

CANDIDATES = ("linear-probe", "feature-extraction", "fine-tune", "fine-tune:unfreeze=4")


def cases(shared: Path) -> dict[str, dict[str, Any]]:
    """The four datasets: where they are and how they are split."""
    return {
        "flowers17": {"data": str(shared / "flowers17"), "train_per_class": None, "val": None, "test": None},
        "fashion-mnist-20": {"data": "fashion-mnist", "train_per_class": 20, "val": 1000, "test": 2000},
        "fashion-mnist-500": {"data": "fashion-mnist", "train_per_class": 500, "val": 1000, "test": 2000},
        "oxford-pets-3": {"data": str(shared / "oxford-pets-3"), "train_per_class": None, "val": None, "test": None},
    }


def measured(name: str, case: dict[str, Any], entries: list[str], *, backbone: str, out: Path, reuse: bool,
             source: Any) -> dict[str, Any]:
    """``compare`` results for ``entries``; with ``reuse``, a finished compare in ``out/name`` is kept and only
    entries it lacks are run (into ``out/name/more-K``)."""
    runs: dict[str, Any] = {}
    dirs = sorted((out / name).glob("more-*")) if reuse else []
    for d in ([out / name] + dirs) if reuse else []:
        f = d / "results.json"
        if f.is_file() and (r := json.loads(f.read_text())).get("status") == "done" and r["backbone"] == backbone:
            runs.update({k: {**v, "reused_from": str(f)} for k, v in r["strategies"].items()})
            runs.setdefault("_split", r["split"])
    todo = [e for e in entries if e not in runs]
    if todo:
        target = out / name if not runs else out / name / f"more-{len(dirs) + 1}"
        res = compare(case["data"], strategies=todo, seeds=1, out=target, source=source,
                      data_options=DataOptions(train_per_class=case["train_per_class"], quiet=True),
                      train_options=TrainOptions(backbone=backbone), val_subset=case["val"], test_subset=case["test"],
                      overwrite=True)
        runs.update(res["strategies"])
        runs.setdefault("_split", res["split"])
    split = runs.pop("_split")
    return {"strategies": {e: runs[e] for e in entries}, "split": split}


def run_case(name: str, case: dict[str, Any], *, backbone: str, out: Path, tolerance: float,
             reuse: bool) -> dict[str, Any]:
    source = open_dataset(case["data"], quiet=True)
    t0 = time.perf_counter()
    rec = recommend(case["data"], backbone=backbone, train_per_class=case["train_per_class"], source=source)
    rec_s = time.perf_counter() - t0
    base = TrainOptions(backbone=backbone)
    # the recommended entry, or the candidate that trains with exactly its options
    same = [c for c in CANDIDATES if variant_options(c, base) == variant_options(rec["compare_entry"], base)]
    picked_entry = same[0] if same else rec["compare_entry"]
    entries = list(CANDIDATES) + ([picked_entry] if picked_entry not in CANDIDATES else [])
    res = measured(name, case, entries, backbone=backbone, out=out, reuse=reuse, source=source)
    acc = {k: v["test_accuracy_mean"] for k, v in res["strategies"].items() if v["test_accuracy_mean"] is not None}
    best = max(acc, key=lambda k: acc[k])
    picked = acc.get(picked_entry)
    gap = None if picked is None else round(100 * (acc[best] - picked), 2)
    return {
        "recommended": rec["compare_entry"], "quadrant": rec["quadrant"],
        "similarity": rec["measurements"]["similarity"],
        "train_images_per_class": rec["measurements"]["train_images_per_class"],
        "recommended_accuracy": picked, "best": best, "best_accuracy": acc[best], "gap_points": gap,
        "ok": gap is not None and gap <= tolerance, "accuracy": acc,
        "wall_s": {k: v["wall_s"] for k, v in res["strategies"].items()}, "recommend_s": round(rec_s, 2),
        "split_sizes": res["split"]["sizes"], "reasons": rec["reasons"],
        "reused": sorted({v["reused_from"] for v in res["strategies"].values() if "reused_from" in v}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/datasets"), help="folder with flowers17/ and "
                   "oxford-pets-3/")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cases", default=",".join(cases(Path("."))), help="comma-separated subset of the cases")
    p.add_argument("--out", type=Path, default=Path("runs/bench_recommend"), help="compare outputs (run folders)")
    p.add_argument("--tolerance", type=float, default=1.0, help="accepted gap to the best, in points")
    p.add_argument("--reuse", action="store_true", help="keep finished compare results found in --out (the "
                   "recommendation is always recomputed; only missing entries are trained)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    a = p.parse_args(argv)
    known = cases(a.shared)
    chosen = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        p.error(f"--cases: unknown {unknown[0]!r}; expected some of {', '.join(known)}")
    results: dict[str, Any] = {"backbone": a.backbone, "candidates": list(CANDIDATES), "tolerance_points": a.tolerance,
                               "machine": machine(), "cases": {}}
    for name in chosen:
        t0 = time.perf_counter()
        results["cases"][name] = run_case(name, known[name], backbone=a.backbone, out=a.out, tolerance=a.tolerance,
                                          reuse=a.reuse)
        results["cases"][name]["case_wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"done {name}: {results['cases'][name]['accuracy']}", file=sys.stderr, flush=True)
        write_json(a.json, results)
    rows = [[n, c["quadrant"], c["similarity"], c["train_images_per_class"], c["recommended"],
             c["recommended_accuracy"], c["best"], c["best_accuracy"], c["gap_points"], "yes" if c["ok"] else "NO",
             round(sum(c["wall_s"].values()), 1)] for n, c in results["cases"].items()]
    print(table(["case", "quadrant", "similarity", "train/class", "recommended", "its acc", "best measured",
                 "best acc", "gap pts", "ok", "compare s"], rows))
    m = results["machine"]
    print(f"{a.backbone}, 1 seed; {m['cpu']}, {m['cpus']} cores, torch {m['torch']}")
    results["all_ok"] = all(c["ok"] for c in results["cases"].values())
    write_json(a.json, results)
    return 0 if results["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
