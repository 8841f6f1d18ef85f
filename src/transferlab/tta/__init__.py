"""Test-time augmentation: average the softmax over fixed views of each image.

``flip``: the eval crop and its mirror (2 views). ``flip+crops``: the centre and the four corner
crops of the resized image (torchvision ``FiveCrop``), each also mirrored (10 views). The averaged
probabilities are returned as log-probabilities, so every function that takes logits (softmax,
arg-max, metrics) works on them unchanged. Costs grow with the views: 2x and 10x the forward passes.

Example:
    >>> import torch
    >>> from transferlab.zoo import Preprocessing
    >>> from transferlab.data import NormStats
    >>> pp = Preprocessing(32, 40, (0.5,) * 3, (0.25,) * 3)
    >>> tf = tta_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std), mode="flip+crops")
    >>> from PIL import Image
    >>> tf(Image.new("RGB", (60, 50))).shape
    torch.Size([10, 3, 32, 32])
"""

from __future__ import annotations

import time
from dataclasses import replace
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from transferlab.data import NormStats, build_transform
from transferlab.data.geometry import interpolation_mode
from transferlab.errors import ConfigError
from transferlab.zoo import Preprocessing

__all__ = ["TTA_MODES", "TTA_VIEWS", "average_views", "check_tta", "tta_logits", "tta_transform"]

TTA_MODES: tuple[str, ...] = ("none", "flip", "flip+crops")
#: Views per image of each mode.
TTA_VIEWS: dict[str, int] = {"none": 1, "flip": 2, "flip+crops": 10}


def check_tta(mode: str) -> str:
    """``mode`` if it is a TTA mode, else a one-line :class:`ConfigError`.

    Example:
        >>> check_tta("flip")
        'flip'
    """
    if mode not in TTA_MODES:
        raise ConfigError(f"--tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def tta_transform(preprocessing: Preprocessing, *, norm: NormStats,
                  mode: str) -> Callable[[Image.Image], torch.Tensor]:
    """``PIL.Image -> V x 3 x S x S`` views (V = :data:`TTA_VIEWS[mode]`), normalised as at eval time."""
    check_tta(mode)
    eval_tf = build_transform(preprocessing, norm=norm)
    if mode == "none":
        return lambda im: eval_tf(im).unsqueeze(0)
    if mode == "flip":
        def flip(im: Image.Image) -> torch.Tensor:
            x = eval_tf(im)
            return torch.stack([x, x.flip(-1)])
        return flip
    resize = v2.Resize(preprocessing.resize_size, interpolation=interpolation_mode(preprocessing), antialias=True)
    five = v2.FiveCrop(preprocessing.input_size)
    # on a crop of input_size, the eval resize and centre crop are identities: only the normalisation acts
    crop_tf = build_transform(replace(preprocessing, resize_size=preprocessing.input_size), norm=norm)

    def crops(im: Image.Image) -> torch.Tensor:
        views = [crop_tf(c) for c in five(resize(im))]  # corners tl, tr, bl, br, then centre
        views = [views[4], *views[:4]]
        return torch.stack(views + [v.flip(-1) for v in views])
    return crops


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """``(N*V) x C`` logits -> ``N x C`` log of the mean softmax over each image's V views (float64).

    Example:
        >>> average_views(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), 1).argmax(1).tolist()
        [0, 0]
        >>> [round(p, 6) for p in average_views(torch.log(torch.tensor([[0.2, 0.8], [0.6, 0.4]])), 2).exp()[0].tolist()]
        [0.4, 0.6]
    """
    if logits.shape[0] % views:
        raise ConfigError(f"expected a multiple of {views} rows of logits, got {logits.shape[0]}")
    probs = logits.double().softmax(1).reshape(-1, views, logits.shape[1]).mean(1)
    return probs.clamp_min(1e-300).log()


def tta_logits(model: nn.Module, dataset: Any, *, mode: str, batch_size: int = 32, workers: int = 0,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, float]:
    """(``N x C`` averaged log-probabilities, seconds) for a dataset whose items are ``(views, label)``.

    The dataset's transform must be :func:`tta_transform` of the same ``mode``.
    """
    views = TTA_VIEWS[check_tta(mode)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(1, batch_size // views), num_workers=workers)
    model = model.eval().to(device)
    out = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            if x.ndim != 5 or x.shape[1] != views:
                raise ConfigError(f"--tta {mode}: expected batches of {views} views per image, got {tuple(x.shape)}")
            out.append(average_views(model(x.flatten(0, 1).to(device)).cpu(), views))
    return torch.cat(out), time.perf_counter() - t0
