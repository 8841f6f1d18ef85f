"""Classification metrics from logits (scikit-learn does the counting)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


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
