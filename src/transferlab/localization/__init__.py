"""Object localization building blocks: VOC boxes, box-aware transforms, box metrics, the box head.

The task itself (targets, head, loss, metrics, predictions) is :mod:`transferlab.tasks.localize`
and runs through the one pipeline (``transferlab train --task localize``, alias ``transferlab
localize train``). The run-level names below are kept and load on first use.

Example:
    >>> from transferlab.localization import localize  # doctest: +SKIP
    >>> run = localize("../shared/datasets/oxford-pets-3", strategy="fine-tune", out="runs/loc")  # doctest: +SKIP
"""

from __future__ import annotations

from transferlab._lazy import lazy_attributes

from transferlab.localization.metrics import box_metrics, paired_giou, paired_iou, valid_boxes
from transferlab.localization.model import BoxHead, LocalizationModel, LocHeadConfig
from transferlab.localization.task import LocalizationTask
from transferlab.localization.transforms import BOX_AUGMENTS, RandomCropContaining, box_transform
from transferlab.localization.voc import BoxSet, clip_box, find_voc, load_source_boxes, read_voc

_LAZY = {
    "LOC_SPLIT": "transferlab.tasks.localize",
    "LocalizeOptions": "transferlab.tasks.localize",
    "LocTrainOptions": "transferlab.tasks.localize",
    "localize": "transferlab.experiments.train",
    "run_localization": "transferlab.experiments.train",
    "LocalizationRun": "transferlab.experiments.train",
    "load_localizer": "transferlab.experiments.artifacts",
    "predict_boxes": "transferlab.experiments.inference",
    "evaluate_localizer": "transferlab.experiments.inference",
}
_RENAMED = {"LocalizationRun": "Run"}

__all__ = [
    "BOX_AUGMENTS",
    "LOC_SPLIT",
    "BoxHead",
    "BoxSet",
    "LocHeadConfig",
    "LocTrainOptions",
    "LocalizationModel",
    "LocalizationRun",
    "LocalizationTask",
    "LocalizeOptions",
    "RandomCropContaining",
    "box_metrics",
    "box_transform",
    "clip_box",
    "evaluate_localizer",
    "find_voc",
    "load_localizer",
    "load_source_boxes",
    "localize",
    "paired_giou",
    "paired_iou",
    "predict_boxes",
    "read_voc",
    "run_localization",
    "valid_boxes",
]


__getattr__ = lazy_attributes(__name__, _LAZY, renamed=_RENAMED)
