"""Boxes for new images and evaluation of a saved localizer (no pickle: safetensors + JSON)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import atomic_write_bytes, load_image, load_split, open_dataset
from transferlab.engine import Engine, EngineOptions, SplitInputs, init_distributed
from transferlab.errors import ConfigError, DataError
from transferlab.localization.data import BoxDataset
from transferlab.localization.figures import Tile, png_bytes, prediction_grid
from transferlab.localization.metrics import box_metrics, paired_iou
from transferlab.localization.task import LocalizationTask
from transferlab.localization.train import boxed_source, load_localizer, pixel_boxes
from transferlab.localization.voc import clip_box, image_size, load_source_boxes, read_voc

__all__ = ["evaluate_localizer", "find_voc", "predict_boxes"]


def find_voc(image: str | os.PathLike[str]) -> Path | None:
    """The VOC file of an image if there is one: ``../annotations/xmls/STEM.xml`` (pets layout) or ``STEM.xml``."""
    p = Path(image)
    for cand in (p.parent.parent / "annotations" / "xmls" / f"{p.stem}.xml", p.with_suffix(".xml")):
        if cand.is_file():
            return cand
    return None


def predict_boxes(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                  draw: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Predicted box (pixels of each image) for each image; ``draw`` writes a PNG grid of them.

    In the drawing the prediction is red; where a VOC file is found next to the image (see
    :func:`find_voc`) the true box is green and the IoU is reported.

    Example:
        >>> predict_boxes(["images/Bengal_1.jpg"], model_dir="runs/loc-ft")  # doctest: +SKIP
        [{'image': 'images/Bengal_1.jpg', 'box': [101.2, 40.7, 260.3, 190.0], 'width': 500, ...}]
    """
    lz = load_localizer(model_dir)
    tf = lz.transform()
    results, tiles = [], []
    for path in images:
        img = load_image(path)
        x, _ = tf(img, torch.tensor([0.0, 0.0, 1.0, 1.0]))
        with torch.inference_mode():
            out = lz.model(x.unsqueeze(0))
        size = np.array([[img.width, img.height]])
        box = pixel_boxes(out[:, :4], size)[0]
        r: dict[str, Any] = {"image": str(path), "box": [round(float(v), 1) for v in box],
                             "width": img.width, "height": img.height}
        if out.shape[1] > 4:
            probs = out[0, 4:].softmax(0)
            r["class"] = lz.classes[int(probs.argmax())]
            r["probability"] = round(float(probs.max()), 6)
        true = None
        voc = find_voc(path)
        if voc is not None:
            ann = read_voc(voc)
            w, h = image_size(str(path))
            true = np.array(clip_box(ann.largest(), width=w, height=h, where=str(voc)))
            r["true_box"] = [round(float(v), 1) for v in true]
            r["iou"] = round(float(paired_iou(torch.as_tensor(np.stack([box])), torch.as_tensor(np.stack([true])))[0]), 6)
        results.append(r)
        if draw is not None:
            cap = f"IoU {r['iou']:.2f}" if "iou" in r else Path(path).name[:24]
            tiles.append(Tile(img, pred=box, true=true, caption=cap))
    if draw is not None and tiles:
        atomic_write_bytes(draw, png_bytes(prediction_grid(tiles, cols=min(6, len(tiles)), size=200)))
    return results


def evaluate_localizer(model_dir: str | os.PathLike[str], data: str, *, subset: str = "all", device: str = "auto",
                       batch_size: int = 64, quiet: bool = True) -> dict[str, Any]:
    """Box metrics of a trained localizer on DATA: every boxed trainval image, or the run's own split list.

    Example:
        >>> evaluate_localizer("runs/loc-ft", "../shared/datasets/oxford-pets-3", subset="test")["mean_iou"]
        ... # doctest: +SKIP
        0.78
    """
    lz = load_localizer(model_dir)
    full = open_dataset(data, quiet=quiet)
    if list(full.classes) != lz.classes:
        raise DataError(f"classes of {data} differ from the model's ({len(full.classes)} vs {len(lz.classes)})")
    source, boxes = boxed_source(full, load_source_boxes(full))
    if subset == "all":
        idx = np.arange(len(source), dtype=np.int64)
    elif subset in ("train", "val", "test"):
        idx = getattr(load_split(Path(model_dir), source), subset)
    else:
        raise ConfigError(f"--subset must be all, train, val or test, got {subset!r}")
    ds = BoxDataset(source, boxes, idx, lz.transform(), draft_size=lz.preprocessing.input_size)
    split = SplitInputs(name=subset, labels=ds.targets, eval_dataset=ds)
    engine = Engine(lz.model, ctx=init_distributed(device), options=EngineOptions(batch_size=batch_size, quiet=quiet),
                    task=LocalizationTask(num_classes=lz.model.head_config.num_classes))
    out = engine.predict(split, boundary=0, use_cache=False)
    ncls = lz.model.head_config.num_classes
    return {"subset": subset, "data": str(data),
            **box_metrics(out[:, :4], split.labels[:, :4], logits=out[:, 4:] if ncls else None,
                          labels=split.labels[:, 4])}
