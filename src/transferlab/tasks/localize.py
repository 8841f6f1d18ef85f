"""Localization: one box per image (Oxford-IIIT Pet head boxes, VOC XML), optionally with its class.

The pretrained featurizer with the softmax head swapped for a box regressor (``box``) or a
classifier and a box regressor (``class+box``); loss smooth L1 or GIoU; metrics mean IoU and
accuracy at IoU 0.5 / 0.75 (+ accuracy for ``class+box``). ``train --task localize`` and its
alias ``transferlab localize train``. The building blocks (VOC reading, box-aware transforms,
box metrics, the box head, the drawing) live in :mod:`transferlab.localization`.

Example:
    >>> TASK.name, TASK.score_name
    ('localization', 'mean_iou')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import ImageSource, atomic_write_bytes, atomic_write_text, load_image
from transferlab.localization.data import BoxDataset
from transferlab.localization.figures import Tile, png_bytes, prediction_grid
from transferlab.localization.metrics import box_metrics, paired_iou, valid_boxes
from transferlab.localization.model import BOX_ACTIVATIONS, LOC_HEADS, TRUNKS, LocalizationModel, LocHeadConfig
from transferlab.localization.task import BOX_LOSSES, LocalizationTask
from transferlab.localization.transforms import BOX_AUGMENTS, box_transform
from transferlab.localization.voc import BoxSet, clip_box, find_voc, image_size, load_source_boxes, read_voc
from transferlab.options import TrainOptions, opt
from transferlab.strategies.model import POOLS
from transferlab.tasks.base import Prepared, read_opened
from transferlab.tasks.classify import parse_hidden
from transferlab.tasks.paired import (PairedTask, check_paired_options, crop_scale_opt, strategy_opt, sub_source,
                                      views_opt)

__all__ = ["LOC_SPLIT", "TASK", "LocTrainOptions", "Localization", "LocalizeOptions", "boxed_source", "pixel_boxes",
           "write_predictions"]

#: Fixed augmented views per training image by default (measured best on oxford-pets-3, README)
DEFAULT_VIEWS = 7
#: Default train/val/test fractions of the boxed images (stratified by class).
LOC_SPLIT = "0.6,0.2,0.2"


@dataclass(frozen=True)
class LocalizeOptions:
    """The localization head, loss and box-aware augmentation (``transferlab localize train``)."""

    head: str = opt("box", "box: 4 normalised coordinates; class+box: classifier and box regressor, joint loss",
                    choices=LOC_HEADS)
    box_activation: str = opt("sigmoid", "output activation of the box regressor", choices=BOX_ACTIVATIONS)
    box_loss: str = opt("smooth-l1", "box loss (torch smooth L1, or torchvision GIoU)", choices=BOX_LOSSES)
    box_weight: float = opt(1.0, "class+box: loss = cross-entropy + WEIGHT x box loss", lo=0.0, lo_open=True)
    trunk: str = opt("linear", "layers before the outputs: linear (none) or dense (--hidden, ReLU + dropout)",
                     choices=TRUNKS)
    pool: str = opt("flatten", "feature map -> vector: flatten keeps where things are (avg does not)",
                    choices=POOLS)
    box_augment: str = opt("flip-scale", "box-aware training augmentation (none: no augmentation)",
                           choices=BOX_AUGMENTS, flag="--augment")
    crop_scale: float = crop_scale_opt(0.5, "flip-scale (the box is kept whole)")
    views: int | None = views_opt(DEFAULT_VIEWS)

    def __post_init__(self) -> None:
        check_paired_options(self, augment=self.box_augment, augments=BOX_AUGMENTS, default_views=DEFAULT_VIEWS)


@dataclass(frozen=True)
class LocTrainOptions(TrainOptions):
    """``TrainOptions`` with defaults that suit a flattened box head (its fan-in is large: small rates).

    The defaults (with ``LocalizeOptions``' ``--augment flip-scale --views 7``) are the fine-tune
    command measured best on oxford-pets-3 (README, *Localization*).
    """

    strategy: str = strategy_opt()
    epochs: int = opt(8, "epochs of the head phase (feature-extraction, first phase of others)")
    finetune_epochs: int = opt(10, "epochs of a phase that trains featurizer stages")
    unfreeze: int = opt(4, "fine-tune / chain-thaw / gradual-unfreeze: stages from the top that train")
    lr: float = opt(1e-4, "learning rate of the new head")
    finetune_lr: float = opt(1e-4, "learning rate of the top group when featurizer stages train")
    lr_decay: float = opt(1.0, "discriminative rates: divide the rate by this per stage going down")


def boxed_source(source: ImageSource, boxes: BoxSet) -> tuple[ImageSource, BoxSet]:
    """The items with a box as their own source (same identities and classes), boxes re-indexed; the
    layout's given split is dropped (the pets' boxes are all in trainval: ``--split`` splits them)."""
    sub = sub_source(source, boxes.indices, keep_given_split=False)
    return sub, replace(boxes, indices=np.arange(len(boxes), dtype=np.int64))


def pixel_boxes(normalised: torch.Tensor, sizes: np.ndarray) -> np.ndarray:
    """Normalised (N, 4) boxes -> pixels of images of ``sizes`` (N, 2) = (width, height)."""
    scale = np.concatenate([sizes, sizes], axis=1).astype(np.float64)
    return valid_boxes(normalised.float()).clamp(0, 1).numpy().astype(np.float64) * scale


def write_predictions(run_dir: Path, source: ImageSource, boxes: BoxSet, indices: np.ndarray,
                      outputs: torch.Tensor, targets: torch.Tensor, classes: list[str], *, n_draw: int = 24) -> None:
    """``predictions_test.csv`` (pixel boxes, IoU, classes) and ``predictions_test.png`` (a grid)."""
    sizes = boxes.sizes[indices]
    pred_px, true_px = pixel_boxes(outputs[:, :4], sizes), pixel_boxes(targets[:, :4], sizes)
    iou = paired_iou(outputs[:, :4], targets[:, :4]).tolist()
    has_cls = outputs.shape[1] > 4
    pred_cls = outputs[:, 4:].argmax(1).tolist() if has_cls else [None] * len(indices)
    header = ("identity,true_xmin,true_ymin,true_xmax,true_ymax,pred_xmin,pred_ymin,pred_xmax,pred_ymax,iou,"
              "true_class,pred_class")
    rows = [header]
    for k, i in enumerate(indices):
        t, p = true_px[k], pred_px[k]
        pc = "" if pred_cls[k] is None else classes[pred_cls[k]]
        rows.append(",".join([json.dumps(source.identity(int(i))), *(f"{v:.1f}" for v in t), *(f"{v:.1f}" for v in p),
                              f"{iou[k]:.4f}", classes[int(targets[k, 4])], pc]))
    atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")
    tiles = []
    for k in range(min(n_draw, len(indices))):
        cap = f"IoU {iou[k]:.2f}" + ("" if pred_cls[k] is None else f" {classes[pred_cls[k]][:14]}")
        tiles.append(Tile(load_image(source.identity(int(indices[k]))), pred=pred_px[k], true=true_px[k], caption=cap))
    if tiles:
        atomic_write_bytes(run_dir / "predictions_test.png", png_bytes(prediction_grid(tiles, cols=6, size=160)))


class Localization(PairedTask):
    """The localization task for the run pipeline, the loader and the deploy tools."""

    name = "localization"
    verb = "localize"
    augments = BOX_AUGMENTS
    score_name = "mean_iou"
    options_class = LocalizeOptions
    train_options_class = LocTrainOptions
    default_split = LOC_SPLIT

    # ---- training
    def augment_of(self, options: LocalizeOptions) -> str:
        return options.box_augment

    def paired_transform(self, preprocessing: Any, norm: Any, *, augment: str, options: LocalizeOptions) -> Any:
        return box_transform(preprocessing, norm=norm, augment=augment, scale=(options.crop_scale, 1.0))

    def dataset(self, prepared: Prepared, idx: np.ndarray, transform: Any, *, preprocessing: Any) -> BoxDataset:
        return BoxDataset(prepared.source, prepared.targets, idx, transform, draft_size=preprocessing.input_size)

    def read(self, data: str, *, options: Any, quiet: bool) -> Prepared:
        """Open DATA (any layout ``open_dataset`` knows) and prepare it for this task."""
        return read_opened(self, data, options=options, quiet=quiet)

    def prepare(self, source: ImageSource, *, options: LocalizeOptions) -> Prepared:
        all_boxes = load_source_boxes(source)
        sub, boxes = boxed_source(source, all_boxes)
        return Prepared(source=sub, targets=boxes, summary={"boxes": all_boxes.summary()})

    def build_model(self, backbone: Any, *, train_options: Any, options: LocalizeOptions,
                    num_classes: int) -> LocalizationModel:
        t, lo = train_options, options
        head = LocHeadConfig(kind=lo.head, activation=lo.box_activation, trunk=lo.trunk,
                             hidden=parse_hidden(t.hidden), dropout=t.dropout, pool=lo.pool,
                             num_classes=num_classes if lo.head == "class+box" else 0)
        return LocalizationModel(backbone=backbone, head=head, cut=t.cut)

    def objective(self, *, train_options: Any, class_weights: Any, options: LocalizeOptions,
                  device: torch.device, num_classes: int) -> LocalizationTask:
        return LocalizationTask(box_loss=options.box_loss, box_weight=options.box_weight,
                                num_classes=num_classes if options.head == "class+box" else 0)

    def split_metrics(self, outputs: torch.Tensor, labels: torch.Tensor, *, classes: list[str],
                      objective: LocalizationTask | None = None, model: Any = None) -> dict[str, Any]:
        ncls = outputs.shape[1] - 4
        task = objective or LocalizationTask(num_classes=ncls)
        loss, _ = task.evaluate(outputs, labels)
        return box_metrics(outputs[:, :4], labels[:, :4], logits=outputs[:, 4:] if ncls else None,
                           labels=labels[:, 4], loss=loss)

    def run_metrics(self, *, prepared: Prepared, options: LocalizeOptions) -> dict[str, Any]:
        return {"head": options.head, "box_loss": options.box_loss, "box_activation": options.box_activation,
                "augment": options.box_augment, **prepared.summary}

    def write_outputs(self, run_dir: Path, *, prepared: Prepared, indices: np.ndarray, outputs: torch.Tensor,
                      labels: torch.Tensor, classes: list[str], save_predictions: bool = True,
                      model: Any = None) -> None:
        write_predictions(run_dir, prepared.source, prepared.targets, indices, outputs, labels, classes)

    def headline(self, metrics: dict[str, Any]) -> float:
        return float(metrics["test"]["mean_iou"])

    def summary_line(self, metrics: dict[str, Any]) -> str:
        t = metrics["test"]
        return (f"test mean IoU {t['mean_iou']:.4f}, acc@0.5 {t['acc_at_0.5']:.4f}, acc@0.75 {t['acc_at_0.75']:.4f}"
                + (f", accuracy {t['accuracy']:.4f}" if "accuracy" in t else ""))

    # ---- a saved model
    def model_meta(self, model: LocalizationModel) -> dict[str, Any]:
        return {"backbone": model.backbone_name, "cut": model.cut, "head": model.head_config.to_dict(),
                "num_classes": model.num_classes,
                "geometry": "whole image resized to input_size x input_size; boxes normalised to [0, 1]"}

    def model_from_meta(self, meta: dict[str, Any], backbone: Any) -> LocalizationModel:
        return LocalizationModel(backbone=backbone, head=LocHeadConfig.from_dict(meta["head"]), cut=int(meta["cut"]))

    def image_transform(self, preprocessing: Any, norm: Any) -> Any:
        tf = box_transform(preprocessing, norm=norm, augment="none")
        whole = torch.tensor([0.0, 0.0, 1.0, 1.0])
        return lambda image: tf(image, whole)[0]

    def draft_size(self, preprocessing: Any) -> int:
        return preprocessing.input_size

    def format_predictions(self, outputs: np.ndarray, images: list[Any], *, classes: list[str],
                           top: int = 5, meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"box": [xmin, ymin, xmax, ymax] (pixels of the image), "class", "probability"}`` per image."""
        out = torch.as_tensor(outputs, dtype=torch.float32)
        sizes = np.array([[im.width, im.height] for im in images])
        boxes = pixel_boxes(out[:, :4], sizes)
        results = []
        for k in range(len(images)):
            r: dict[str, Any] = {"box": [round(float(v), 1) for v in boxes[k]]}
            if out.shape[1] > 4:
                probs = out[k, 4:].softmax(0)
                r["class"] = classes[int(probs.argmax())]
                r["probability"] = round(float(probs.max()), 6)
            results.append(r)
        return results

    def annotate(self, results: list[dict[str, Any]], images: list[Any], paths: list[str], *,
                 draw: str | None = None) -> None:
        """Add the true box and IoU where a VOC file is found next to an image; ``draw`` a PNG grid
        (predicted red, true green)."""
        tiles = []
        for r, img, path in zip(results, images, paths):
            box, true = np.array(r["box"]), None
            voc = find_voc(path)
            if voc is not None:
                ann = read_voc(voc)
                w, h = image_size(str(path))
                true = np.array(clip_box(ann.largest(), width=w, height=h, where=str(voc)))
                r["true_box"] = [round(float(v), 1) for v in true]
                r["iou"] = round(float(paired_iou(torch.as_tensor(box[None]), torch.as_tensor(true[None]))[0]), 6)
            cap = f"IoU {r['iou']:.2f}" if "iou" in r else Path(path).name[:24]
            tiles.append(Tile(img, pred=box, true=true, caption=cap))
        if draw is not None and tiles:
            atomic_write_bytes(draw, png_bytes(prediction_grid(tiles, cols=min(6, len(tiles)), size=200)))

    def onnx_output_spec(self, meta: dict[str, Any]) -> str:
        n = int(meta["num_classes"])
        return (f"float32 [batch, {n}]: the box (xmin, ymin, xmax, ymax) normalised to [0, 1] of the whole image"
                + (f", then {n - 4} class logits in the order of 'classes'" if n > 4 else ""))

    def parity_problem(self, onnx_out: np.ndarray, torch_out: np.ndarray) -> str | None:
        if onnx_out.shape[1] > 4 and not np.array_equal(onnx_out[:, 4:].argmax(1), torch_out[:, 4:].argmax(1)):
            return "ONNX Runtime and PyTorch pick different classes on the check images"
        return None


TASK = Localization()
