"""Box metrics: paired IoU / GIoU (torchvision.ops), mean IoU, accuracy at IoU thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou, generalized_box_iou

__all__ = ["THRESHOLDS", "box_metrics", "paired_giou", "paired_iou", "valid_boxes"]

#: IoU thresholds reported as ``acc_at_0.5`` / ``acc_at_0.75``.
THRESHOLDS: tuple[float, ...] = (0.5, 0.75)


def valid_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Order each box's coordinates so that ``xmin <= xmax`` and ``ymin <= ymax`` (differentiable).

    A linear or ReLU regressor may output swapped corners; IoU and GIoU need ordered ones.

    Example:
        >>> valid_boxes(torch.tensor([[0.8, 0.1, 0.2, 0.5]])).tolist()
        [[0.20000000298023224, 0.10000000149011612, 0.800000011920929, 0.5]]
    """
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([torch.minimum(x0, x1), torch.minimum(y0, y1), torch.maximum(x0, x1),
                        torch.maximum(y0, y1)], dim=-1)


def paired_iou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """IoU of ``pred[i]`` with ``true[i]`` (XYXY boxes, N x 4) via ``torchvision.ops.box_iou``.

    Example:
        >>> paired_iou(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 1., 3., 3.]])).tolist()
        [0.1428571492433548]
    """
    if pred.shape != true.shape or pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"paired_iou: expected two N x 4 tensors, got {tuple(pred.shape)} and {tuple(true.shape)}")
    if len(pred) == 0:
        return torch.empty(0)
    return box_iou(valid_boxes(pred.float()), true.float()).diagonal()


def paired_giou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of ``pred[i]`` with ``true[i]`` via ``torchvision.ops.generalized_box_iou``.

    Example:
        >>> paired_giou(torch.tensor([[0., 0., 1., 1.]]), torch.tensor([[2., 0., 3., 1.]])).tolist()
        [-0.3333333432674408]
    """
    if pred.shape != true.shape or pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"paired_giou: expected two N x 4 tensors, got {tuple(pred.shape)} and {tuple(true.shape)}")
    if len(pred) == 0:
        return torch.empty(0)
    return generalized_box_iou(valid_boxes(pred.float()), true.float()).diagonal()


def box_metrics(pred: torch.Tensor, true: torch.Tensor, *, logits: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, loss: float | None = None) -> dict[str, Any]:
    """``n``, ``mean_iou``, ``median_iou``, ``acc_at_0.5``, ``acc_at_0.75`` (+ ``accuracy`` with logits).

    Example:
        >>> m = box_metrics(torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]),
        ...                 torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 0.6]]))
        >>> m["mean_iou"], m["acc_at_0.5"], m["acc_at_0.75"]
        (0.8, 1.0, 0.5)
    """
    iou = paired_iou(pred, true).numpy().astype(np.float64)
    out: dict[str, Any] = {"n": int(iou.size), "mean_iou": round(float(iou.mean()), 6) if iou.size else 0.0,
                           "median_iou": round(float(np.median(iou)), 6) if iou.size else 0.0}
    for t in THRESHOLDS:
        out[f"acc_at_{t}"] = round(float((iou >= t).mean()), 6) if iou.size else 0.0
    if logits is not None and logits.shape[1] > 0:
        if labels is None:
            raise ValueError("box_metrics: logits given without labels")
        out["accuracy"] = round(float((logits.argmax(1) == labels.long()).float().mean()), 6)
    if loss is not None:
        out["loss"] = round(float(loss), 6)
    return out
