"""Runs of the strategies that use no network (``hog-svm``): same split, metrics and run directory
files as every other run (``config.json``, ``metrics.json``, split lists, ``predictions_test.csv``),
so ``compare`` and the report show them beside the transfer strategies. There is no model file:
predict, export and serve are for network runs.

Example:
    >>> import transferlab
    >>> transferlab.train("flowers17/", strategy="hog-svm", out="runs/hog").test_accuracy  # doctest: +SKIP
    0.55
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import ImageSource, Split, atomic_write_text, save_split
from transferlab.engine import classification_metrics
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies import Plan, fit_linear_probe
from transferlab.strategies.hog_svm import default_size, hog_features, hog_settings

log = logging.getLogger("transferlab")


def run_hog_svm(data: str, *, source: ImageSource, split: Split, data_options: DataOptions,
                train_options: TrainOptions, run_dir: Path | None, save_predictions: bool = False) -> Any:
    """HOG descriptors + linear SVM (C on val, refit on train+val); returns a ``train.Run``."""
    from transferlab.experiments.train import METRICS, Run, _config, feature_cache, item_keys

    t0 = time.perf_counter()
    d, t = data_options, train_options
    size = t.input_size or default_size(source, split.train)
    settings = hog_settings(size)
    if d.augment != "none" or t.views:
        log.info("hog-svm describes the clean images: --augment/--views apply to networks")
    cache = feature_cache(t)
    feats = {name: hog_features(source, idx, size=size, items=item_keys(source, idx), cache=cache, name=name)
             for name, idx in (("train", split.train), ("val", split.val), ("test", split.test))}
    extract_s = time.perf_counter() - t0
    labels = {name: source.labels[idx] for name, idx in (("train", split.train), ("val", split.val),
                                                          ("test", split.test))}
    classes = list(source.classes)
    probe = fit_linear_probe(feats["train"], labels["train"], feats["val"], labels["val"], num_classes=len(classes),
                             classifier="svm", seed=d.seed)

    def scores(x: np.ndarray, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x) @ w.T + b

    def metrics(x: torch.Tensor, y: np.ndarray) -> dict[str, Any]:
        return classification_metrics(x, y, classes=classes,
                                      loss=float(torch.nn.functional.cross_entropy(x, torch.as_tensor(y))))

    val_logits = scores(feats["val"], probe.selection_weight, probe.selection_bias)
    test_logits = scores(feats["test"], probe.weight, probe.bias)
    m = {"strategy": "hog-svm", "backbone": "none",
         "val": metrics(val_logits, labels["val"]), "test": metrics(test_logits, labels["test"]),
         "timing": {"total_s": round(time.perf_counter() - t0, 3), "extract_s": round(extract_s, 3),
                    "train_s": round(time.perf_counter() - t0 - extract_s, 3)},
         "best_epoch": -1, "skipped_files": [list(s) for s in source.skipped],
         "features": {**settings, "dim": int(feats["train"].shape[1])},
         "probe": {"classifier": "svm", "C": probe.C, "refit_on": "train+val",
                   "val_accuracy_by_C": {str(k): v for k, v in probe.grid.items()}}}
    config = _config(data, d, t, Plan(strategy="hog-svm", phases=(), pretrained=False))
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_split(split, source, run_dir)
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2))
        atomic_write_text(run_dir / METRICS, json.dumps(m, indent=2))
        if save_predictions:
            conf, pred = test_logits.softmax(1).max(1)
            rows = ["identity,true,predicted,confidence"] + [
                f"{json.dumps(source.identity(int(i)))},{int(y)},{int(p)},{float(c):.6f}"
                for i, y, p, c in zip(split.test, labels["test"].tolist(), pred.tolist(), conf.tolist())]
            atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")
    log.info("hog-svm (%d-d HOG at %d px, C=%g): test accuracy %.4f, macro F1 %.4f (%.1fs)", m["features"]["dim"],
             size, probe.C, m["test"]["accuracy"], m["test"]["macro_f1"], m["timing"]["total_s"])
    return Run(run_dir=run_dir, metrics=m, history=[], config=config, classes=classes, model=None)  # type: ignore[arg-type]
