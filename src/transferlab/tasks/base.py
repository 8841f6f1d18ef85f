"""The two faces of a task: the objective the engine optimises, and what the run pipeline asks of it.

``Objective`` is what ``Engine`` calls every step (loss, running score, whole-split evaluation);
``RunTask`` is what ``experiments.train.run_training``, the shared loader and predict / export /
serve / report call. Each task module (``tasks/classify.py``, ``tasks/localize.py``) defines one
``RunTask`` instance named ``TASK``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import Dataset

from transferlab.data import ImageSource, open_dataset

__all__ = ["Inputs", "Objective", "Prepared", "RunTask", "Task", "item_keys", "read_opened"]


@runtime_checkable
class Objective(Protocol):
    """What the engine optimises and reports: the loss and a score named ``score_name``."""

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


#: the engine's name for its objective (kept: ``from transferlab.engine import Task``)
Task = Objective


@dataclass
class Prepared:
    """A dataset made ready for a task: the items it trains on, their targets, and what was left out."""

    source: ImageSource
    targets: Any = None  # the task's per-item annotations (boxes ...); None: the source's labels
    summary: dict[str, Any] = field(default_factory=dict)  # goes into metrics.json (e.g. boxes found)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable files of the opened dataset
    classes: list[str] | None = None  # the model's output classes when they are not the source's (mask classes)


@dataclass
class Inputs:
    """One split's datasets as a task builds them (the pipeline wraps them for the engine)."""

    labels: torch.Tensor
    eval_dataset: Dataset
    train_dataset: Dataset | None = None
    items: list[str] | None = None
    name_suffix: str = ""


class RunTask(Protocol):
    """What the run pipeline, the loader and the deploy tools ask of a task (see ``tasks/classify.py``)."""

    name: str  # registry name, written to model.json and metrics.json
    score_name: str  # the engine's score (history: train_/val_<score_name>)
    options_class: type | None  # the task's own options (flags), or None

    def prepare(self, source: ImageSource, *, options: Any) -> Prepared: ...

    def build_model(self, backbone: Any, *, train_options: Any, options: Any, num_classes: int) -> Any: ...

    def model_meta(self, model: Any) -> dict[str, Any]: ...

    def model_from_meta(self, meta: dict[str, Any], backbone: Any) -> Any: ...

    def image_transform(self, preprocessing: Any, norm: Any) -> Any: ...

    def split_metrics(self, outputs: torch.Tensor, labels: torch.Tensor, *, classes: list[str],
                      objective: Objective) -> dict[str, Any]: ...

    def format_predictions(self, outputs: np.ndarray, images: list[Any], *, classes: list[str],
                           top: int) -> list[dict[str, Any]]: ...

    def write_outputs(self, run_dir: Path, *, prepared: Prepared, indices: np.ndarray, outputs: torch.Tensor,
                      labels: torch.Tensor, classes: list[str], history: list[dict[str, Any]],
                      metrics: dict[str, Any]) -> None: ...

    def summary_line(self, metrics: dict[str, Any]) -> str: ...


def item_keys(source: ImageSource, indices: np.ndarray) -> list[str]:
    """``identity|size|mtime`` of each item: a changed file changes its key (keys the feature cache)."""
    keys = []
    for i in indices:
        stat = source.file_stat(int(i))
        keys.append(f"{source.identity(int(i))}|{stat[0]}|{stat[1]}" if stat else source.identity(int(i)))
    return keys


def read_opened(task: Any, data: str, *, options: Any, quiet: bool) -> Prepared:
    """DATA opened as any layout ``open_dataset`` knows, prepared by ``task`` (its skipped files kept).

    Example:
        >>> from transferlab.tasks import get_task
        >>> read_opened(get_task("localize"), "../shared/datasets/oxford-pets-3", options=None,
        ...             quiet=True).source.name  # doctest: +SKIP
        'oxford-pets-3'
    """
    opened = open_dataset(data, quiet=quiet)
    prepared = task.prepare(opened, options=options)
    prepared.skipped = list(opened.skipped)
    return prepared
