"""Multi-label on real photos: flowers17 mosaics of two photos of different classes, split by photo.

Every flowers17 photo is first assigned to train / val / test (stratified by class, ``--split-seed``),
then paired within its split with a photo of another class: each mosaic is the two photos'
centre crops (1:2) side by side, 224 x 224, labelled with both classes. No photo crosses splits and
each photo is used once. The CSV (``path,labels,split``) goes to ``--work``; then ``train --task
multilabel`` runs each ``--strategies`` entry and the table prints test macro mAP and micro / macro F1
(thresholds chosen per class on val).

Example:
    PYTHONPATH=src python benchmarks/multilabel.py --data ../shared/datasets/flowers17 --work /tmp/ml \\
        --json benchmarks/results/multilabel.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common import machine, table, write_json

from transferlab.data import make_split, open_dataset
from transferlab.experiments.train import train

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
    (work / "mosaics").mkdir(parents=True, exist_ok=True)
    rows, sizes = ["path,labels,split"], {}
    for name in ("train", "val", "test"):
        pairs = pair_within(getattr(split, name), source.labels, rng)
        sizes[name] = len(pairs)
        for k, (a, b) in enumerate(pairs):
            out = work / "mosaics" / f"{name}_{k:04d}.jpg"
            if not out.is_file():
                canvas = Image.new("RGB", (SIZE, SIZE))
                canvas.paste(half(source.load(a)), (0, 0))
                canvas.paste(half(source.load(b)), (SIZE // 2, 0))
                canvas.save(out, quality=92)
            labels = ";".join(source.classes[int(source.labels[i])] for i in (a, b))
            rows.append(f"mosaics/{out.name},{labels},{name}")
    csv = work / "mosaics.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv, sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/datasets/flowers17")
    p.add_argument("--work", type=Path, required=True, help="folder for the mosaics, the CSV and the runs")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--strategies", default="feature-extraction,fine-tune")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    csv, sizes = build(args.data, args.work, seed=args.split_seed)
    print(f"{csv}: mosaics per split {sizes}", file=sys.stderr)
    rows, runs = [], {}
    for strategy in args.strategies.split(","):
        t0 = time.perf_counter()
        run = train(str(csv), task="multilabel", out=args.work / f"run-{strategy}", backbone=args.backbone,
                    strategy=strategy, workers=args.workers, quiet=True)
        wall = round(time.perf_counter() - t0, 1)
        m = run.metrics["test"]
        runs[strategy] = {"map": m["map"], "micro_f1": m["micro_f1"], "macro_f1": m["macro_f1"],
                          "val_map": run.metrics["val"]["map"], "wall_s": wall, "best_epoch": run.metrics["best_epoch"]}
        rows.append([strategy, m["map"], m["micro_f1"], m["macro_f1"], wall])
    print(table(["strategy", "test mAP", "micro F1", "macro F1", "wall s"], rows))
    write_json(args.json, {"data": args.data, "backbone": args.backbone, "mosaics": sizes, "runs": runs,
                           "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
