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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as save_tensors

from transferlab.data import NormStats, atomic_write_bytes, atomic_write_text
from transferlab.errors import BadFileError, ConfigError, first_line
from transferlab.experiments.schema import MODEL_FORMAT, read_model_json
from transferlab.strategies.ensemble import KIND as MULTI_KIND, MultiModel, build_multi
from transferlab.tasks import DEFAULT_TASK, canonical, get_task, task_of
from transferlab.zoo import Preprocessing, create_backbone

MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"
FORMAT_VERSION = MODEL_FORMAT


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

    @property
    def temperature(self) -> float | None:
        """The run's fitted temperature (``--calibrate temperature``), or None."""
        t = self.meta.get("temperature")
        return None if t is None else float(t)

    def scoring_model(self) -> torch.nn.Module:
        """The model whose logits leave the tool: divided by the temperature of a calibrated run."""
        from transferlab.calibration import TemperatureScaled

        if self.temperature is None:
            return self.model
        return TemperatureScaled(self.model, temperature=self.temperature).eval()


def save_model(run_dir: Path, model: Any, *, classes: list[str], norm: NormStats, task: str = DEFAULT_TASK,
               extra: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` (tensors) + ``model.json`` (task, architecture, classes, preprocessing); no pickle."""
    spec = get_task(task)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / MODEL_FILE, save_tensors(state))
    if isinstance(model, MultiModel):  # ensembles and multi-backbone models (strategies.ensemble)
        meta = {"format": FORMAT_VERSION, "task": spec.name, **model.spec(), "backbone": model.backbone_name, "classes": classes,
                "normalization": norm.to_dict(), **(extra or {})}
        atomic_write_text(run_dir / MODEL_JSON, json.dumps(meta, indent=2))
        return
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
    def expected_task(raw: dict[str, Any]) -> None:
        if task is not None and canonical(task) != task_of(raw):
            raise ConfigError(f"{meta_path}: expected a {canonical(task)} model, got task {task_of(raw)!r}")

    meta = read_model_json(d, check=expected_task)
    name = task_of(meta)
    meta["task"] = name
    hint = f"train the run again (transferlab train ... --out {d} --overwrite)"
    try:
        if meta.get("kind") == MULTI_KIND:  # an ensemble / multi-backbone classifier (strategies.ensemble)
            model = build_multi(meta)
        else:
            model = get_task(name).model_from_meta(meta, create_backbone(meta["backbone"], pretrained=False))
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        norm = NormStats.from_dict(meta["normalization"])
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        raise BadFileError(meta_path, f"describes no model this version can build ({exc})", hint) from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadFileError(weights_path, f"not a readable safetensors file ({first_line(exc)})", hint) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise BadFileError(weights_path, f"does not fit the model of {MODEL_JSON} "
                                         f"({first[1].strip() if len(first) > 1 else first[0]})", hint) from None
    model.eval()
    return LoadedModel(model=model, classes=list(meta["classes"]), preprocessing=preprocessing, norm=norm, meta=meta)


def load_localizer(run_dir: str | os.PathLike[str]) -> LoadedModel:
    """:func:`load_model` that insists on a localization model.

    Example:
        >>> load_localizer("runs/loc-ft").model.head_config.kind  # doctest: +SKIP
        'box'
    """
    return load_model(run_dir, task="localization")
