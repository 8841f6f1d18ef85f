"""Prediction and evaluation from a run directory's saved files (no pickle), for every task."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import load_image, load_split
from transferlab.engine import Engine, EngineOptions, SplitInputs, init_distributed
from transferlab.errors import ConfigError, DataError
from transferlab.experiments.artifacts import load_model
from transferlab.options import DataOptions, TrainOptions


def predict_images(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                   top: int = 5, draw: str | os.PathLike[str] | None = None,
                   task: str | None = None) -> list[dict[str, Any]]:
    """The trained run's prediction for each image, in its task's format.

    Classification: ``{"image", "top": [{index, label, probability}, ...]}``; localization:
    ``{"image", "box" (pixels), "width", "height"[, "class", "probability"][, "true_box", "iou"]}``
    (``draw`` writes a PNG of the boxes). ``task``: the task the caller expects (one-line error otherwise).

    Example:
        >>> predict_images(["rose.jpg"], model_dir="runs/ft", top=1)  # doctest: +SKIP
        [{'image': 'rose.jpg', 'top': [{'label': '08_tulip', 'probability': 0.93, 'index': 7}]}]
    """
    lm = load_model(model_dir, task=task)
    spec, tf = lm.task, lm.transform()
    paths = [str(p) for p in images]
    decoded = [load_image(p, draft_size=lm.draft_size) for p in paths]
    with torch.inference_mode():
        outputs = torch.cat([lm.model(tf(im).unsqueeze(0)) for im in decoded]).float().numpy() if decoded else None
    if outputs is None:
        return []
    if spec.name != "classification":  # pixel geometry needs the full-size image
        decoded = [load_image(p) for p in paths]
    preds = spec.format_predictions(outputs, decoded, classes=lm.classes, top=top, meta=lm.meta)
    results = [{"image": p, **r, **({} if spec.name == "classification" else {"width": im.width, "height": im.height})}
               for p, r, im in zip(paths, preds, decoded)]
    if hasattr(spec, "annotate"):
        spec.annotate(results, decoded, paths, draw=None if draw is None else str(draw))
    elif draw is not None:
        raise ConfigError(f"--draw draws boxes; {model_dir} is a {spec.name} model")
    return results


def evaluate_run(model_dir: str | os.PathLike[str], data: str, *, subset: str = "all", device: str = "auto",
                 batch_size: int = 64, quiet: bool = True, task: str | None = None) -> dict[str, Any]:
    """Metrics of a trained run on DATA (its task's metrics): every item, or one of the run's split lists."""
    lm = load_model(model_dir, task=task)
    spec = lm.task
    options = (spec.eval_options(lm.classes) if hasattr(spec, "eval_options")
               else spec.options_class() if spec.options_class is not None else None)
    prepared = spec.read(data, options=options, quiet=quiet)
    opened = prepared.source
    if list(opened.classes) != lm.classes:
        extra = sorted(set(opened.classes) - set(lm.classes))[:3]
        missing = sorted(set(lm.classes) - set(opened.classes))[:3]
        raise DataError(
            f"classes of {data} differ from the model's ({len(opened.classes)} vs {len(lm.classes)}; "
            f"not in model: {extra}, missing from data: {missing})"
        )
    source = prepared.source
    if subset == "all":
        idx = np.arange(len(source))
    elif subset in ("train", "val", "test"):
        idx = getattr(load_split(Path(model_dir), source), subset)
    else:
        raise ConfigError(f"--subset must be all, train, val or test, got {subset!r}")
    eval_tf, _ = spec.transforms(lm.preprocessing, lm.norm, data_options=DataOptions(), options=options)
    got = spec.inputs(prepared, idx, training=False, eval_tf=eval_tf, train_tf=None, preprocessing=lm.preprocessing,
                      data_options=DataOptions(), train_options=TrainOptions(), options=options)
    split = SplitInputs(name=subset, labels=got.labels, eval_dataset=got.eval_dataset)
    engine = Engine(lm.model, ctx=init_distributed(device), options=EngineOptions(batch_size=batch_size, quiet=quiet),
                    task=spec.objective(train_options=TrainOptions(), class_weights=None, options=options,
                                        device=torch.device("cpu"), num_classes=len(lm.classes))
                    if options is not None else None)
    outputs = engine.predict(split, boundary=0, use_cache=False)
    return {"subset": subset, "data": str(data), "task": spec.name,
            **spec.split_metrics(outputs, split.labels, classes=lm.classes, model=lm.model)}


def predict_boxes(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                  draw: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """:func:`predict_images` of a localization run (``transferlab localize predict``)."""
    return predict_images(images, model_dir=model_dir, draw=draw, task="localization")


def evaluate_localizer(model_dir: str | os.PathLike[str], data: str, *, subset: str = "all", device: str = "auto",
                       batch_size: int = 64, quiet: bool = True) -> dict[str, Any]:
    """:func:`evaluate_run` of a localization run (``transferlab localize evaluate``)."""
    return evaluate_run(model_dir, data, subset=subset, device=device, batch_size=batch_size, quiet=quiet,
                        task="localization")
