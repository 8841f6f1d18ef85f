"""One predictor interface over PyTorch and ONNX Runtime for a run directory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from transferlab.data import NormStats, load_image
from transferlab.errors import BadFileError, ConfigError
from transferlab.experiments.artifacts import MODEL_FILE, MODEL_JSON, load_model
from transferlab.experiments.schema import read_model_json
from transferlab.export._deps import require
from transferlab.export.onnx_export import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, file_sha256
from transferlab.export.quantize import INT8_FILE
from transferlab.tasks import get_task, task_of
from transferlab.tasks.classify import softmax
from transferlab.tta import average_views, check_tta, tta_transform
from transferlab.zoo import Preprocessing

__all__ = ["ONNX_MODELS", "RUNTIMES", "Predictor", "open_predictor", "predict_files", "softmax"]

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

    def __init__(self, *, run_dir: Path, runtime: str, meta: dict[str, Any], model: Any, tta: str = "none") -> None:
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
        self.tta = check_tta(tta)
        if self.tta != "none" and self.task.name != "classification":
            raise ConfigError(f"--tta applies to classification models; {run_dir} is a {self.task.name} model")
        self._views = tta_transform(self.preprocessing, norm=self.norm, mode=tta)
        self._model = model
        self.model_file = MODEL_FILE  # what runs: model.safetensors, model.onnx or model.int8.onnx

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
        if self.task.name != "classification":
            outputs = self.logits(np.stack([self.preprocess(im) for im in images]))
            return self.task.format_predictions(outputs, list(images), classes=self.classes, top=top, meta=self.meta)
        views = [self._views(im).numpy() for im in images]  # V x 3 x S x S each (V = 1 without TTA)
        logits = torch.from_numpy(self.logits(np.concatenate(views)))
        probs = average_views(logits, len(views[0])).exp().numpy()
        k = min(top, len(self.classes))
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([{"index": int(i), "label": self.classes[int(i)], "probability": round(float(row[i]), 6)}
                        for i in order])
        return out


ONNX_MODELS = ("auto", "fp32", "int8")


def _onnx_session(run_dir: Path, meta: dict[str, Any], threads: int | None,
                  onnx_model: str = "auto") -> tuple[Any, str]:
    """The checked fp32 ``model.onnx``, or the int8 ``model.int8.onnx`` (``auto``: int8 when it was exported)."""
    ort = require("onnxruntime", extra="export", feature="the ONNX runtime")
    if onnx_model not in ONNX_MODELS:
        raise ConfigError(f"onnx_model: expected one of {', '.join(ONNX_MODELS)}, got {onnx_model!r}")
    int8 = onnx_model == "int8" or (onnx_model == "auto" and "onnx_int8" in meta)
    entry, name = ("onnx_int8", INT8_FILE) if int8 else ("onnx", ONNX_FILE)
    info = meta.get(entry)
    path = run_dir / name
    if info is None or not path.is_file():
        how = "--quantize int8" if int8 else "--format onnx"
        raise ConfigError(f"{run_dir} has no checked {name}; run `transferlab export {run_dir} {how}` "
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
    session = ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])
    outputs = session.get_outputs()[0].shape[-1]
    if isinstance(outputs, int) and task_of(meta) in ("classification", "multilabel") and outputs != len(meta["classes"]):
        raise BadFileError(path, f"has {outputs} outputs but {MODEL_JSON} lists {len(meta['classes'])} classes",
                           f"re-export it (transferlab export {run_dir})")
    return session, name


def open_predictor(run_dir: str | os.PathLike[str], *, runtime: str = "torch",
                   threads: int | None = None, onnx_model: str = "auto", tta: str = "none") -> Predictor:
    """A :class:`Predictor` for a trained run; ``runtime="onnx"`` needs a checked ``model.onnx``.

    ``onnx_model`` (ONNX Runtime only): ``auto`` serves ``model.int8.onnx`` when ``export --quantize
    int8`` wrote one (it passed its parity check), else ``model.onnx``; ``fp32`` or ``int8`` force one.
    The logits are the calibrated ones of a ``--calibrate`` run (the ONNX graph includes the
    temperature); ``tta`` averages the softmax over views (:mod:`transferlab.tta`).

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
    meta = read_model_json(run)
    if runtime == "onnx":
        model, name = _onnx_session(run, meta, threads, onnx_model)
    else:
        if threads is not None:
            torch.set_num_threads(threads)
        model, name = load_model(run).scoring_model().eval(), MODEL_FILE
    predictor = Predictor(run_dir=run, runtime=runtime, meta=meta, model=model, tta=tta)
    predictor.model_file = name
    return predictor


def predict_files(images: Sequence[str | os.PathLike[str]], *, model_dir: str | os.PathLike[str],
                  runtime: str = "torch", top: int = 5, tta: str = "none") -> list[dict[str, Any]]:
    """Like :func:`transferlab.experiments.inference.predict_images`, with a choice of runtime.

    Example:
        >>> predict_files(["rose.jpg"], model_dir="runs/ft", runtime="onnx", top=1)  # doctest: +SKIP
        [{'image': 'rose.jpg', 'top': [{'index': 7, 'label': '08_tulip', 'probability': 0.93}]}]
    """
    p = open_predictor(model_dir, runtime=runtime, tta=tta)
    out = []
    for path in images:
        image = load_image(path, draft_size=p.draft_size)
        r = p.predict([image], top=top)[0]
        out.append({"image": str(path), "top": r} if isinstance(r, list) else
                   {"image": str(path), **r, "width": image.width, "height": image.height})
    return out
