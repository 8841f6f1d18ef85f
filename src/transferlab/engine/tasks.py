"""What the engine optimises and reports, per task: the loss and a score ("accuracy" for classes).

The engine is task-agnostic: it calls ``task.loss`` for training, ``task.batch_score`` for the
running training score and ``task.evaluate`` on whole validation outputs. Classification is the
default; localization (boxes) brings its own task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Task(Protocol):
    """Interface of a training task."""

    score_name: str

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Differentiable mean loss of a batch."""
        ...

    def batch_score(self, outputs: torch.Tensor, target: torch.Tensor) -> float:
        """Sum of the per-sample score over the batch (the engine averages)."""
        ...

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """(mean loss, mean score) over a whole split; the loss drives early stopping."""
        ...


@dataclass
class ClassificationTask:
    """Cross-entropy with optional class weights and label smoothing; score = accuracy.

    Example:
        >>> task = ClassificationTask()
        >>> task.evaluate(torch.eye(3), torch.arange(3))[1]
        1.0
    """

    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    score_name: str = "accuracy"

    def __post_init__(self) -> None:
        self._ce = nn.CrossEntropyLoss(weight=self.class_weights, label_smoothing=self.label_smoothing)

    def to(self, device: torch.device) -> "ClassificationTask":
        self._ce = self._ce.to(device)
        return self

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._ce(outputs.float(), target)

    def batch_score(self, outputs: torch.Tensor, target: torch.Tensor) -> float:
        hard = target if target.dim() == 1 else target.argmax(1)  # soft labels from mixup/cutmix
        return float((outputs.argmax(1) == hard).sum())

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        loss = float(nn.functional.cross_entropy(outputs.float(), targets))
        return loss, float((outputs.argmax(1) == targets).float().mean())
