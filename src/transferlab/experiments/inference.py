"""Prediction and evaluation from a run directory's saved files (no pickle)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import ImageDataset, load_image, load_split, open_dataset
from transferlab.engine import Engine, EngineOptions, SplitInputs, classification_metrics, init_distributed
from transferlab.errors import ConfigError, DataError
from transferlab.experiments.artifacts import load_model


def predict_images(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                   top: int = 5) -> list[dict[str, Any]]:
    """Top-k target classes for each image with a trained run.

    Example:
        >>> predict_images(["rose.jpg"], model_dir="runs/ft", top=1)  # doctest: +SKIP
        [{'image': 'rose.jpg', 'top': [{'label': '08_tulip', 'probability': 0.93, 'index': 7}]}]
    """
    lm = load_model(model_dir)
    tf = lm.transform()
    out = []
    for path in images:
        x = tf(load_image(path, draft_size=lm.preprocessing.resize_size)).unsqueeze(0)
        with torch.inference_mode():
            probs = lm.model(x).softmax(1)[0]
        values, idx = probs.topk(min(top, len(lm.classes)))
        out.append({"image": str(path), "top": [
            {"index": int(i), "label": lm.classes[int(i)], "probability": round(float(v), 6)}
            for v, i in zip(values, idx)]})
    return out


def evaluate_run(model_dir: str | os.PathLike[str], data: str, *, subset: str = "all", device: str = "auto",
                 batch_size: int = 64, quiet: bool = True) -> dict[str, Any]:
    """Metrics of a trained run on DATA: every image (``subset='all'``) or the run's own test list."""
    lm = load_model(model_dir)
    source = open_dataset(data, quiet=quiet)
    if list(source.classes) != lm.classes:
        extra = sorted(set(source.classes) - set(lm.classes))[:3]
        missing = sorted(set(lm.classes) - set(source.classes))[:3]
        raise DataError(
            f"classes of {data} differ from the model's ({len(source.classes)} vs {len(lm.classes)}; "
            f"not in model: {extra}, missing from data: {missing})"
        )
    if subset == "all":
        idx = np.arange(len(source))
    elif subset in ("train", "val", "test"):
        idx = getattr(load_split(Path(model_dir), source), subset)
    else:
        raise ConfigError(f"--subset must be all, train, val or test, got {subset!r}")
    tf = lm.transform()
    split = SplitInputs(name=subset, labels=torch.as_tensor(source.labels[idx], dtype=torch.long),
                        eval_dataset=ImageDataset(source, idx, tf, draft_size=lm.preprocessing.resize_size))
    ctx = init_distributed(device)
    engine = Engine(lm.model, ctx=ctx, options=EngineOptions(batch_size=batch_size, quiet=quiet))
    logits = engine.predict(split, boundary=0, use_cache=False)
    loss = float(torch.nn.functional.cross_entropy(logits, split.labels))
    return {"subset": subset, "data": str(data),
            **classification_metrics(logits, split.labels.numpy(), classes=lm.classes, loss=loss)}
