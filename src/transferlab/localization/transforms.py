"""Box-aware preprocessing and augmentation (torchvision.transforms.v2 + ``tv_tensors.BoundingBoxes``).

The whole image is resized to ``input_size x input_size`` (no center crop, which could cut the
head off), so a normalised box of the file is also the normalised box of the network input.
Training augmentations move the box with the image: horizontal flip, and a random crop that
keeps the whole box (scale) followed by the same resize.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from transferlab.data import NormStats
from transferlab.data.geometry import interpolation_mode
from transferlab.errors import ConfigError
from transferlab.tasks.paired import PairedTransform, normaliser
from transferlab.zoo import Preprocessing

__all__ = ["BOX_AUGMENTS", "BoxTransform", "RandomCropContaining", "box_transform"]

#: ``none`` keeps frozen-prefix activations cacheable; ``flip``; ``flip-scale`` adds a box-keeping crop.
BOX_AUGMENTS: tuple[str, ...] = ("none", "flip", "flip-scale")


class RandomCropContaining(v2.Transform):
    """Random crop of ``scale`` x the image area (aspect jittered by ``ratio``) that contains every box.

    Needs exactly one ``BoundingBoxes`` among the inputs; the crop is as large as the boxes'
    union at least, so no box is cut.

    Example:
        >>> img = tv_tensors.Image(torch.zeros(3, 40, 60))
        >>> b = tv_tensors.BoundingBoxes([[10, 5, 30, 25]], format="XYXY", canvas_size=(40, 60))
        >>> out_img, out_b = RandomCropContaining(scale=(0.5, 1.0))(img, b)
        >>> bool((out_b[0, 2:] - out_b[0, :2] == 20).all())
        True
    """

    def __init__(self, *, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"RandomCropContaining scale: expected 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"RandomCropContaining ratio: expected 0 < min <= max, got {ratio}")
        self.scale = scale
        self.ratio = ratio

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        boxes = [x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes)]
        if len(boxes) != 1:
            raise ConfigError(f"RandomCropContaining: expected one BoundingBoxes input, got {len(boxes)}")
        b = boxes[0]
        if b.format != tv_tensors.BoundingBoxFormat.XYXY:
            raise ConfigError(f"RandomCropContaining: expected XYXY boxes, got {b.format}")
        h, w = b.canvas_size
        need = b.as_subclass(torch.Tensor).reshape(-1, 4)
        bx0, by0 = float(need[:, 0].min()), float(need[:, 1].min())
        bx1, by1 = float(need[:, 2].max()), float(need[:, 3].max())
        area = float(torch.empty(1).uniform_(self.scale[0], self.scale[1])) * w * h
        log_r = torch.empty(1).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        r = math.exp(float(log_r)) * w / h
        cw = min(w, max(math.ceil(bx1) - math.floor(bx0), round(math.sqrt(area * r))))
        ch = min(h, max(math.ceil(by1) - math.floor(by0), round(math.sqrt(area / r))))
        lo_x, hi_x = max(0, math.ceil(bx1) - cw), min(math.floor(bx0), w - cw)
        lo_y, hi_y = max(0, math.ceil(by1) - ch), min(math.floor(by0), h - ch)
        left = int(torch.randint(lo_x, max(lo_x, hi_x) + 1, (1,)))
        top = int(torch.randint(lo_y, max(lo_y, hi_y) + 1, (1,)))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.crop(inpt, **params)


class BoxTransform(PairedTransform):
    """``(PIL image, normalised box (4,)) -> (float32 CxSxS tensor, normalised box (4,))``.

    The box is ``(xmin, ymin, xmax, ymax)`` divided by the image's ``(W, H, W, H)`` on the way in
    and by the output size on the way out, clipped to [0, 1].

    Example:
        >>> pp = Preprocessing(32, 36, (0.5,) * 3, (0.5,) * 3)
        >>> t = box_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std), augment="none")
        >>> x, b = t(Image.new("RGB", (64, 48)), torch.tensor([0.25, 0.5, 0.75, 1.0]))
        >>> tuple(x.shape), b.tolist()
        ((3, 32, 32), [0.25, 0.5, 0.75, 1.0])
    """

    def wrap(self, image: Image.Image, target: torch.Tensor) -> tv_tensors.BoundingBoxes:
        w, h = image.size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        return tv_tensors.BoundingBoxes(torch.as_tensor(target, dtype=torch.float32).reshape(1, 4) * scale,
                                        format="XYXY", canvas_size=(h, w))

    def unwrap(self, moved: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (moved[0] / self.size).clamp(0.0, 1.0)


def box_transform(preprocessing: Preprocessing, *, norm: NormStats, augment: str = "none",
                  scale: tuple[float, float] = (0.5, 1.0)) -> BoxTransform:
    """The eval (``augment="none"``) or training transform of a localization model.

    ``flip``: horizontal flip with probability 0.5. ``flip-scale``: a crop of ``scale`` x the area
    that keeps the whole box, then the flip.

    Example:
        >>> pp = Preprocessing(32, 36, (0.5,) * 3, (0.5,) * 3)
        >>> box_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std), augment="flip").size
        32
    """
    if augment not in BOX_AUGMENTS:
        raise ConfigError(f"--augment must be one of {', '.join(BOX_AUGMENTS)}, got {augment!r}")
    size = preprocessing.input_size
    steps: list[Callable[..., Any]] = []
    if augment == "flip-scale":
        steps.append(RandomCropContaining(scale=scale))
    steps.append(v2.Resize((size, size), interpolation=interpolation_mode(preprocessing), antialias=True))
    if augment in ("flip", "flip-scale"):
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    return BoxTransform(steps, size=size, normalise=normaliser(norm))
