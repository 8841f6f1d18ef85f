"""Image transforms (torchvision.transforms.v2): eval, training presets, batch MixUp/CutMix."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from transferlab.data.geometry import interpolation_mode
from transferlab.data.norm import NormStats
from transferlab.errors import ConfigError
from transferlab.zoo.preprocessing import Preprocessing

__all__ = [
    "AUGMENT_PRESETS",
    "BATCH_AUGMENTATIONS",
    "TRAIN_ZOOM_SCALE",
    "EvalTransform",
    "PerImageStandardize",
    "batch_augmentation",
    "build_transform",
]

#: Per-image training augmentations. Every preset but "none" starts with RandomResizedCrop + flip.
AUGMENT_PRESETS: tuple[str, ...] = ("none", "basic", "randaugment", "trivialaugment", "augmix")
#: Batch-level augmentations (mixing images and labels).
BATCH_AUGMENTATIONS: tuple[str, ...] = ("none", "mixup", "cutmix", "mixup-cutmix")
#: Area range of RandomResizedCrop: a mild zoom, suited to small datasets and pretrained features.
TRAIN_ZOOM_SCALE: tuple[float, float] = (0.6, 1.0)


class PerImageStandardize(torch.nn.Module):
    """Standardise each channel of one image by its own mean and std (kind ``"sample"``).

    The std is floored at ``1/sqrt(H*W)`` (as ``tf.image.per_image_standardization``) so a flat
    channel maps to 0 instead of dividing by zero.

    Example:
        >>> y = PerImageStandardize()(torch.rand(3, 8, 8))
        >>> bool(y.mean(dim=(1, 2)).abs().max() < 1e-5)
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
        floor = 1.0 / math.sqrt(x.shape[-1] * x.shape[-2])
        return (x - mean) / std.clamp_min(floor)


def _normalise(norm: NormStats) -> Callable[[torch.Tensor], torch.Tensor]:
    if not isinstance(norm, NormStats):
        raise ConfigError(f"norm: expected a NormStats, got {type(norm).__name__}")
    if norm.kind == "sample":
        return PerImageStandardize()
    return v2.Normalize(mean=list(norm.mean), std=list(norm.std))


class EvalTransform:
    """The eval recipe on uint8 pixels: ``PIL.Image`` -> resize the shorter side -> centre crop -> [0, 1] -> normalise.

    The same steps as ``eval_geometry`` + normalisation, but the resize runs on the uint8 tensor
    (torch's SIMD antialiased bilinear/bicubic kernel, built to reproduce Pillow's) instead of on the
    PIL image: 3-4x less CPU per image for bicubic, and a contiguous float32 CxHxW result. Its pixels
    equal Pillow's but for rounding (within 2/255 on 0.3 % of the pixels of flowers17 photos;
    ``tests/data/test_data_norm_transforms.py`` pins the bound). ``nearest`` keeps Pillow's kernel
    (torch's nearest samples other pixels).

    Example:
        >>> pp = Preprocessing(32, 40, (0.5,) * 3, (0.25,) * 3, "bicubic")
        >>> EvalTransform(pp, norm=NormStats("pretrained", pp.mean, pp.std))(Image.new("RGB", (80, 60))).shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, preprocessing: Preprocessing, *, norm: NormStats) -> None:
        self.normalise = _normalise(norm)
        self.resize_size = preprocessing.resize_size
        self.input_size = preprocessing.input_size
        self.interpolation = interpolation_mode(preprocessing)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"EvalTransform: expected a PIL.Image, got {type(image).__name__}")
        if self.interpolation == v2.InterpolationMode.NEAREST:
            image = TF.resize(image, [self.resize_size], interpolation=self.interpolation)
        x = TF.pil_to_tensor(image)  # CxHxW view of the HxWxC pixels: the channels-last layout the kernel wants
        x = TF.resize(x, [self.resize_size], interpolation=self.interpolation, antialias=True)
        x = TF.center_crop(x, [self.input_size])
        x = TF.to_dtype(x.contiguous(), torch.float32, scale=True)
        return self.normalise(x)

    def __repr__(self) -> str:
        return (f"EvalTransform(resize={self.resize_size}, crop={self.input_size}, "
                f"interpolation={self.interpolation.value}, normalise={self.normalise!r})")


def build_transform(
    preprocessing: Preprocessing,
    *,
    norm: NormStats,
    train: bool = False,
    augment: str = "none",
) -> Callable[[Image.Image], torch.Tensor]:
    """A callable ``PIL.Image -> float32 CxHxW tensor`` for a backbone's ``preprocessing``.

    Eval (and train with ``augment="none"``): :class:`EvalTransform`, i.e. Resize(resize_size) ->
    CenterCrop(input_size) -> [0, 1] -> normalise by ``norm``. Training presets (``AUGMENT_PRESETS``): ``basic`` =
    RandomResizedCrop(input_size, scale=TRAIN_ZOOM_SCALE) + horizontal flip + RandomRotation(15);
    ``randaugment``, ``trivialaugment``, ``augmix`` = crop + flip followed by that policy.

    Example:
        >>> pp = Preprocessing(32, 36, (0.5,) * 3, (0.25,) * 3)
        >>> t = build_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std), train=True, augment="basic")
        >>> t(Image.new("RGB", (50, 40))).shape
        torch.Size([3, 32, 32])
    """
    if augment not in AUGMENT_PRESETS:
        raise ConfigError(f"augment: expected one of {', '.join(AUGMENT_PRESETS)}, got {augment!r}")
    if not train and augment != "none":
        raise ConfigError(f"augment={augment!r} applies to training transforms only; got train=False")
    normalise = _normalise(norm)
    if augment == "none":
        return EvalTransform(preprocessing, norm=norm)
    interp = interpolation_mode(preprocessing)
    steps: list[Callable] = [
        v2.RandomResizedCrop(preprocessing.input_size, scale=TRAIN_ZOOM_SCALE, interpolation=interp, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if augment == "basic":
        steps.append(v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR))
    elif augment == "randaugment":
        steps.append(v2.RandAugment(interpolation=v2.InterpolationMode.BILINEAR))
    elif augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR))
    else:  # augmix
        steps.append(v2.AugMix(interpolation=v2.InterpolationMode.BILINEAR))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), normalise]
    return v2.Compose(steps)


def batch_augmentation(
    name: str | None, *, num_classes: int, alpha: float = 1.0
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """MixUp/CutMix on a batch: ``(images NCHW, int64 labels N) -> (images, soft labels N x C)``.

    ``name`` is one of ``BATCH_AUGMENTATIONS``; ``"mixup-cutmix"`` picks one of the two per batch.
    Returns None for None or ``"none"``.

    Example:
        >>> mix = batch_augmentation("mixup", num_classes=3)
        >>> x, y = mix(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
        >>> y.shape, bool(torch.allclose(y.sum(1), torch.ones(4)))
        (torch.Size([4, 3]), True)
    """
    if name is None or name == "none":
        return None
    if name not in BATCH_AUGMENTATIONS:
        raise ConfigError(f"batch augmentation: expected one of {', '.join(BATCH_AUGMENTATIONS)}, got {name!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes: expected an integer >= 2 for {name}, got {num_classes!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha: expected a positive number for {name}, got {alpha!r}")
    mixup = v2.MixUp(alpha=float(alpha), num_classes=num_classes)
    cutmix = v2.CutMix(alpha=float(alpha), num_classes=num_classes)
    if name == "mixup":
        return mixup
    if name == "cutmix":
        return cutmix
    return v2.RandomChoice([mixup, cutmix])
