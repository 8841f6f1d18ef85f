"""Multi-label on real photos: flowers17 mosaics of two photos of different classes, split by photo.

Every flowers17 photo is first assigned to train / val / test (stratified by class, ``--split-seed``),
then paired within its split with a photo of another class: each mosaic is the two photos'
centre crops (1:2) side by side, 224 x 224, labelled with both classes. No photo crosses splits and
each photo is used once. The CSV (``path,labels,split``) goes to ``--work``; then ``train --task
multilabel`` runs each ``--runs`` entry (``STRATEGY[:OPTION=VALUE...]``, the train flags' names, e.g.
``fine-tune:regions=1``; the task's defaults otherwise) and the table prints test macro mAP, micro /
macro F1 (thresholds chosen per class on val) and val mAP. The JSON records each run's options (all
of them, and those given), its wall and CPU time and the load average around it.

Example:
    PYTHONPATH=src python benchmarks/multilabel.py --data ../shared/datasets/flowers17 --work /tmp/ml \\
        --runs fine-tune,feature-extraction --json benchmarks/results/multilabel.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common import machine, table, write_json

from transferlab.data import make_split, open_dataset
from transferlab.errors import ConfigError
from transferlab.experiments.train import train
from transferlab.options import DataOptions, with_overrides
from transferlab.tasks.multilabel import MultilabelOptions, MultilabelTrainOptions

SIZE = 224


def half(image: Image.Image) -> Image.Image:
    """The centre crop of aspect 1:2 (width:height), resized to SIZE/2 x SIZE."""
    w, h = image.size
    cw = min(w, h // 2)
    ch = 2 * cw
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch)).resize((SIZE // 2, SIZE), Image.Resampling.BILINEAR)


def pair_within(indices: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Pairs of items of different classes, each item used once (an odd one out is dropped)."""
    order = [int(i) for i in rng.permutation(indices)]
    pairs: list[tuple[int, int]] = []
    while len(order) >= 2:
        a = order.pop(0)
        k = next((j for j, b in enumerate(order) if labels[b] != labels[a]), None)
        if k is None:
            break
        pairs.append((a, order.pop(k)))
    return pairs


def build(data: str, work: Path, *, seed: int) -> tuple[Path, dict[str, int]]:
    source = open_dataset(data)
    split = make_split(source, fractions=(0.5, 0.25, 0.25), seed=seed)
    rng = np.random.default_rng(seed)
    folder = work / f"mosaics-seed{seed}"  # a mosaic on disk is reused only for the same split seed
    folder.mkdir(parents=True, exist_ok=True)
    rows, sizes = ["path,labels,split"], {}
    for name in ("train", "val", "test"):
        pairs = pair_within(getattr(split, name), source.labels, rng)
        sizes[name] = len(pairs)
        for k, (a, b) in enumerate(pairs):
            out = folder / f"{name}_{k:04d}_{a}_{b}.jpg"  # named by its two photos: never a stale mosaic
            if not out.is_file():
                canvas = Image.new("RGB", (SIZE, SIZE))
                canvas.paste(half(source.load(a)), (0, 0))
                canvas.paste(half(source.load(b)), (SIZE // 2, 0))
                canvas.save(out, quality=92)
            labels = ";".join(source.classes[int(source.labels[i])] for i in (a, b))
            rows.append(f"{folder.name}/{out.name},{labels},{name}")
    csv = work / f"mosaics-seed{seed}.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv, sizes


def run_options(entry: str) -> tuple[str, dict[str, Any]]:
    """``"fine-tune:regions=1:input-size=320"`` -> ``("fine-tune", {"regions": 1, "input_size": 320})``,
    each value typed by the option it sets (task, data or train option of ``--task multilabel``)."""
    strategy, _, pairs = entry.partition(":")
    given: dict[str, Any] = {}
    for pair in (p for p in pairs.split(":") if p.strip()):
        name = pair.partition("=")[0].strip().lstrip("-").replace("-", "_")
        owner = next((o for o in (MultilabelOptions(), DataOptions(), MultilabelTrainOptions())
                      if name in {f.name for f in dataclasses.fields(o)}), None)
        if owner is None:
            raise ConfigError(f"--runs entry {entry!r}: unknown option {name!r}")
        given[name] = getattr(with_overrides(owner, pair, context=f"--runs entry {entry!r}"), name)
    return strategy.strip(), given


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/datasets/flowers17")
    p.add_argument("--work", type=Path, required=True, help="folder for the mosaics, the CSV and the runs")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--runs", default="fine-tune,feature-extraction",
                   help="comma-separated STRATEGY[:OPTION=VALUE...] (default: the task's default, then an alternative)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    entries = [run_options(e) for e in args.runs.split(",") if e.strip()]  # bad entries fail before any work
    csv, sizes = build(args.data, args.work, seed=args.split_seed)
    print(f"{csv}: mosaics per split {sizes}", file=sys.stderr)
    rows, runs = [], {}
    for (strategy, given), entry in zip(entries, [e for e in args.runs.split(",") if e.strip()]):
        load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
        run = train(str(csv), task="multilabel", out=args.work / f"run-{entry.replace(':', '_')}",
                    backbone=args.backbone, strategy=strategy, workers=args.workers, split_seed=args.split_seed,
                    quiet=True, overwrite=True, **given)
        wall, cpu = round(time.perf_counter() - t0, 1), round(time.process_time() - c0, 1)
        m, val = run.metrics["test"], run.metrics["val"]
        runs[entry] = {"strategy": strategy, "given": given, "config": run.config,
                       "map": m["map"], "micro_f1": m["micro_f1"], "macro_f1": m["macro_f1"],
                       "exact_match": m["exact_match"], "val_map": val["map"], "val_micro_f1": val["micro_f1"],
                       "val_macro_f1": val["macro_f1"], "best_epoch": run.metrics["best_epoch"],
                       "wall_s": wall, "cpu_s": cpu, "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        rows.append([entry, m["map"], m["micro_f1"], m["macro_f1"], val["map"], wall, cpu])
    print(table(["run", "test mAP", "micro F1", "macro F1", "val mAP", "wall s", "cpu s"], rows))
    write_json(args.json, {"data": args.data, "backbone": args.backbone, "split_seed": args.split_seed,
                           "mosaics": sizes, "command": " ".join(["python", "benchmarks/multilabel.py", *sys.argv[1:]]),
                           "runs": runs, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
