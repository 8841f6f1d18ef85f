"""Segmentation by transfer on oxford-pets-3 trimaps (pet / background / border), official trainval/test.

Each ``--runs`` entry trains ``train --task segment`` once (val carved from trainval; test = the
official test list) and the table prints test mean IoU, pixel accuracy, IoU per class, the val
numbers, the wall time and the CPU time (user + sys of this process: on a shared machine the wall
time is inflated by the load, the CPU time is not; with 2 threads a quiet wall time is about half of
it). The JSON is rewritten after every run (``machine.load_avg_1m`` is the load when the last run
ended; each run keeps its own start/end load). ``--set '{"pixel_weights": "1,1,2"}'`` adds options
to every run (experiments on val; the name ``--tag`` marks them in the JSON).

Example:
    chrt -i 0 env PYTHONPATH=src python benchmarks/segment.py --work /tmp/seg \\
        --json benchmarks/results/segment_pets.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from common import machine, table, write_json

from transferlab.experiments.train import train

#: name -> options of transferlab.train: the default fine-tune, the frozen encoder, the scratch baseline
RUNS: dict[str, dict[str, Any]] = {
    "fine-tune": {"strategy": "fine-tune"},
    "frozen-encoder": {"strategy": "feature-extraction", "epochs": 10},
    "scratch": {"strategy": "scratch", "scratch_epochs": 8, "views": 0},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/datasets/oxford-pets-3")
    p.add_argument("--work", type=Path, required=True, help="folder for the run directories")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--set", type=json.loads, default={}, help="JSON object of options added to every run")
    p.add_argument("--tag", default="", help="suffix of the run names (e.g. the experiment)")
    args = p.parse_args(argv)
    rows, runs = [], {}
    for base in args.runs.split(","):
        name, options = base + args.tag, {**RUNS[base], **args.set}
        load0, t0, cpu0 = round(os.getloadavg()[0], 2), time.perf_counter(), _cpu_s()
        run = train(args.data, task="segment", out=args.work / f"run-{name}", overwrite=True, backbone=args.backbone,
                    workers=args.workers, quiet=True, **options)
        wall, cpu = round(time.perf_counter() - t0, 1), round(_cpu_s() - cpu0, 1)
        t, v = run.metrics["test"], run.metrics["val"]
        runs[name] = {"options": options, "test_mean_iou": t["mean_iou"], "test_pixel_accuracy": t["pixel_accuracy"],
                      "test_iou": {c: x["iou"] for c, x in t["per_class"].items()},
                      "val_mean_iou": v["mean_iou"], "val_pixel_accuracy": v["pixel_accuracy"],
                      "val_iou": {c: x["iou"] for c, x in v["per_class"].items()}, "wall_s": wall, "cpu_s": cpu,
                      "best_epoch": run.metrics["best_epoch"], "split_sizes": run.metrics["split_sizes"],
                      "load_avg_1m_start": load0, "load_avg_1m_end": round(os.getloadavg()[0], 2)}
        rows.append([name, t["mean_iou"], t["pixel_accuracy"], *runs[name]["test_iou"].values(), v["mean_iou"], wall,
                     cpu])
        write_json(args.json, {"data": args.data, "backbone": args.backbone, "runs": runs, "machine": machine()})
    print(table(["run", "test mIoU", "pixel acc", "IoU pet", "IoU bg", "IoU border", "val mIoU", "wall s", "CPU s"],
                rows))
    return 0


def _cpu_s() -> float:
    """User + sys seconds of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    raise SystemExit(main())
