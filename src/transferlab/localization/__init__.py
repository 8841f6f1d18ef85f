"""Object localization by swapping the head: the pretrained featurizer regresses a box.

Example:
    >>> from transferlab.localization import localize  # doctest: +SKIP
    >>> run = localize("../shared/datasets/oxford-pets-3", strategy="fine-tune", out="runs/loc")  # doctest: +SKIP
"""

from transferlab.localization.inference import evaluate_localizer, find_voc, predict_boxes
from transferlab.localization.metrics import box_metrics, paired_giou, paired_iou, valid_boxes
from transferlab.localization.model import BoxHead, LocalizationModel, LocHeadConfig
from transferlab.localization.task import LocalizationTask
from transferlab.localization.train import (
    LOC_SPLIT,
    LocalizationRun,
    LocalizeOptions,
    load_localizer,
    localize,
    run_localization,
)
from transferlab.localization.transforms import BOX_AUGMENTS, RandomCropContaining, box_transform
from transferlab.localization.voc import BoxSet, clip_box, load_source_boxes, read_voc

__all__ = [
    "BOX_AUGMENTS",
    "LOC_SPLIT",
    "BoxHead",
    "BoxSet",
    "LocHeadConfig",
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
    "read_voc",
    "run_localization",
    "valid_boxes",
]
