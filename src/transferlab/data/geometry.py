"""The eval-time geometry shared by transforms and normalisation statistics."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from transferlab.zoo.preprocessing import Preprocessing

__all__ = ["eval_geometry", "interpolation_mode"]

_INTERPOLATION = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}


def interpolation_mode(preprocessing: Preprocessing) -> v2.InterpolationMode:
    """torchvision's interpolation mode for ``preprocessing.interpolation``.

    Example:
        >>> interpolation_mode(Preprocessing(224, 256, (0.5,) * 3, (0.5,) * 3, "bicubic")).value
        'bicubic'
    """
    return _INTERPOLATION[preprocessing.interpolation]


def eval_geometry(preprocessing: Preprocessing) -> v2.Compose:
    """Resize(resize_size) -> CenterCrop(input_size) -> float32 tensor in [0, 1], no normalisation.

    Example:
        >>> from PIL import Image
        >>> pp = Preprocessing(32, 40, (0.5,) * 3, (0.5,) * 3)
        >>> eval_geometry(pp)(Image.new("RGB", (80, 60))).shape
        torch.Size([3, 32, 32])
    """
    return v2.Compose([
        v2.Resize(preprocessing.resize_size, interpolation=interpolation_mode(preprocessing), antialias=True),
        v2.CenterCrop(preprocessing.input_size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ])
