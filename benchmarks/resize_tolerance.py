"""How far the default eval transform's features are from the former Pillow-resize transform's (pretrained weights).

The eval transform resizes the uint8 tensor with torch's antialiased kernel (``EvalTransform``); until
this round it resized the PIL image. Per backbone, ``--images`` flowers17 images spread over the
classes go through both transforms (JPEG draft as in training) and the same frozen prefix (ONNX
Runtime, the default path); reported: per-image relative L2 distance of the pooled features (median,
max), the smallest cosine similarity, the largest absolute difference, and a 5-fold logistic
regression on each side's features (same folds): accuracy and how often the two agree.

Example:
    PYTHONPATH=src python benchmarks/resize_tolerance.py --data ../shared/datasets/flowers17 --json benchmarks/results/resize_tolerance.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2

from common import write_json
from extract import evenly, load_average

from transferlab.data import NormStats, build_transform, open_dataset
from transferlab.data.geometry import eval_geometry
from transferlab.engine import runtimes
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone


def pooled(model: TransferModel, source: Any, indices: np.ndarray, tf: Any) -> np.ndarray:
    """Pooled last-stage features of ``indices`` through ``tf`` and the ONNX Runtime prefix."""
    pre, boundary = model.preprocessing, len(model.stage_names)
    run = runtimes.onnx_prefix(model, boundary, digest=runtimes.prefix_digest(model, boundary))
    rows = []
    for s in range(0, len(indices), 32):
        x = torch.stack([tf(source.load(int(i), draft_size=pre.resize_size)) for i in indices[s : s + 32]])
        rows.append(run(x).mean(dim=(2, 3)))
    return torch.cat(rows).numpy().astype(np.float64)


def compare(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    pa, pb = (cross_val_predict(clf, f, labels, cv=folds) for f in (a, b))
    return {"rel_l2_median": round(float(np.median(rel)), 6), "rel_l2_max": round(float(rel.max()), 6),
            "cosine_min": round(float(cos.min()), 7), "max_abs_diff": round(float(np.abs(a - b).max()), 6),
            "cv_accuracy_pillow_resize": round(float((pa == labels).mean()), 4),
            "cv_accuracy_tensor_resize": round(float((pb == labels).mean()), 4),
            "cv_prediction_agreement": round(float((pa == pb).mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/datasets/flowers17"))
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--backbones", default="efficientnet_lite0,mobilenet_v2", help="need offline pretrained weights")
    p.add_argument("--images", type=int, default=340)
    a = p.parse_args(argv)
    source = open_dataset(str(a.data), quiet=True)
    indices = evenly(len(source), a.images)
    labels = np.asarray(source.labels)[indices]
    results: dict[str, Any] = {"data": str(a.data), "images": int(len(indices)), "load_avg_1m_before": load_average(),
                               "backbones": {}}
    for name in a.backbones.split(","):
        model = TransferModel(backbone=create_backbone(name), num_classes=len(source.classes), head=HeadConfig()).eval()
        pre = model.preprocessing
        norm = NormStats("pretrained", pre.mean, pre.std)
        pillow = v2.Compose([*eval_geometry(pre).transforms, v2.Normalize(list(pre.mean), list(pre.std))])
        entry = {"interpolation": pre.interpolation,
                 **compare(pooled(model, source, indices, pillow), pooled(model, source, indices,
                                                                          build_transform(pre, norm=norm)), labels)}
        results["backbones"][name] = entry
        write_json(a.json, results)
        print(name, entry, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
