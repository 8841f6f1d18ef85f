"""Segmentation: a class per pixel, from the pretrained encoder's stages and a light FPN decoder.

Data: the Oxford-IIIT Pet layout (``annotations/trimaps/NAME.png``: 1 pet, 2 background, 3 border;
official ``trainval``/``test`` lists, as the localization task reads them), or a generic layout
``DATA/images/NAME.jpg`` + ``DATA/masks/NAME.png`` whose pixel values are class indices (names in
``DATA/classes.txt``, one a line, or ``--mask-classes``). Image and mask move together (resize,
crop, flip; nearest for the mask). The decoder takes the last stage of each resolution (stride 4
and coarser) and merges them top-down (FPN); the logits are upsampled to the input size. Metrics
at the network's input resolution (masks resized with nearest): ``pixel_accuracy``, ``mean_iou``
and per-class IoU from one confusion matrix over all pixels of a split (torchmetrics).
``train --task segment``.

Example:
    >>> TASK.name, TASK.score_name
    ('segmentation', 'pixel_accuracy')
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from transferlab.data import (IMAGE_EXTENSIONS, ImageSource, NormStats, atomic_write_bytes, atomic_write_text,
                              open_dataset)
from transferlab.data.geometry import interpolation_mode
from transferlab.data.images import image_size
from transferlab.errors import ConfigError, DataError
from transferlab.options import TrainOptions, opt
from transferlab.strategies.model import StagedModel, check_cut
from transferlab.tasks.base import Prepared
from transferlab.tasks.paired import (TRAIN_SKIP, PairedDataset, PairedTask, PairedTransform, check_paired_options,
                                      crop_scale_opt, normaliser, strategy_opt, sub_source, views_opt)
from transferlab.zoo import Backbone, Preprocessing

__all__ = ["DENSE_AUGMENTS", "PET_CLASSES", "TASK", "DenseModel", "FPNDecoder", "MaskDataset", "MaskSet",
           "MaskTransform", "SegTrainOptions", "Segmentation", "SegmentOptions", "SegmentationObjective",
           "dense_transform", "pixel_weights", "read_masks", "segmentation_metrics"]

log = logging.getLogger("transferlab")

#: trimap value - 1 -> class (Oxford-IIIT Pet: 1 pet, 2 background, 3 border)
PET_CLASSES = ("pet", "background", "border")
DENSE_AUGMENTS: tuple[str, ...] = ("none", "flip", "flip-scale")
#: fixed augmented views per training image by default (with an --augment): 4 had the best val mean IoU
#: on oxford-pets-3 of 2 / 4 views, --decoder-stride 2 and --pixel-weights 1,1,2 (README)
DEFAULT_VIEWS = 4
#: the generic layout's folders
IMAGES_DIR, MASKS_DIR = "images", "masks"
#: colours of the overlays (class index -> RGB; the second class of the pets, background, is left clear)
PALETTE = ((230, 40, 40), (40, 90, 230), (250, 210, 30), (40, 200, 80), (200, 60, 220), (60, 220, 220))


# ----------------------------------------------------------------------------- options

@dataclass(frozen=True)
class SegmentOptions:
    """The decoder and the mask-aware augmentation (``train --task segment``)."""

    mask_augment: str = opt("flip-scale", "mask-aware training augmentation (the mask moves with the image)",
                            choices=DENSE_AUGMENTS, flag="--augment")
    crop_scale: float = crop_scale_opt(0.5, "flip-scale")
    views: int | None = views_opt(DEFAULT_VIEWS)
    decoder_width: int = opt(64, "channels of the FPN decoder", lo=8)
    decoder_stride: int = opt(4, "finest encoder stride the decoder takes (2: the stride-2 stage too, for thin "
                                 "structures, at more compute)", lo=1)
    pixel_weights: str | None = opt(None, "weights of the classes in the pixel loss, comma-separated in class order "
                                          "(e.g. 1,1,2 for the pets' border); default: equal")
    mask_classes: str | None = opt(None, "images/ + masks/ layout: class names of the mask values 0, 1, ... "
                                         "comma-separated (default: DATA/classes.txt)")

    def __post_init__(self) -> None:
        check_paired_options(self, augment=self.mask_augment, augments=DENSE_AUGMENTS, default_views=DEFAULT_VIEWS)


@dataclass(frozen=True)
class SegTrainOptions(TrainOptions):
    """``TrainOptions`` with the defaults chosen for segmentation on a validation split (README)."""

    strategy: str = strategy_opt()
    epochs: int = opt(3, "epochs of the decoder-only phase (feature-extraction, first phase of others)")
    finetune_epochs: int = opt(9, "epochs of a phase that trains encoder stages")
    unfreeze: int = opt(5, "fine-tune / chain-thaw / gradual-unfreeze: encoder stages from the top that train")
    lr: float = opt(3e-3, "learning rate of the decoder")
    finetune_lr: float = opt(1e-3, "learning rate of the top group when encoder stages train")
    batch_size: int = opt(16, "batch size (global, split across DDP ranks)", lo=1)


# ----------------------------------------------------------------------------- masks on disk

@dataclass
class MaskSet:
    """Where each item's mask is and how its pixel values map to classes (``lut[value]``, -1: invalid)."""

    files: list[str]
    lut: np.ndarray
    classes: list[str]


def _value_lut(values: dict[int, int]) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    for v, c in values.items():
        lut[v] = c
    return lut


def read_mask(path: str, lut: np.ndarray) -> np.ndarray:
    """A mask file as ``H x W`` class indices (uint8), values mapped by ``lut``; a value outside is a DataError.

    Example:
        >>> read_mask("annotations/trimaps/Abyssinian_1.png", _value_lut({1: 0, 2: 1, 3: 2})).max()  # doctest: +SKIP
        2
    """
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I;16", "I"):
            raise DataError(f"{path}: expected a single-channel mask (PNG mode L or P), got mode {im.mode}")
        raw = np.asarray(im)
    if raw.max(initial=0) > 255 or raw.min(initial=0) < 0:
        raise DataError(f"{path}: mask values must be 0..255, got {int(raw.min())}..{int(raw.max())}")
    mapped = lut[raw.astype(np.int64)]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(raw[mapped < 0]).tolist()))
        allowed = [int(v) for v in np.flatnonzero(lut >= 0)]
        raise DataError(f"{path}: mask value {bad[0]} is outside the classes; expected one of {allowed}")
    return mapped.astype(np.uint8)


def _check_masks(source: ImageSource, masks: MaskSet) -> None:
    """Every mask readable, of its image's size, with values of the classes (one-line DataError)."""
    for i, f in enumerate(masks.files):
        with Image.open(f) as im:
            msize = im.size
        isize = image_size(source.identity(i))
        if msize != isize:
            raise DataError(f"{f}: mask is {msize[0]}x{msize[1]} but its image {source.identity(i)} is "
                            f"{isize[0]}x{isize[1]}; expected the same size")
        read_mask(f, masks.lut)


def _pets(data: Path, *, quiet: bool) -> tuple[ImageSource, MaskSet, list[tuple[str, str]]]:
    opened = open_dataset(str(data), quiet=quiet)
    folder = data / "annotations" / "trimaps"
    have = [i for i in range(len(opened)) if (folder / f"{Path(opened.identity(i)).stem}.png").is_file()]
    if len(have) < len(opened):
        log.info("segmentation: %d of %d images have no trimap in %s: left out", len(opened) - len(have),
                 len(opened), folder)
    source = sub_source(opened, np.asarray(have, dtype=np.int64)) if len(have) < len(opened) else opened
    files = [str(folder / f"{Path(source.identity(i)).stem}.png") for i in range(len(source))]
    return source, MaskSet(files, _value_lut({1: 0, 2: 1, 3: 2}), list(PET_CLASSES)), list(opened.skipped)


def _generic(data: Path, *, mask_classes: str | None) -> tuple[ImageSource, MaskSet, list[tuple[str, str]]]:
    images = sorted(p for p in (data / IMAGES_DIR).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    masks = data / MASKS_DIR
    paired = [(p, masks / f"{p.stem}.png") for p in images]
    kept = [(p, m) for p, m in paired if m.is_file()]
    if not kept:
        raise DataError(f"{data}: --task segment found no mask for any of the {len(images)} images in "
                        f"{IMAGES_DIR}/; expected {MASKS_DIR}/NAME.png for each {IMAGES_DIR}/NAME.*")
    if len(kept) < len(paired):
        log.info("segmentation: %d of %d images have no mask in %s: left out", len(paired) - len(kept),
                 len(paired), masks)
    if mask_classes:
        classes = [c.strip() for c in mask_classes.split(",") if c.strip()]
    elif (data / "classes.txt").is_file():
        classes = [c.strip() for c in (data / "classes.txt").read_text().splitlines() if c.strip()]
    else:
        raise DataError(f"{data}: the mask values' class names are needed: write {data}/classes.txt (one name a "
                        f"line, for the values 0, 1, ...) or give --mask-classes a,b,...")
    if len(classes) < 2:
        raise DataError(f"{data}: need at least 2 mask classes, got {classes}")
    source = ImageSource.from_files([str(p) for p, _ in kept], np.zeros(len(kept), dtype=np.int64),
                                    classes=[IMAGES_DIR], name=data.name, root=str(data))
    lut = _value_lut({v: v for v in range(len(classes))})
    return source, MaskSet([str(m) for _, m in kept], lut, classes), []


def read_masks(data: str, *, mask_classes: str | None = None, quiet: bool = True) -> Prepared:
    """The images of DATA that have a mask, their masks (checked) and the mask classes.

    Example:
        >>> p = read_masks("../shared/datasets/oxford-pets-3")  # doctest: +SKIP
        >>> p.classes  # doctest: +SKIP
        ['pet', 'background', 'border']
    """
    root = Path(data)
    if (root / "annotations" / "trimaps").is_dir():
        source, masks, skipped = _pets(root, quiet=quiet)
    elif (root / IMAGES_DIR).is_dir() and (root / MASKS_DIR).is_dir():
        source, masks, skipped = _generic(root, mask_classes=mask_classes)
    else:
        raise DataError(f"{data}: --task segment needs masks: an Oxford-IIIT Pet layout (annotations/trimaps/"
                        f"NAME.png) or {IMAGES_DIR}/ + {MASKS_DIR}/ (NAME.png, pixel value = class index); "
                        f"found neither")
    _check_masks(source, masks)
    return Prepared(source=source, targets=masks, classes=masks.classes, skipped=skipped,
                    summary={"masks": len(masks.files), "mask_classes": masks.classes})


# ----------------------------------------------------------------------------- transforms and datasets

class MaskTransform(PairedTransform):
    """``(PIL image, H x W class mask) -> (float32 C x S x S tensor, int64 S x S mask)``, moved together.

    Example:
        >>> pp = Preprocessing(32, 36, (0.5,) * 3, (0.5,) * 3)
        >>> t = dense_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std), augment="flip")
        >>> x, m = t(Image.new("RGB", (64, 48)), np.ones((48, 64), np.uint8))
        >>> tuple(x.shape), tuple(m.shape), int(m.min())
        ((3, 32, 32), (32, 32), 1)
    """

    def wrap(self, image: Image.Image, target: np.ndarray) -> tv_tensors.Mask:
        if target.shape != (image.height, image.width):
            raise DataError(f"mask is {target.shape[1]}x{target.shape[0]} but its image is "
                            f"{image.width}x{image.height}")
        return tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(target)))

    def unwrap(self, moved: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        return moved.long()


def dense_transform(preprocessing: Preprocessing, *, norm: NormStats, augment: str = "none",
                    scale: tuple[float, float] = (0.5, 1.0)) -> MaskTransform:
    """Whole image resized to ``input_size`` squared (no center crop); ``flip-scale``: a random crop of
    ``scale`` x the area first; ``flip``: horizontal flip. The mask takes the same geometry, nearest."""
    if augment not in DENSE_AUGMENTS:
        raise ConfigError(f"--augment must be one of {', '.join(DENSE_AUGMENTS)}, got {augment!r}")
    size = preprocessing.input_size
    mode = interpolation_mode(preprocessing)
    steps: list[Any] = ([v2.RandomResizedCrop((size, size), scale=scale, interpolation=mode, antialias=True)]
                        if augment == "flip-scale" else [v2.Resize((size, size), interpolation=mode, antialias=True)])
    if augment != "none":
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return MaskTransform(steps, size=size, normalise=normaliser(norm))


class MaskDataset(PairedDataset):
    """Items ``indices`` of ``source`` as ``(image tensor, S x S mask)``; ``targets()``: the eval masks,
    ``N x S x S`` uint8 (class indices < 256). Images decode at full size (the mask has its size)."""

    target_dtype = torch.uint8

    def __init__(self, source: ImageSource, masks: MaskSet, indices: np.ndarray, transform: MaskTransform) -> None:
        super().__init__(source, indices, transform)
        self.masks = masks

    def target(self, k: int) -> np.ndarray:
        return read_mask(self.masks.files[int(self.indices[k])], self.masks.lut)


# ----------------------------------------------------------------------------- the model

def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FPNDecoder(nn.Module):
    """Feature maps finest first -> 1x1 laterals, top-down upsample + add, 3x3 smoothing -> 1x1 to ``out`` maps.

    Example:
        >>> dec = FPNDecoder([8, 16], width=8, out_channels=3)
        >>> dec([torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 4, 4)]).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, in_channels: list[int], *, width: int, out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width) for _ in in_channels[:-1])
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        p = self.lateral[-1](feats[-1])
        for k in range(len(feats) - 2, -1, -1):
            p = F.interpolate(p, size=feats[k].shape[-2:], mode="bilinear", align_corners=False)
            p = self.smooth[k](p + self.lateral[k](feats[k]))
        return self.out(p)


class DenseModel(StagedModel):
    """Encoder stages -> the last stage of each resolution (stride >= ``min_stride``) -> FPN decoder.

    The engine's frozen-prefix contract holds: ``prefix(x, start=0, stop=b)`` returns, per item,
    the decoder's inputs from stages below ``b - 1`` and the output of stage ``b - 1`` flattened
    into one row (the shapes are the backbone's stage shapes), and ``forward_from(row, b)`` goes on
    from there, so cached activations of a frozen encoder feed the decoder's skips too. ``upsample``:
    logits at the input size (segmentation); else at the decoder's stride (keypoint heatmaps).

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> m = DenseModel(backbone=create_backbone("mobilenet_v2", pretrained=False), out_channels=3)
        >>> m(torch.zeros(1, 3, 64, 64)).shape  # doctest: +SKIP
        torch.Size([1, 3, 224, 224])
    """

    def __init__(self, *, backbone: Backbone, out_channels: int, width: int = 64, cut: int | None = None,
                 min_stride: int = 4, upsample: bool = True) -> None:
        super().__init__()
        cut = len(check_cut(cut, stage_names=backbone.stage_names, backbone=backbone.name))
        kept = list(backbone.featurizer.named_children())[:cut]
        self.stages = nn.Sequential(OrderedDict(kept))
        size = backbone.preprocessing.input_size
        shapes = backbone.stage_shapes(input_size=size)  # the stage outputs the backbone declares
        self.shapes = [tuple(shapes[name]) for name, _ in kept]
        if any(len(s) != 3 for s in self.shapes):
            raise ConfigError(f"--task segment/keypoints need a convolutional backbone (C x H x W stage outputs); "
                              f"{backbone.name} gives {self.shapes[-1]}")
        last_of_res = [i for i in range(cut) if i == cut - 1 or self.shapes[i + 1][1:] != self.shapes[i][1:]]
        self.levels = [i for i in last_of_res if round(size / self.shapes[i][2]) >= min_stride] or [cut - 1]
        self.head = FPNDecoder([self.shapes[i][0] for i in self.levels], width=width, out_channels=out_channels)
        self.num_classes, self.out_channels, self.width, self.cut = out_channels, out_channels, width, cut
        self.min_stride, self.upsample, self.input_size = min_stride, upsample, size
        self.backbone_name = backbone.name
        self.preprocessing = backbone.preprocessing

    def _carried(self, b: int) -> list[int]:
        """Stages whose outputs the flattened row at boundary ``b`` holds (skips below, then stage b-1)."""
        return [i for i in self.levels if i < b - 1] + [b - 1]

    def _unpack(self, x: torch.Tensor, b: int) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        if b == 0:
            return {}, x
        feats, at = {}, 0
        for i in self._carried(b):
            n = int(np.prod(self.shapes[i]))
            feats[i] = x[:, at:at + n].reshape(x.shape[0], *self.shapes[i])
            at += n
        return feats, feats[b - 1]

    def _run(self, x: torch.Tensor, start: int, stop: int) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        feats, cur = self._unpack(x, start)
        for i in range(start, stop):
            cur = self.stages[i](cur)
            if i in self.levels:
                feats[i] = cur
        return feats, cur

    def prefix(self, x: torch.Tensor, *, start: int, stop: int) -> torch.Tensor:
        """Stages ``start..stop-1``; input and output are the flattened rows of those boundaries."""
        if stop <= start:
            return x
        feats, cur = self._run(x, start, stop)
        feats[stop - 1] = cur
        return torch.cat([feats[i].flatten(1) for i in self._carried(stop)], dim=1)

    def forward_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        feats, _ = self._run(x, start, self.cut)
        out = self.head([feats[i] for i in self.levels])
        if self.upsample:
            out = F.interpolate(out, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    def describe(self) -> dict[str, Any]:
        """The decoder as model.json records it (its ``head``)."""
        return {"kind": "fpn", "dropout": 0.0, "pool": "none (per pixel)", "width": self.width,
                "min_stride": self.min_stride, "out_channels": self.out_channels,
                "levels": [self.stage_names[i] for i in self.levels], "upsample": self.upsample}


# ----------------------------------------------------------------------------- loss and metrics

@dataclass
class SegmentationObjective:
    """Per-pixel cross-entropy (``weights``: per class, torch's weighted mean); score = pixel accuracy
    (per image, averaged).

    Example:
        >>> obj = SegmentationObjective()
        >>> obj.evaluate(torch.tensor([[[[5.0]], [[0.0]]]]), torch.zeros(1, 1, 1, dtype=torch.long))[1]
        1.0
    """

    weights: torch.Tensor | None = None
    score_name: str = "pixel_accuracy"

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if self.weights is None else self.weights.to(outputs.device)
        return F.cross_entropy(outputs.float(), target.long(), weight=w)

    def batch_score(self, outputs: torch.Tensor, target: torch.Tensor) -> float:
        return float((outputs.argmax(1) == target.long()).float().flatten(1).mean(1).sum())

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            n = max(len(targets), 1)
            loss = sum(float(self.loss(outputs[i:i + 16], targets[i:i + 16])) * len(targets[i:i + 16])
                       for i in range(0, len(targets), 16)) / n
            return loss, self.batch_score(outputs, targets) / n


def pixel_weights(text: str | None, *, num_classes: int) -> torch.Tensor | None:
    """``--pixel-weights 1,1,2`` as a tensor of ``num_classes`` positive weights (None: equal weights).

    Example:
        >>> pixel_weights("1,1,2", num_classes=3).tolist()
        [1.0, 1.0, 2.0]
    """
    if text is None:
        return None
    try:
        w = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--pixel-weights: expected {num_classes} comma-separated numbers, got {text!r}") from None
    if len(w) != num_classes or not all(np.isfinite(v) and v > 0 for v in w):
        raise ConfigError(f"--pixel-weights: expected {num_classes} positive numbers (one per class), got {text!r}")
    return torch.tensor(w, dtype=torch.float32)


def segmentation_metrics(outputs: torch.Tensor, masks: torch.Tensor, *, classes: list[str],
                         loss: float | None = None) -> dict[str, Any]:
    """pixel_accuracy, mean_iou (over classes present in truth or prediction), per-class IoU, confusion.

    One confusion matrix over every pixel of the split (torchmetrics), rows true, columns predicted.

    Example:
        >>> logits = torch.tensor([[[[9.0, 9.0], [0.0, 0.0]], [[0.0, 0.0], [9.0, 9.0]]]])  # row 0: class 0
        >>> m = segmentation_metrics(logits, torch.tensor([[[0, 0], [0, 1]]]), classes=["a", "b"])
        >>> m["pixel_accuracy"], round(m["mean_iou"], 4), m["per_class"]["b"]["iou"]
        (0.75, 0.5833, 0.5)
    """
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    k = len(classes)
    cm = torch.zeros(k, k, dtype=torch.long)
    for i in range(0, len(masks), 32):  # chunked: a split's logits at full resolution are large
        pred = outputs[i:i + 32].argmax(1)
        cm += multiclass_confusion_matrix(pred.flatten(), masks[i:i + 32].flatten().long(), num_classes=k).long()
    tp = cm.diag().double()
    union = cm.sum(0).double() + cm.sum(1).double() - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    out: dict[str, Any] = {
        "n": int(len(masks)),
        "pixel_accuracy": float(tp.sum() / cm.sum().clamp(min=1)),
        "mean_iou": float(iou[present].mean()) if bool(present.any()) else 0.0,
        "per_class": {c: {"iou": None if not bool(present[j]) else float(iou[j]), "pixels": int(cm[j].sum())}
                      for j, c in enumerate(classes)},
        "confusion": cm.tolist(),
        "resolution": f"{masks.shape[-1]}x{masks.shape[-2]} (network input; masks resized with nearest)",
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


# ----------------------------------------------------------------------------- pictures

def overlay(image: Image.Image, mask: np.ndarray, *, alpha: float = 0.45, clear: int | None = None) -> Image.Image:
    """``image`` with each class of ``mask`` (same size) tinted in its colour (``clear``: left untinted).

    Example:
        >>> overlay(Image.new("RGB", (4, 2)), np.zeros((2, 4), np.uint8)).size
        (4, 2)
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = np.array([PALETTE[c % len(PALETTE)] for c in range(int(mask.max(initial=0)) + 1)], dtype=np.float32)
    tint = colours[mask]
    a = np.where(mask[..., None] == clear, 0.0, alpha) if clear is not None else alpha
    return Image.fromarray((rgb * (1 - a) + tint * a).clip(0, 255).astype(np.uint8))


def png_of(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def grid_png(rows: list[list[Image.Image]], *, size: int = 160) -> bytes:
    """Tiles (each scaled to ``size`` squared) in rows, as PNG bytes."""
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * size, len(rows) * size), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            canvas.paste(tile.resize((size, size)), (c * size, r * size))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _clear_class(classes: list[str]) -> int | None:
    return classes.index("background") if "background" in classes else None


# ----------------------------------------------------------------------------- the task

class Segmentation(PairedTask):
    """The segmentation task for the run pipeline, the loader and the deploy tools."""

    name = "segmentation"
    verb = "segment"  # train --task segment
    augments = DENSE_AUGMENTS
    score_name = "pixel_accuracy"
    options_class = SegmentOptions
    train_options_class = SegTrainOptions
    train_skip = (*TRAIN_SKIP, "hidden", "dropout")  # the decoder has neither

    # ---- training
    def augment_of(self, options: SegmentOptions) -> str:
        return options.mask_augment

    def paired_transform(self, preprocessing: Any, norm: Any, *, augment: str, options: SegmentOptions) -> Any:
        return dense_transform(preprocessing, norm=norm, augment=augment, scale=(options.crop_scale, 1.0))

    def dataset(self, prepared: Prepared, idx: np.ndarray, transform: Any, *, preprocessing: Any) -> MaskDataset:
        return MaskDataset(prepared.source, prepared.targets, idx, transform)

    def read(self, data: str, *, options: SegmentOptions, quiet: bool) -> Prepared:
        return read_masks(data, mask_classes=options.mask_classes, quiet=quiet)

    def prepare(self, source: ImageSource, *, options: SegmentOptions) -> Prepared:
        return read_masks(str(source.root), mask_classes=options.mask_classes)

    def build_model(self, backbone: Any, *, train_options: Any, options: SegmentOptions,
                    num_classes: int) -> DenseModel:
        return DenseModel(backbone=backbone, out_channels=num_classes, width=options.decoder_width,
                          cut=train_options.cut, min_stride=options.decoder_stride)

    def objective(self, *, train_options: Any, class_weights: Any, options: SegmentOptions, device: torch.device,
                  num_classes: int) -> SegmentationObjective:
        return SegmentationObjective(weights=pixel_weights(options.pixel_weights, num_classes=num_classes))

    def split_metrics(self, outputs: torch.Tensor, labels: torch.Tensor, *, classes: list[str],
                      objective: Any = None, model: Any = None) -> dict[str, Any]:
        loss = (objective or SegmentationObjective()).evaluate(outputs, labels)[0]
        return segmentation_metrics(outputs, labels, classes=classes, loss=loss)

    def run_metrics(self, *, prepared: Prepared, options: SegmentOptions) -> dict[str, Any]:
        return {"augment": options.mask_augment, "views": options.views, "decoder_stride": options.decoder_stride,
                "pixel_weights": options.pixel_weights, **prepared.summary}

    def write_outputs(self, run_dir: Path, *, prepared: Prepared, indices: np.ndarray, outputs: torch.Tensor,
                      labels: torch.Tensor, classes: list[str], save_predictions: bool = True,
                      model: Any = None, n_draw: int = 12) -> None:
        """``predictions_test.csv`` (per image: pixel accuracy, IoU per class) and ``predictions_test.png``
        (image | true mask | predicted mask overlays, at the network's resolution)."""
        pred = outputs.argmax(1)
        rows = ["identity,pixel_accuracy," + ",".join(f"iou_{c}" for c in classes)]
        for k, i in enumerate(indices):
            m = segmentation_metrics(outputs[k:k + 1], labels[k:k + 1], classes=classes)
            ious = ["" if m["per_class"][c]["iou"] is None else f"{m['per_class'][c]['iou']:.4f}" for c in classes]
            rows.append(f"{json.dumps(prepared.source.identity(int(i)))},{m['pixel_accuracy']:.4f}," + ",".join(ious))
        atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")
        clear, tiles = _clear_class(classes), []
        size = int(labels.shape[-1]) if len(labels) else 0
        for k in range(min(n_draw, len(indices))):
            img = prepared.source.load(int(indices[k])).resize((size, size))
            tiles.append([img, overlay(img, labels[k].numpy().astype(np.uint8), clear=clear),
                          overlay(img, pred[k].numpy().astype(np.uint8), clear=clear)])
        if tiles:
            atomic_write_bytes(run_dir / "predictions_test.png", grid_png(tiles))

    def headline(self, metrics: dict[str, Any]) -> float:
        return float(metrics["test"]["mean_iou"])

    def summary_line(self, metrics: dict[str, Any]) -> str:
        t = metrics["test"]
        per = ", ".join(f"{c} {v['iou']:.3f}" for c, v in t["per_class"].items() if v["iou"] is not None)
        return f"test mean IoU {t['mean_iou']:.4f}, pixel accuracy {t['pixel_accuracy']:.4f} (IoU {per})"

    # ---- a saved model
    def model_meta(self, model: DenseModel) -> dict[str, Any]:
        return {"backbone": model.backbone_name, "cut": model.cut, "head": model.describe(),
                "num_classes": model.num_classes,
                "geometry": "whole image resized to input_size x input_size; logits per pixel of that input"}

    def model_from_meta(self, meta: dict[str, Any], backbone: Any) -> DenseModel:
        dec = meta["head"]
        backbone.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        return DenseModel(backbone=backbone, out_channels=int(dec["out_channels"]), width=int(dec["width"]),
                          cut=int(meta["cut"]), min_stride=int(dec["min_stride"]), upsample=bool(dec["upsample"]))

    def image_transform(self, preprocessing: Any, norm: Any) -> Any:
        tf = dense_transform(preprocessing, norm=norm)
        return lambda image: tf(image, np.zeros((image.height, image.width), np.uint8))[0]

    def draft_size(self, preprocessing: Any) -> int | None:
        return None

    def format_predictions(self, outputs: np.ndarray, images: list[Any], *, classes: list[str], top: int = 5,
                           meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"mask_png": base64 PNG (pixel value = class index, the image's size), "classes",
        "fractions": {class: share of the pixels}}`` per image."""
        out = torch.as_tensor(outputs, dtype=torch.float32)
        results = []
        for k, im in enumerate(images):
            logits = F.interpolate(out[k:k + 1], size=(im.height, im.width), mode="bilinear", align_corners=False)
            mask = logits.argmax(1)[0].numpy().astype(np.uint8)
            counts = np.bincount(mask.ravel(), minlength=len(classes)) / max(mask.size, 1)
            results.append({"mask_png": base64.b64encode(png_of(mask)).decode("ascii"), "classes": list(classes),
                            "fractions": {c: round(float(v), 6) for c, v in zip(classes, counts)}})
        return results

    def annotate(self, results: list[dict[str, Any]], images: list[Any], paths: list[str], *,
                 draw: str | None = None) -> None:
        """With ``draw`` (OUT.png): the masks as PNG files in ``OUT_masks/NAME.png`` (``mask_file`` replaces
        ``mask_png``) and the overlays as a grid in OUT.png."""
        if draw is None:
            return
        folder = Path(draw).with_name(Path(draw).stem + "_masks")
        folder.mkdir(parents=True, exist_ok=True)
        tiles = []
        for r, img, path in zip(results, images, paths):
            blob = base64.b64decode(r.pop("mask_png"))
            target = atomic_write_bytes(folder / f"{Path(path).stem}.png", blob)
            r["mask_file"] = str(target)
            mask = np.asarray(Image.open(io.BytesIO(blob)))
            tiles.append([img, overlay(img, mask, clear=_clear_class(r["classes"]))])
        if tiles:
            atomic_write_bytes(draw, grid_png(tiles, size=200))

    def onnx_output_spec(self, meta: dict[str, Any]) -> str:
        s = int(meta["preprocessing"]["input_size"])
        return (f"float32 [batch, {len(meta['classes'])}, {s}, {s}]: class logits per pixel of the input, in the "
                "order of 'classes' (argmax over axis 1 = the mask)")

    def parity_problem(self, onnx_out: np.ndarray, torch_out: np.ndarray) -> str | None:
        differ = float((onnx_out.argmax(1) != torch_out.argmax(1)).mean())
        if differ > 1e-3:
            return f"ONNX Runtime and PyTorch give different classes on {differ:.2%} of the check pixels"
        return None


TASK = Segmentation()
