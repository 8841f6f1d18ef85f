"""A pretrained featurizer (cut at a chosen stage) with a new head for the target classes."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.zoo import Backbone
from transferlab.zoo.backbone import TokenPool

HEADS = ("linear", "dense")
POOLS = ("avg", "flatten")


@dataclass(frozen=True)
class HeadConfig:
    """The new layers: ``linear``, or ``dense`` (hidden layers with ReLU + dropout, then output).

    Example:
        >>> HeadConfig(kind="dense", hidden=(512, 256), dropout=0.3)  # "2 dense layers + output"
        HeadConfig(kind='dense', hidden=(512, 256), dropout=0.3, pool='avg')
    """

    kind: str = "linear"
    hidden: tuple[int, ...] = field(default_factory=lambda: (512,))
    dropout: float = 0.2
    pool: str = "avg"

    def __post_init__(self) -> None:
        if self.kind not in HEADS:
            raise ConfigError(f"--head must be one of {', '.join(HEADS)}, got {self.kind!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"--pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HeadConfig":
        return cls(kind=d["kind"], hidden=tuple(d.get("hidden", ())), dropout=float(d["dropout"]),
                   pool=d["pool"])


def check_cut(cut: int | None, *, stage_names: list[str], backbone: str) -> list[str]:
    """The stages kept by ``--cut`` (all when None); a cut outside ``1..len(stage_names)`` is a one-line error.

    Example:
        >>> check_cut(2, stage_names=["a", "b", "c"], backbone="x")
        ['a', 'b']
    """
    n = len(stage_names)
    if cut is None:
        return list(stage_names)
    if not 1 <= cut <= n:
        raise ConfigError(f"--cut must be between 1 and {n} (stages of {backbone}: {', '.join(stage_names)}), "
                          f"got {cut}")
    return list(stage_names[:cut])


def head_trunk(*, dense: bool, hidden: tuple[int, ...] | list[int], dropout: float,
               in_features: int) -> tuple[list[nn.Module], int]:
    """The layers between pooled features and a head's output layer, and their output width: hidden
    ``Linear -> ReLU -> Dropout`` blocks when ``dense``, else one ``Dropout`` (none at 0).

    Example:
        >>> layers, width = head_trunk(dense=True, hidden=(16,), dropout=0.2, in_features=8)
        >>> len(layers), width
        (3, 16)
    """
    layers: list[nn.Module] = []
    width = in_features
    if dense:
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
    elif dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers, width


def build_head(cfg: HeadConfig, *, in_features: int, num_classes: int) -> nn.Sequential:
    layers, width = head_trunk(dense=cfg.kind == "dense", hidden=cfg.hidden, dropout=cfg.dropout,
                               in_features=in_features)
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


class StagedModel(nn.Module):
    """What the strategies address in a model: its named ``stages`` and its ``head`` (trainable groups)."""

    stages: nn.Sequential
    head: nn.Module

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self.stages.named_children()]

    def modules_of(self, name: str) -> nn.Module:
        """``head`` (the task's head or decoder) or a stage name."""
        if name == "head":
            return self.head
        try:
            return self.stages.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"unknown trainable group {name!r}; expected 'head' or one of {self.stage_names}"
            ) from None


class TransferModel(StagedModel):
    """``stages`` (the kept part of the featurizer) -> ``pool`` -> ``head``.

    ``forward_from(x, start)`` runs from stage ``start`` on, so that the activations entering a
    trainable suffix can be computed once and reused (frozen-prefix caching).

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> bb = create_backbone("mobilenet_v2", pretrained=False)
        >>> m = TransferModel(backbone=bb, num_classes=17, head=HeadConfig(), cut=None)
        >>> m(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 17])
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        head: HeadConfig,
        cut: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {num_classes}")
        cut = len(check_cut(cut, stage_names=backbone.stage_names, backbone=backbone.name))
        shapes = backbone.stage_shapes()
        kept = list(backbone.featurizer.named_children())[:cut]
        self.stages = nn.Sequential(OrderedDict(kept))
        out_shape = shapes[kept[-1][0]]
        if head.pool == "avg" and backbone.token_pool is not None:  # a transformer's (tokens, C)
            self.pool: nn.Module = TokenPool(*backbone.token_pool)
            in_features = out_shape[-1]
        elif head.pool == "avg":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            in_features = out_shape[0]
        else:
            self.pool = nn.Flatten(1)
            in_features = int(torch.tensor(out_shape).prod())
        self.head = build_head(head, in_features=in_features, num_classes=num_classes)
        self.head_config = head
        self.num_classes = num_classes
        self.cut = cut
        self.in_features = in_features
        self.backbone_name = backbone.name
        self.preprocessing = backbone.preprocessing

    def forward_from(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        for stage in list(self.stages)[start:]:
            x = stage(x)
        return self.head(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)

    def prefix(self, x: torch.Tensor, *, start: int, stop: int) -> torch.Tensor:
        """Run stages ``start..stop-1`` (the frozen prefix, or a part of it)."""
        for stage in list(self.stages)[start:stop]:
            x = stage(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled output of the kept featurizer (what the head sees)."""
        return self.pool(self.stages(x))


