"""Tasks: what a run learns (classes, boxes ...), one module per task, found through a registry.

A task (:class:`transferlab.tasks.base.RunTask`) says what its head is, how its targets are read
and moved with the image, its loss, metrics, prediction format, figures and ONNX outputs; the one
run pipeline (``experiments.train.run_training``) and the shared loader (``model.json`` names the
task) do the rest. Importing this package is cheap: a task module loads on first use.

Example:
    >>> canonical("localize"), canonical("classification")
    ('localization', 'classification')
    >>> task_of({"backbone": "mobilenet_v2"})  # model files written before tasks existed
    'classification'
"""

from __future__ import annotations

import importlib
from typing import Any

from transferlab.errors import ConfigError

#: canonical task name -> module defining ``TASK``
TASKS: dict[str, str] = {
    "classification": "transferlab.tasks.classify",
    "localization": "transferlab.tasks.localize",
    "multilabel": "transferlab.tasks.multilabel",
    "segmentation": "transferlab.tasks.segment",
    "keypoints": "transferlab.tasks.keypoints",
}
#: the CLI's verbs for the tasks (``train --task classify``)
ALIASES: dict[str, str] = {"classify": "classification", "multilabel": "multilabel", "localize": "localization",
                           "segment": "segmentation", "keypoints": "keypoints"}
TASK_CHOICES: tuple[str, ...] = tuple(ALIASES)
DEFAULT_TASK = "classification"

__all__ = ["ALIASES", "DEFAULT_TASK", "TASKS", "TASK_CHOICES", "canonical", "get_task", "task_of"]


def canonical(name: str) -> str:
    """The registry name of ``name`` (a canonical name or a CLI alias)."""
    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASK_CHOICES)}, got {name!r}")
    return name


def get_task(name: str) -> Any:
    """The task object registered as ``name`` (imports its module).

    Example:
        >>> get_task("classify").name
        'classification'
    """
    return importlib.import_module(TASKS[canonical(name)]).TASK


def task_of(meta: dict[str, Any]) -> str:
    """The task a ``model.json`` / ``metrics.json`` belongs to; files without one are classification."""
    return canonical(str(meta.get("task", DEFAULT_TASK)))
