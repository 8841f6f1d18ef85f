"""A trained model on disk: ``model.safetensors`` (tensors) + ``model.json`` (everything else).

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
from safetensors.torch import load_file, save as save_tensors

from transferlab.data import NormStats, atomic_write_bytes, atomic_write_text, build_transform
from transferlab.errors import ConfigError
from transferlab.strategies.model import HeadConfig, TransferModel
from transferlab.zoo import Preprocessing, create_backbone

MODEL_FILE = "model.safetensors"
MODEL_JSON = "model.json"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    model: TransferModel
    classes: list[str]
    preprocessing: Preprocessing
    norm: NormStats
    meta: dict[str, Any]

    def transform(self) -> Any:
        return build_transform(self.preprocessing, norm=self.norm)

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


def save_model(run_dir: Path, model: TransferModel, *, classes: list[str], norm: NormStats,
               extra: dict[str, Any] | None = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / MODEL_FILE, save_tensors(state))
    meta = {
        "format": FORMAT_VERSION,
        "backbone": model.backbone_name,
        "cut": model.cut,
        "head": model.head_config.to_dict(),
        "num_classes": model.num_classes,
        "classes": classes,
        "preprocessing": model.preprocessing.to_dict(),
        "normalization": norm.to_dict(),
        **(extra or {}),
    }
    atomic_write_text(run_dir / MODEL_JSON, json.dumps(meta, indent=2))


def load_model(run_dir: str | os.PathLike[str]) -> LoadedModel:
    """Rebuild a trained model from ``RUN_DIR/model.json`` + ``model.safetensors``.

    Example:
        >>> lm = load_model("runs/flowers")  # doctest: +SKIP
        >>> lm.classes[:2]  # doctest: +SKIP
        ['01_daffodil', '02_snowdrop']
    """
    d = Path(run_dir)
    meta_path, weights_path = d / MODEL_JSON, d / MODEL_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise ConfigError(f"{d} is not a finished run: expected {MODEL_JSON} and {MODEL_FILE} in it")
    meta = json.loads(meta_path.read_text())
    backbone = create_backbone(meta["backbone"], pretrained=False)
    model = TransferModel(backbone=backbone, num_classes=int(meta["num_classes"]),
                          head=HeadConfig.from_dict(meta["head"]), cut=int(meta["cut"]))
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    model.eval()
    return LoadedModel(
        model=model,
        classes=list(meta["classes"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        norm=NormStats.from_dict(meta["normalization"]),
        meta=meta,
    )
