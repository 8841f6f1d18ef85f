"""Prediction and evaluation from a run directory's saved files (no pickle), for every task."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import time

import numpy as np
import torch

from transferlab.calibration import expected_calibration_error
from transferlab.data import ImageDataset, ImageSource, load_image, load_split
from transferlab.engine import Engine, EngineOptions, SplitInputs, classification_metrics, init_distributed
from transferlab.errors import ConfigError, DataError
from transferlab.experiments.artifacts import LoadedModel, load_model
from transferlab.options import DataOptions, TrainOptions
from transferlab.tta import TTA_VIEWS, average_views, check_tta, tta_logits, tta_transform


def predict_images(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                   top: int = 5, draw: str | os.PathLike[str] | None = None,
                   task: str | None = None, tta: str = "none") -> list[dict[str, Any]]:
    """The trained run's prediction for each image, in its task's format.

    Classification: ``{"image", "top": [{index, label, probability}, ...]}`` (calibrated if the run
    is; ``tta``: see :mod:`transferlab.tta`); localization: ``{"image", "box" (pixels), "width",
    "height"[, "class", "probability"][, "true_box", "iou"]}`` (``draw`` writes a PNG of the boxes).
    ``task``: the task the caller expects (one-line error otherwise).

    Example:
        >>> predict_images(["rose.jpg"], model_dir="runs/ft", top=1)  # doctest: +SKIP
        [{'image': 'rose.jpg', 'top': [{'label': '08_tulip', 'probability': 0.93, 'index': 7}]}]
    """
    lm = load_model(model_dir, task=task)
    spec = lm.task
    if spec.name == "classification":
        if draw is not None:
            raise ConfigError(f"--draw draws boxes; {model_dir} is a classification model")
        return _top_classes(lm, images, top=top, tta=tta)
    if check_tta(tta) != "none":
        raise ConfigError(f"--tta applies to classification models; {model_dir} is a {spec.name} model")
    tf = lm.transform()
    paths = [str(p) for p in images]
    decoded = [load_image(p, draft_size=lm.draft_size) for p in paths]
    if not decoded:
        return []
    with torch.inference_mode():
        outputs = torch.cat([lm.model(tf(im).unsqueeze(0)) for im in decoded]).float().numpy()
    decoded = [load_image(p) for p in paths]  # pixel geometry needs the full-size image
    preds = spec.format_predictions(outputs, decoded, classes=lm.classes, top=top, meta=lm.meta)
    results = [{"image": p, **r, "width": im.width, "height": im.height} for p, r, im in zip(paths, preds, decoded)]
    if hasattr(spec, "annotate"):
        spec.annotate(results, decoded, paths, draw=None if draw is None else str(draw))
    elif draw is not None:
        raise ConfigError(f"--draw draws boxes; {model_dir} is a {spec.name} model")
    return results


def _top_classes(lm: LoadedModel, images: Sequence[str | os.PathLike[str]], *, top: int,
                 tta: str) -> list[dict[str, Any]]:
    """Top-k classes per image with the run's scoring model (temperature, TTA views averaged)."""
    tf = tta_transform(lm.preprocessing, norm=lm.norm, mode=tta)
    model = lm.scoring_model()
    out = []
    for path in images:
        x = tf(load_image(path, draft_size=lm.preprocessing.resize_size))
        with torch.inference_mode():
            probs = average_views(model(x), len(x)).exp()[0]
        values, idx = probs.topk(min(top, len(lm.classes)))
        out.append({"image": str(path), "top": [
            {"index": int(i), "label": lm.classes[int(i)], "probability": round(float(v), 6)}
            for v, i in zip(values, idx)]})
    return out


def evaluate_run(model_dir: str | os.PathLike[str], data: str, *, subset: str = "all", device: str = "auto",
                 batch_size: int = 64, quiet: bool = True, task: str | None = None,
                 tta: str = "none") -> dict[str, Any]:
    """Metrics of a trained run on DATA (its task's metrics): every item, or one of the run's split lists.

    Classification logits are the calibrated ones of a ``--calibrate`` run; ``ece`` is always
    reported, and ``seconds`` (inference) with ``tta`` (:mod:`transferlab.tta`) its cost.
    """
    lm = load_model(model_dir, task=task)
    spec = lm.task
    if spec.name != "classification" and check_tta(tta) != "none":
        raise ConfigError(f"--tta applies to classification models; {model_dir} is a {spec.name} model")
    options = (spec.eval_options(lm.classes) if hasattr(spec, "eval_options")
               else spec.options_class() if spec.options_class is not None else None)
    prepared = spec.read(data, options=options, quiet=quiet)
    opened = prepared.source
    if list(prepared.classes or opened.classes) != lm.classes:
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
    if spec.name == "classification":
        labels = torch.as_tensor(source.labels[idx], dtype=torch.long)
        logits, seconds = split_logits(lm, source, idx, tta=tta, device=device, batch_size=batch_size, quiet=quiet)
        loss = float(torch.nn.functional.cross_entropy(logits, labels))
        return {"subset": subset, "data": str(data), "task": spec.name, "tta": tta, "temperature": lm.temperature,
                **classification_metrics(logits, labels.numpy(), classes=lm.classes, loss=loss),
                "ece": expected_calibration_error(logits.softmax(1), labels),
                "seconds": round(seconds, 3), "ms_per_image": round(1000 * seconds / max(len(idx), 1), 2)}
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


def split_logits(lm: LoadedModel, source: ImageSource, idx: np.ndarray, *, tta: str = "none", device: str = "auto",
                 batch_size: int = 64, quiet: bool = True) -> tuple[torch.Tensor, float]:
    """(logits of a run's scoring model on ``source[idx]``, seconds); with ``tta`` averaged log-probabilities."""
    check_tta(tta)
    ctx = init_distributed(device)
    t0 = time.perf_counter()
    if tta == "none":
        split = SplitInputs(name="eval", labels=torch.as_tensor(source.labels[idx], dtype=torch.long),
                            eval_dataset=ImageDataset(source, idx, lm.transform(), draft_size=lm.preprocessing.resize_size))
        engine = Engine(lm.model, ctx=ctx, options=EngineOptions(batch_size=batch_size, quiet=quiet))
        logits = engine.predict(split, boundary=0, use_cache=False) / (lm.temperature or 1.0)
    else:
        views = ImageDataset(source, idx, tta_transform(lm.preprocessing, norm=lm.norm, mode=tta),
                             draft_size=lm.preprocessing.resize_size)
        logits, _ = tta_logits(lm.scoring_model(), views, mode=tta, batch_size=batch_size, device=ctx.device)
    return logits, time.perf_counter() - t0


def measure_tta(model_dir: str | os.PathLike[str], *, source: ImageSource, indices: np.ndarray, mode: str,
                device: str = "auto") -> dict[str, Any]:
    """Accuracy and inference seconds on ``source[indices]`` without and with TTA ``mode`` (compare --tta).

    Example:
        >>> measure_tta("cmp/runs/fine-tune/seed0", source=src, indices=test, mode="flip")  # doctest: +SKIP
        {'mode': 'flip', 'accuracy': 0.975, 'accuracy_plain': 0.971, 'seconds': 20.1, 'seconds_plain': 10.2, ...}
    """
    lm = load_model(model_dir)
    y = source.labels[indices]
    plain, s_plain = split_logits(lm, source, indices, device=device)
    aug, s_aug = split_logits(lm, source, indices, tta=check_tta(mode), device=device)
    acc = float((aug.argmax(1).numpy() == y).mean())
    acc_plain = float((plain.argmax(1).numpy() == y).mean())
    return {"mode": mode, "views": TTA_VIEWS[mode], "n": int(len(indices)), "accuracy": acc,
            "accuracy_plain": acc_plain, "accuracy_change": round(acc - acc_plain, 6), "seconds": round(s_aug, 3),
            "seconds_plain": round(s_plain, 3), "cost_ratio": round(s_aug / max(s_plain, 1e-9), 2)}


def predict_boxes(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                  draw: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """:func:`predict_images` of a localization run (``transferlab localize predict``)."""
    return predict_images(images, model_dir=model_dir, draw=draw, task="localization")


def evaluate_localizer(model_dir: str | os.PathLike[str], data: str, *, subset: str = "all", device: str = "auto",
                       batch_size: int = 64, quiet: bool = True) -> dict[str, Any]:
    """:func:`evaluate_run` of a localization run (``transferlab localize evaluate``)."""
    return evaluate_run(model_dir, data, subset=subset, device=device, batch_size=batch_size, quiet=quiet,
                        task="localization")
