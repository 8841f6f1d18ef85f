"""The hand-crafted baseline: HOG descriptors (Dalal & Triggs, CVPR 2005; scikit-image) and a linear SVM.

No pretrained knowledge: every image is resized (shorter side) and centre-cropped to ``size`` px,
described by HOG (9 orientations, cells of ``max(4, size // 16)`` px, 2x2-cell blocks, L2-Hys, the
strongest colour channel's gradient) and classified by a linear SVM whose C is chosen on the
validation split and refit on train+val, exactly as the linear probe's classifier
(:func:`transferlab.strategies.fit_linear_probe` with ``classifier="svm"``). Descriptors go to the
on-disk feature cache, keyed by the HOG settings and the images, so seeds and reruns compute them once.

Example:
    >>> from PIL import Image
    >>> hog_vector(Image.new("RGB", (40, 30)), size=32).shape
    (1764,)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from transferlab.data import ImageSource
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")
ORIENTATIONS = 9
MAX_SIZE = 128  # the default resolution: images are described at min(native shorter side, 128) px


def hog_settings(size: int) -> dict[str, Any]:
    """HOG parameters at ``size`` px (what the descriptor and its cache key depend on).

    Example:
        >>> hog_settings(128)["pixels_per_cell"]
        8
    """
    if size < 16:
        raise ConfigError(f"hog-svm: --input-size must be >= 16 px, got {size}")
    from transferlab.export._deps import require

    skimage = require("skimage", extra="baselines", feature="the hog-svm strategy")
    return {"features": "hog", "size": int(size), "orientations": ORIENTATIONS,
            "pixels_per_cell": max(4, size // 16), "cells_per_block": 2, "block_norm": "L2-Hys",
            "scikit_image": skimage.__version__}


def hog_vector(image: Image.Image, *, size: int) -> np.ndarray:
    """The HOG descriptor of one image at ``size`` x ``size`` px (float32)."""
    from skimage.feature import hog

    s = hog_settings(size)
    pixels = np.asarray(ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return hog(pixels / 255.0, orientations=s["orientations"], pixels_per_cell=(s["pixels_per_cell"],) * 2,
               cells_per_block=(s["cells_per_block"],) * 2, block_norm=s["block_norm"],
               channel_axis=-1).astype(np.float32)


def default_size(source: ImageSource, indices: np.ndarray) -> int:
    """``min(128, the shorter side of the first image)``: native resolution for small images."""
    w, h = source.load(int(indices[0])).size
    return max(16, min(MAX_SIZE, w, h))


def hog_features(source: ImageSource, indices: np.ndarray, *, size: int, items: list[str] | None = None,
                 cache: FeatureCache | None = None, name: str = "images") -> np.ndarray:
    """HOG descriptors of ``indices`` (N x D), from ``cache`` when it holds them (the log says so)."""
    settings = hog_settings(size)
    key = cache.key(fingerprint=settings, boundary=0, items=items) if cache is not None and items else None
    if key is not None and cache is not None:
        hit = cache.load(key)
        if hit is not None:
            log.info("hog-svm: %s descriptors of %d images from the feature cache", name, len(indices))
            return hit.numpy()
    rows = np.stack([hog_vector(source.load(int(i), draft_size=2 * size), size=size) for i in indices])
    if key is not None and cache is not None:
        writer = cache.writer(key, n=len(rows), shape=tuple(rows.shape[1:]))
        writer.write(torch.from_numpy(rows))
        writer.commit()
    return rows
