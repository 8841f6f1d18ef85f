"""Classify images with a backbone's own source head (the lectures' ``pred("cat.jpg")``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from transferlab.zoo.backbone import Backbone
from transferlab.zoo.registry import imagenet_categories


def predict_source(
    images: Sequence[str | os.PathLike[str]],
    *,
    backbone: Backbone,
    top: int = 5,
) -> list[dict[str, Any]]:
    """Top-k ImageNet classes for each image file.

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> bb = create_backbone("mobilenet_v2")  # doctest: +SKIP
        >>> predict_source(["cat.jpg"], backbone=bb, top=1)[0]["top"][0]["label"]  # doctest: +SKIP
        'tabby'
    """
    from transferlab.data import NormStats, build_transform, load_image

    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    pre = backbone.preprocessing
    transform = build_transform(pre, norm=NormStats(kind="pretrained", mean=pre.mean, std=pre.std))
    categories = imagenet_categories()
    backbone.eval()
    results = []
    for path in images:
        x = transform(load_image(path, draft_size=pre.resize_size)).unsqueeze(0)
        with torch.inference_mode():
            probs = backbone(x).softmax(dim=1)[0]
        values, indices = probs.topk(min(top, probs.numel()))
        results.append(
            {
                "image": str(path),
                "top": [
                    {"index": int(i), "label": categories[int(i)], "probability": round(float(v), 6)}
                    for v, i in zip(values, indices)
                ],
            }
        )
    return results
