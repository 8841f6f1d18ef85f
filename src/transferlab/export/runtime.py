"""One predictor interface over PyTorch and ONNX Runtime for a run directory."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from transferlab.data import NormStats, load_image
from transferlab.errors import ConfigError
from transferlab.experiments.artifacts import MODEL_FILE, MODEL_JSON, load_model
from transferlab.export._deps import require
from transferlab.export.onnx_export import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, file_sha256
from transferlab.tasks import get_task, task_of
from transferlab.tasks.classify import softmax, softmax_top
from transferlab.zoo import Preprocessing

__all__ = ["RUNTIMES", "Predictor", "open_predictor", "predict_files", "softmax"]

RUNTIMES: tuple[str, ...] = ("torch", "onnx")


class Predictor:
    """Preprocessing from ``model.json`` + the model in PyTorch or ONNX Runtime.

    Build it with :func:`open_predictor`. ``logits`` takes a float32 NCHW batch that has been
    through :meth:`preprocess`; ``predict`` takes decoded RGB images.

    Example:
        >>> p = open_predictor("runs/flowers", runtime="onnx")  # doctest: +SKIP
        >>> p.predict([Image.open("rose.jpg").convert("RGB")], top=1)  # doctest: +SKIP
        [[{'index': 7, 'label': '08_tulip', 'probability': 0.93}]]
    """

    def __init__(self, *, run_dir: Path, runtime: str, meta: dict[str, Any], model: Any) -> None:
        self.run_dir = run_dir
        self.runtime = runtime
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.norm = NormStats.from_dict(meta["normalization"])
        self.task = get_task(task_of(meta))
        # other tasks answer in pixels of the uploaded image: decode it whole
        self.draft_size = self.preprocessing.resize_size if self.task.name == "classification" else None
        self._transform = self.task.image_transform(self.preprocessing, self.norm)
        self._model = model

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> float32 ``3 x S x S`` array, exactly as at training/eval time."""
        return self._transform(image).numpy()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Float32 ``N x 3 x S x S`` -> float32 ``N x classes`` logits."""
        if batch.ndim != 4 or batch.dtype != np.float32:
            raise ConfigError(f"expected a float32 N x 3 x H x W batch, got {batch.dtype} {batch.shape}")
        if self.runtime == "onnx":
            return self._model.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        with torch.inference_mode():
            return self._model(torch.from_numpy(batch)).numpy()

    def predict(self, images: Sequence[Image.Image], *, top: int = 5) -> list[Any]:
        """Per image: classification, the top-``top`` classes (index, label, probability), most probable
        first; another task, its prediction dict (localization: ``box`` in pixels of the image ...)."""
        if not images:
            return []
        if not (isinstance(top, int) and top >= 1):
            raise ConfigError(f"top: expected an integer >= 1, got {top!r}")
        outputs = self.logits(np.stack([self.preprocess(im) for im in images]))
        if self.task.name == "classification":
            return softmax_top(outputs, classes=self.classes, top=top)
        return self.task.format_predictions(outputs, list(images), classes=self.classes, top=top, meta=self.meta)


def _onnx_session(run_dir: Path, meta: dict[str, Any], threads: int | None) -> Any:
    ort = require("onnxruntime", extra="export", feature="the ONNX runtime")
    info = meta.get("onnx")
    path = run_dir / ONNX_FILE
    if info is None or not path.is_file():
        raise ConfigError(f"{run_dir} has no checked {ONNX_FILE}; run `transferlab export {run_dir} --format onnx` "
                          f"first, or use --runtime torch")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != info["onnx_sha256"]:
        raise ConfigError(f"{path} is not the file that was checked at export (SHA-256 differs); re-export it")
    if file_sha256(run_dir / MODEL_FILE) != info["weights_sha256"]:
        raise ConfigError(f"{path} is stale: {MODEL_FILE} changed since the export; re-run transferlab export")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])


def open_predictor(run_dir: str | os.PathLike[str], *, runtime: str = "torch",
                   threads: int | None = None) -> Predictor:
    """A :class:`Predictor` for a trained run; ``runtime="onnx"`` needs a checked ``model.onnx``.

    ``threads`` sets the intra-op threads (ONNX Runtime: per session; PyTorch: process-wide);
    None keeps the library's default.

    Example:
        >>> p = open_predictor("runs/flowers", runtime="torch", threads=2)  # doctest: +SKIP
        >>> len(p.classes)  # doctest: +SKIP
        17
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads: expected an integer >= 1 or None, got {threads!r}")
    run = Path(run_dir)
    meta_path = run / MODEL_JSON
    if not meta_path.is_file():
        raise ConfigError(f"{run} is not a finished run: expected {MODEL_JSON} and {MODEL_FILE} in it")
    meta = json.loads(meta_path.read_text())
    if runtime == "onnx":
        model: Any = _onnx_session(run, meta, threads)
    else:
        if threads is not None:
            torch.set_num_threads(threads)
        model = load_model(run).model.eval()
    return Predictor(run_dir=run, runtime=runtime, meta=meta, model=model)


def predict_files(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                  runtime: str = "torch", top: int = 5) -> list[dict[str, Any]]:
    """Like :func:`transferlab.experiments.inference.predict_images`, with a choice of runtime.

    Example:
        >>> predict_files(["rose.jpg"], model_dir="runs/ft", runtime="onnx", top=1)  # doctest: +SKIP
        [{'image': 'rose.jpg', 'top': [{'index': 7, 'label': '08_tulip', 'probability': 0.93}]}]
    """
    p = open_predictor(model_dir, runtime=runtime)
    out = []
    for path in images:
        image = load_image(path, draft_size=p.draft_size)
        r = p.predict([image], top=top)[0]
        out.append({"image": str(path), "top": r} if isinstance(r, list) else
                   {"image": str(path), **r, "width": image.width, "height": image.height})
    return out
