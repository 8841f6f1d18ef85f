"""The model every strategy works on: a featurizer of named, ordered stages plus a classifier."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from transferlab.zoo.preprocessing import Preprocessing


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's parameters came from: ``source`` is e.g. ``package:...`` or ``random``."""

    pretrained: bool
    source: str
    sha256_prefix: str | None = None
    sha256: str | None = None  # full digest of the weights file (keys the feature cache)


class TokenPool(nn.Module):
    """(N, tokens, C) -> (N, C): the class token (``"token"``) or the mean of the patch tokens (``"avg"``).

    Example:
        >>> TokenPool("avg", 1)(torch.ones(2, 5, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(self, kind: str, prefix_tokens: int) -> None:
        super().__init__()
        self.kind = kind
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.kind == "token" else x[:, self.prefix_tokens:].mean(1)


class Backbone(nn.Module):
    """A pretrained network split at the cut between body and head.

    ``featurizer`` is an ``nn.Sequential`` of named stages (stem first, deepest last); each stage
    maps a feature map to a feature map. ``classifier`` maps the last feature map to the source
    task's logits (ImageNet for pretrained entries), pooling included.

    Example:
        >>> from transferlab.zoo import create_backbone
        >>> bb = create_backbone("mobilenet_v2", pretrained=False)
        >>> bb.stage_names[:2], bb.feature_dim
        (['stem', 'stage1'], 1280)
    """

    def __init__(
        self,
        *,
        name: str,
        stages: "OrderedDict[str, nn.Module]",
        classifier: nn.Module,
        feature_dim: int,
        preprocessing: Preprocessing,
        weights: WeightsInfo,
        token_pool: tuple[str, int] | None = None,
    ) -> None:
        super().__init__()
        # transformers: the last stage gives (tokens, channels); pooled by ("token" | "avg", prefix tokens)
        self.token_pool = token_pool
        self.name = name
        self.featurizer = nn.Sequential(stages)
        self.classifier = classifier
        self.feature_dim = feature_dim
        self.preprocessing = preprocessing
        self.weights = weights

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self.featurizer.named_children()]

    @property
    def num_stages(self) -> int:
        return len(self.featurizer)

    def stage(self, name: str) -> nn.Module:
        return self.featurizer.get_submodule(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.featurizer(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features of the last stage, shape (N, feature_dim)."""
        if self.token_pool is not None:
            return TokenPool(*self.token_pool)(self.featurizer(x))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.featurizer(x), 1), 1)

    def stage_shapes(self, *, input_size: int | None = None) -> "OrderedDict[str, tuple[int, ...]]":
        """Output shape (C, H, W) of every stage for one input image, computed with a dry run."""
        size = input_size or self.preprocessing.input_size
        shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            x = torch.zeros(1, 3, size, size)
            for name, stage in self.featurizer.named_children():
                x = stage(x)
                shapes[name] = tuple(x.shape[1:])
        self.train(was_training)
        return shapes
