"""The localization task for the engine: box loss (smooth L1 or GIoU), optional class loss; score = IoU.

Model outputs are ``N x (4 + C)``: the normalised box ``(xmin, ymin, xmax, ymax)`` first, then
``C`` class logits (``C = 0`` for the ``box`` head). Targets are ``N x 5``: the normalised box and
the class index (as a float).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from transferlab.errors import ConfigError
from transferlab.localization.metrics import paired_iou, valid_boxes

__all__ = ["BOX_LOSSES", "SMOOTH_L1_BETA", "LocalizationTask"]

BOX_LOSSES: tuple[str, ...] = ("smooth-l1", "giou")
#: Smooth-L1 switches from quadratic to linear at this error (normalised coordinates, Fast R-CNN's 1/9).
SMOOTH_L1_BETA = 1.0 / 9.0


@dataclass
class LocalizationTask:
    """Box loss (+ ``box_weight`` x box loss with cross-entropy for ``class+box``); score = mean IoU.

    Example:
        >>> task = LocalizationTask(box_loss="giou", num_classes=0)
        >>> out = torch.tensor([[0.1, 0.1, 0.5, 0.5]])
        >>> loss, iou = task.evaluate(out, torch.tensor([[0.1, 0.1, 0.5, 0.5, 0.0]]))
        >>> round(loss, 4), iou  # identical boxes: GIoU loss 0 (up to torchvision's eps), IoU 1
        (0.0, 1.0)
    """

    box_loss: str = "smooth-l1"
    box_weight: float = 1.0
    num_classes: int = 0
    score_name: str = "mean_iou"

    def __post_init__(self) -> None:
        if self.box_loss not in BOX_LOSSES:
            raise ConfigError(f"--box-loss must be one of {', '.join(BOX_LOSSES)}, got {self.box_loss!r}")
        if not self.box_weight > 0:
            raise ConfigError(f"--box-weight must be > 0, got {self.box_weight}")
        if self.num_classes < 0 or self.num_classes == 1:
            raise ConfigError(f"num_classes must be 0 (box head) or >= 2 (class+box), got {self.num_classes}")

    def _check(self, outputs: torch.Tensor, target: torch.Tensor) -> None:
        if outputs.dim() != 2 or outputs.shape[1] != 4 + self.num_classes:
            raise ConfigError(f"localization outputs: expected N x {4 + self.num_classes}, got {tuple(outputs.shape)}")
        if target.dim() != 2 or target.shape[1] != 5:
            raise ConfigError(f"localization targets: expected N x 5 (box + class), got {tuple(target.shape)}")

    def box_term(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, true = outputs[:, :4].float(), target[:, :4].float()
        if self.box_loss == "giou":
            return generalized_box_iou_loss(valid_boxes(pred), true, reduction="mean")
        return nn.functional.smooth_l1_loss(pred, true, beta=SMOOTH_L1_BETA)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(outputs, target)
        box = self.box_term(outputs, target)
        if self.num_classes == 0:
            return box
        ce = nn.functional.cross_entropy(outputs[:, 4:].float(), target[:, 4].long())
        return ce + self.box_weight * box

    def batch_score(self, outputs: torch.Tensor, target: torch.Tensor) -> float:
        return float(paired_iou(outputs[:, :4].detach(), target[:, :4]).sum())

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        with torch.no_grad():
            loss = float(self.loss(outputs, targets))
            return loss, float(paired_iou(outputs[:, :4], targets[:, :4]).mean())
