"""Classification: one class per image, softmax head, cross-entropy; accuracy, macro F1, confusion.

The default task (``train --task classify``); model files without a ``task`` are read as this one.

Example:
    >>> TASK.name, TASK.score_name
    ('classification', 'accuracy')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn

from transferlab.data import FixedViews, ImageDataset, atomic_write_text, build_transform, open_dataset
from transferlab.errors import ConfigError
from transferlab.strategies.model import HeadConfig, TransferModel
from transferlab.tasks.base import Inputs, Prepared, item_keys

__all__ = ["TASK", "Classification", "ClassificationTask", "classification_metrics", "head_config"]


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


def classification_metrics(
    logits: torch.Tensor | np.ndarray, labels: np.ndarray, *, classes: list[str], loss: float | None = None
) -> dict[str, Any]:
    """accuracy, top5, macro_f1, per-class precision/recall/F1/support, confusion matrix.

    ``top5`` is None with 5 classes or fewer (it would be 1.0 by construction).

    Example:
        >>> m = classification_metrics(np.eye(3), np.arange(3), classes=["a", "b", "c"])
        >>> m["accuracy"], m["macro_f1"]
        (1.0, 1.0)
    """
    scores = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    y = np.asarray(labels, dtype=np.int64)
    pred = scores.argmax(dim=1).numpy()
    top5: float | None = None
    if scores.shape[1] > 5:
        topk = scores.topk(5, dim=1).indices.numpy()
        top5 = float(np.mean([yi in row for yi, row in zip(y, topk)])) if len(y) else 0.0
    idx = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=idx, zero_division=0)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else 0.0,
        "top5": top5,
        "macro_f1": float(f1_score(y, pred, labels=idx, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y, pred, labels=idx).tolist(),
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


def head_config(t: Any) -> HeadConfig:
    """The classification head of ``TrainOptions`` (``--head``, ``--hidden``, ``--dropout``, ``--pool``)."""
    return HeadConfig(kind=t.head, hidden=parse_hidden(t.hidden), dropout=t.dropout, pool=t.pool)


def parse_hidden(text: str) -> tuple[int, ...]:
    """``"512,256"`` -> ``(512, 256)``.

    Example:
        >>> parse_hidden("512, 256")
        (512, 256)
    """
    try:
        return tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise ConfigError(f"--hidden must be comma-separated integers, got {text!r}") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable).

    Example:
        >>> softmax(np.array([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_top(logits: np.ndarray, *, classes: list[str], top: int) -> list[list[dict[str, Any]]]:
    """Top-``top`` (index, label, probability) per row, most probable first (float64 softmax)."""
    probs = softmax(logits)
    k = min(top, len(classes))
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([{"index": int(i), "label": classes[int(i)], "probability": round(float(row[i]), 6)}
                    for i in order])
    return out


class Classification:
    """The classification task for the run pipeline, the loader and the deploy tools."""

    name = "classification"
    score_name = "accuracy"
    options_class = None
    supports_linear_probe = True

    # ---- training
    def check(self, *, data_options: Any, train_options: Any, options: Any) -> None:
        t, d = train_options, data_options
        if t.views < 0 or (t.views > 0 and d.augment == "none"):
            raise ConfigError(f"--views must be 0, or > 0 together with an --augment preset; got --views {t.views} "
                              f"with --augment {d.augment}")

    def cacheable_train(self, *, data_options: Any, train_options: Any, options: Any) -> bool:
        d, t = data_options, train_options
        return (d.augment == "none" or t.views > 0) and d.batch_augment == "none"

    def read(self, data: str, *, options: Any, quiet: bool) -> Prepared:
        """Open DATA (any layout ``open_dataset`` knows) and prepare it for this task."""
        opened = open_dataset(data, quiet=quiet)
        prepared = self.prepare(opened, options=options)
        prepared.skipped = list(opened.skipped)
        return prepared

    def prepare(self, source: Any, *, options: Any) -> Prepared:
        return Prepared(source=source)

    def build_model(self, backbone: Any, *, train_options: Any, options: Any, num_classes: int) -> TransferModel:
        return TransferModel(backbone=backbone, num_classes=num_classes, head=head_config(train_options),
                             cut=train_options.cut)

    def transforms(self, preprocessing: Any, norm: Any, *, data_options: Any, options: Any) -> tuple[Any, Any]:
        return (build_transform(preprocessing, norm=norm),
                build_transform(preprocessing, norm=norm, train=True, augment=data_options.augment))

    def inputs(self, prepared: Prepared, idx: np.ndarray, *, training: bool, eval_tf: Any, train_tf: Any,
               preprocessing: Any, data_options: Any, train_options: Any, options: Any) -> Inputs:
        source, d, views = prepared.source, data_options, train_options.views
        ev = ImageDataset(source, idx, eval_tf, draft_size=preprocessing.resize_size)
        if training and views > 0:  # fixed augmented views: deterministic, so cacheable
            fixed = FixedViews(ev, train_tf, views=views, seed=d.split_seed)
            tag = f"#{d.augment}-view"
            return Inputs(labels=torch.as_tensor(fixed.labels, dtype=torch.long), eval_dataset=fixed,
                          train_dataset=fixed, name_suffix=f"+views{views}",
                          items=[k + (f"{tag}{v}-seed{d.split_seed}" if v else "") for k in item_keys(source, idx)
                                 for v in range(views + 1)])
        return Inputs(labels=torch.as_tensor(source.labels[idx], dtype=torch.long), eval_dataset=ev,
                      train_dataset=ImageDataset(source, idx, train_tf, draft_size=preprocessing.resize_size)
                      if training else None, items=item_keys(source, idx))

    def objective(self, *, train_options: Any, class_weights: tuple[float, ...] | None, options: Any,
                  device: torch.device, num_classes: int) -> ClassificationTask:
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        return ClassificationTask(class_weights=w, label_smoothing=train_options.label_smoothing).to(device)

    def split_metrics(self, outputs: torch.Tensor, labels: torch.Tensor, *, classes: list[str],
                      objective: Any = None, model: Any = None) -> dict[str, Any]:
        loss = float(nn.functional.cross_entropy(outputs, labels))
        return classification_metrics(outputs, labels.numpy(), classes=classes, loss=loss)

    def run_metrics(self, *, prepared: Prepared, options: Any) -> dict[str, Any]:
        return {}

    def write_outputs(self, run_dir: Path, *, prepared: Prepared, indices: np.ndarray, outputs: torch.Tensor,
                      labels: torch.Tensor, classes: list[str], save_predictions: bool = False,
                      model: Any = None) -> None:
        """``predictions_test.csv`` (identity, true, predicted, confidence) when asked for."""
        if not save_predictions:
            return
        conf, pred = outputs.softmax(1).max(1)
        rows = ["identity,true,predicted,confidence"] + [
            f"{json.dumps(prepared.source.identity(int(i)))},{int(y)},{int(p)},{float(c):.6f}"
            for i, y, p, c in zip(indices, labels.tolist(), pred.tolist(), conf.tolist())]
        atomic_write_text(run_dir / "predictions_test.csv", "\n".join(rows) + "\n")

    def headline(self, metrics: dict[str, Any]) -> float:
        """The one test number of a run (``Run.test_accuracy``, compare's table)."""
        return float(metrics["test"]["accuracy"])

    def summary_line(self, metrics: dict[str, Any]) -> str:
        t = metrics["test"]
        return f"test accuracy {t['accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}"

    # ---- a saved model
    def model_meta(self, model: TransferModel) -> dict[str, Any]:
        return {"backbone": model.backbone_name, "cut": model.cut, "head": model.head_config.to_dict(),
                "num_classes": model.num_classes}

    def model_from_meta(self, meta: dict[str, Any], backbone: Any) -> TransferModel:
        return TransferModel(backbone=backbone, num_classes=int(meta["num_classes"]),
                             head=HeadConfig.from_dict(meta["head"]), cut=int(meta["cut"]))

    def image_transform(self, preprocessing: Any, norm: Any) -> Any:
        return build_transform(preprocessing, norm=norm)

    def draft_size(self, preprocessing: Any) -> int:
        return preprocessing.resize_size

    def format_predictions(self, outputs: np.ndarray, images: list[Any], *, classes: list[str],
                           top: int = 5, meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One ``{"top": [{index, label, probability}, ...]}`` per image."""
        return [{"top": t} for t in softmax_top(outputs, classes=classes, top=top)]

    def onnx_output_spec(self, meta: dict[str, Any]) -> str:
        return (f"float32 [batch, {len(meta['classes'])}] logits in the order of 'classes' "
                "(softmax for probabilities)")

    def parity_problem(self, onnx_out: np.ndarray, torch_out: np.ndarray) -> str | None:
        """Why an ONNX graph's outputs are not acceptable beyond the tolerance, or None."""
        if not np.array_equal(onnx_out.argmax(1), torch_out.argmax(1)):
            return "ONNX Runtime and PyTorch pick different top-1 classes on the check images"
        return None


TASK = Classification()
