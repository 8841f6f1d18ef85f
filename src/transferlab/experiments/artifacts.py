"""A trained model on disk, one format for every task: ``model.safetensors`` + ``model.json``.

``model.json`` names its ``task``; loading dispatches on it (``transferlab.tasks``), so predict,
evaluate, export, serve and report read classification and localization runs alike.

Loading never unpickles: the architecture is rebuilt from the zoo and the JSON, then the tensors
are loaded strictly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save as save_tensors

from transferlab.data import NormStats, atomic_write_bytes, atomic_write_text
from transferlab.errors import ConfigError
from transferlab.tasks import DEFAULT_TASK, canonical, get_task, task_of
from transferlab.zoo import Preprocessing, create_backbone

MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A trained model rebuilt from a run directory, with its task (``meta["task"]``)."""

    model: Any
    classes: list[str]
    preprocessing: Preprocessing
    norm: NormStats
    meta: dict[str, Any]

    @property
    def task(self) -> Any:
        """The task object (``transferlab.tasks``) the model was trained for."""
        return get_task(task_of(self.meta))

    def transform(self) -> Any:
        """PIL image -> the network's input tensor, as at evaluation time."""
        return self.task.image_transform(self.preprocessing, self.norm)

    @property
    def draft_size(self) -> int:
        return self.task.draft_size(self.preprocessing)


def save_model(run_dir: Path, model: Any, *, classes: list[str], norm: NormStats, task: str = DEFAULT_TASK,
               extra: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` (tensors) + ``model.json`` (task, architecture, classes, preprocessing); no pickle."""
    spec = get_task(task)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / MODEL_FILE, save_tensors(state))
    meta = {
        "format": FORMAT_VERSION,
        "task": spec.name,
        **spec.model_meta(model),
        "classes": classes,
        "preprocessing": model.preprocessing.to_dict(),
        "normalization": norm.to_dict(),
        **(extra or {}),
    }
    atomic_write_text(run_dir / MODEL_JSON, json.dumps(meta, indent=2))


def load_model(run_dir: str | os.PathLike[str], *, task: str | None = None) -> LoadedModel:
    """Rebuild a trained model from ``RUN_DIR/model.json`` + ``model.safetensors``, for the task it names.

    ``task`` (optional) is the task the caller expects; a model of another task is a one-line error.
    Files written before tasks existed have no ``task`` and are classification models.

    Example:
        >>> lm = load_model("runs/flowers")  # doctest: +SKIP
        >>> lm.classes[:2], lm.meta["task"]  # doctest: +SKIP
        (['01_daffodil', '02_snowdrop'], 'classification')
    """
    d = Path(run_dir)
    meta_path, weights_path = d / MODEL_JSON, d / MODEL_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"{d} is not a finished run: expected {MODEL_JSON} and {MODEL_FILE} in it")
    meta = json.loads(meta_path.read_text())
    name = task_of(meta)
    meta["task"] = name
    if task is not None and canonical(task) != name:
        raise ConfigError(f"{meta_path}: expected a {canonical(task)} model, got task {name!r}")
    backbone = create_backbone(meta["backbone"], pretrained=False)
    model = get_task(name).model_from_meta(meta, backbone)
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    model.eval()
    return LoadedModel(
        model=model,
        classes=list(meta["classes"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        norm=NormStats.from_dict(meta["normalization"]),
        meta=meta,
    )


def load_localizer(run_dir: str | os.PathLike[str]) -> LoadedModel:
    """:func:`load_model` that insists on a localization model.

    Example:
        >>> load_localizer("runs/loc-ft").model.head_config.kind  # doctest: +SKIP
        'box'
    """
    return load_model(run_dir, task="localization")
