"""The same pretrained featurizer with the softmax head swapped for a box regressor (or class + box)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.options import check_options, opt
from transferlab.strategies.model import POOLS, HeadConfig, TransferModel, head_trunk
from transferlab.zoo import Backbone

__all__ = ["BOX_ACTIVATIONS", "LOC_HEADS", "TRUNKS", "BoxHead", "LocHeadConfig", "LocalizationModel"]

LOC_HEADS: tuple[str, ...] = ("box", "class+box")
BOX_ACTIVATIONS: tuple[str, ...] = ("linear", "sigmoid", "relu")
TRUNKS: tuple[str, ...] = ("linear", "dense")


@dataclass(frozen=True)
class LocHeadConfig:
    """The new head: ``box`` (4 normalised coordinates) or ``class+box`` (+ ``num_classes`` logits).

    ``trunk="dense"`` puts hidden layers (ReLU + dropout) shared by both outputs before them.

    Example:
        >>> LocHeadConfig(kind="class+box", num_classes=3).outputs
        7
    """

    kind: str = opt("box", "the head", choices=LOC_HEADS, flag="--head")
    activation: str = opt("sigmoid", "box output activation", choices=BOX_ACTIVATIONS, flag="--box-activation")
    num_classes: int = 0
    trunk: str = opt("linear", "layers before the outputs", choices=TRUNKS)
    hidden: tuple[int, ...] = field(default_factory=lambda: (256,))
    dropout: float = opt(0.2, "dropout of the dense trunk", lo=0.0, hi=1.0, hi_open=True)
    pool: str = opt("flatten", "feature map -> vector", choices=POOLS)

    def __post_init__(self) -> None:
        check_options(self)  # choices and ranges, one line each (--head: expected one of box, class+box, ...)
        if self.kind == "class+box" and self.num_classes < 2:
            raise ConfigError(f"--head class+box needs at least 2 classes, got {self.num_classes}")
        if self.kind == "box" and self.num_classes != 0:
            raise ConfigError(f"--head box has no class outputs; expected num_classes 0, got {self.num_classes}")
        if self.trunk == "dense" and (not self.hidden or min(self.hidden) < 1):
            raise ConfigError(f"--hidden must list positive widths for --trunk dense, got {self.hidden}")

    @property
    def outputs(self) -> int:
        """Output width: 4 box coordinates, then the class logits."""
        return 4 + self.num_classes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LocHeadConfig":
        known = set(cls.__dataclass_fields__)
        if set(d) - known:
            raise ConfigError(f"model.json head: unknown fields {sorted(set(d) - known)}; expected {sorted(known)}")
        return cls(**{**d, "hidden": tuple(d.get("hidden", (256,)))})


class BoxHead(nn.Module):
    """Features -> [trunk] -> box regressor (+ activation) and, for ``class+box``, a classifier.

    Example:
        >>> head = BoxHead(LocHeadConfig(kind="class+box", num_classes=3), in_features=8)
        >>> head(torch.zeros(2, 8)).shape
        torch.Size([2, 7])
    """

    def __init__(self, cfg: LocHeadConfig, *, in_features: int) -> None:
        super().__init__()
        layers, width = head_trunk(dense=cfg.trunk == "dense", hidden=cfg.hidden, dropout=cfg.dropout,
                                   in_features=in_features)
        self.trunk = nn.Sequential(*layers)
        self.box = nn.Linear(width, 4)
        self.activation: nn.Module = {"linear": nn.Identity(), "sigmoid": nn.Sigmoid(),
                                      "relu": nn.ReLU()}[cfg.activation]
        self.classifier = nn.Linear(width, cfg.num_classes) if cfg.num_classes else None
        with torch.no_grad():  # start at a centred box of half the image, whatever the activation
            self.box.weight.mul_(0.1)
            centre = torch.tensor([0.25, 0.25, 0.75, 0.75])
            self.box.bias.copy_(torch.logit(centre) if cfg.activation == "sigmoid" else centre)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.trunk(features)
        box = self.activation(self.box(z))
        if self.classifier is None:
            return box
        return torch.cat([box, self.classifier(z)], dim=1)


class LocalizationModel(TransferModel):
    """``stages -> pool -> BoxHead``: a :class:`TransferModel` whose head regresses the box.

    ``num_classes`` is the output width the engine sees (4 + class logits); the strategies,
    ``forward_from``/``prefix`` (frozen-prefix caching) and ``modules_of("head")`` are inherited.

    Example:
        >>> bb = create_backbone("mobilenet_v2", pretrained=False)  # doctest: +SKIP
        >>> m = LocalizationModel(backbone=bb, head=LocHeadConfig(pool="avg"), cut=3)  # doctest: +SKIP
        >>> m(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 4])
    """

    def __init__(self, *, backbone: Backbone, head: LocHeadConfig, cut: int | None = None) -> None:
        super().__init__(backbone=backbone, num_classes=2, head=HeadConfig(kind="linear", dropout=0.0, pool=head.pool),
                         cut=cut)
        self.head = BoxHead(head, in_features=self.in_features)
        self.head_config = head  # type: ignore[assignment]
        self.num_classes = head.outputs
