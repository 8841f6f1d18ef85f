"""Heatmaps for the prediction server's ``POST /explain``: one explainer per method, JSON-ready answers."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from transferlab.explain.gradcam import METHODS, Explainer, parse_target

__all__ = ["ExplainService"]


class ExplainService:
    """Builds the PyTorch model of a run on first use (also under ``--runtime onnx``: gradients
    need PyTorch) and answers ``explain(images)`` with base64 PNG overlays.

    Example:
        >>> svc = ExplainService("runs/pets")  # doctest: +SKIP
        >>> svc.explain([Image.open("cat.jpg").convert("RGB")], names=["cat.jpg"])[0]["target"]  # doctest: +SKIP
        'Abyssinian'
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self._lm: Any = None
        self._explainers: dict[str, Explainer] = {}
        self._lock = threading.Lock()

    def _explainer(self, method: str) -> Explainer:
        from transferlab.experiments.artifacts import load_model

        with self._lock:
            if self._lm is None:
                self._lm = load_model(self.run_dir)
            if method not in self._explainers:
                self._explainers[method] = Explainer.from_run(self._lm, method=method)
            return self._explainers[method]

    def classes(self) -> list[str]:
        return self._explainer("gradcam").classes

    def explain(self, images: Sequence[Image.Image], *, names: Sequence[str], method: str = "gradcam",
                target: str | None = None) -> list[dict[str, Any]]:
        """Per image: file, target and predicted class with probabilities, and ``overlay`` (a PNG data URL)."""
        if method not in METHODS:
            from transferlab.errors import ConfigError

            raise ConfigError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        ex = self._explainer(method)
        target_idx = parse_target(target, ex.classes)
        out = []
        for name, im, e in zip(names, images, ex.explain(list(images), target=target_idx)):
            out.append({"file": name, "width": im.width, "height": im.height, "method": method,
                        "target": ex.classes[e.target], "target_probability": round(e.target_probability, 6),
                        "predicted": ex.classes[e.predicted], "probability": round(e.probability, 6),
                        "overlay": "data:image/png;base64," + base64.b64encode(e.png()).decode()})
        return out
