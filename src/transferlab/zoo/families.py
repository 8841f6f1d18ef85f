"""How each architecture family is built and cut into stages + classifier.

A splitter receives the full source model and returns ``(stages, classifier, feature_dim)``.
Stages follow the architecture's own blocks (resolution changes), shallow to deep.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

Split = tuple["OrderedDict[str, nn.Module]", nn.Module, int]


def _pick(seq: nn.Sequential, indices: Sequence[int]) -> nn.Module:
    mods = [seq[i] for i in indices]
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


def _pooled_head(pool: nn.Module, head: nn.Module) -> nn.Module:
    return nn.Sequential(OrderedDict(pool=pool, flatten=nn.Flatten(1), head=head))


def split_by_maxpool(model: nn.Module) -> Split:
    """VGG: one stage per block ending with a max-pool (block1..block5)."""
    features: nn.Sequential = model.features
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    start = 0
    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            stages[f"block{len(stages) + 1}"] = nn.Sequential(*features[start : i + 1])
            start = i + 1
    width = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
    return stages, _pooled_head(model.avgpool, model.classifier), width


def split_alexnet(model: nn.Module) -> Split:
    """AlexNet: conv1, conv2 (each with its pool), conv3, conv4, conv5 (+pool)."""
    f: nn.Sequential = model.features
    stages = OrderedDict(
        conv1=_pick(f, range(0, 3)),
        conv2=_pick(f, range(3, 6)),
        conv3=_pick(f, range(6, 8)),
        conv4=_pick(f, range(8, 10)),
        conv5=_pick(f, range(10, 13)),
    )
    return stages, _pooled_head(model.avgpool, model.classifier), 256


def split_resnet(model: nn.Module) -> Split:
    stages = OrderedDict(
        stem=nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool),
        layer1=model.layer1,
        layer2=model.layer2,
        layer3=model.layer3,
        layer4=model.layer4,
    )
    return stages, _pooled_head(model.avgpool, model.fc), model.fc.in_features


def split_inception_v3(model: nn.Module) -> Split:
    """Inception v3 without its auxiliary head; input is expected normalised with mean=std=0.5."""
    stages = OrderedDict(
        stem=nn.Sequential(model.Conv2d_1a_3x3, model.Conv2d_2a_3x3, model.Conv2d_2b_3x3, model.maxpool1),
        stem2=nn.Sequential(model.Conv2d_3b_1x1, model.Conv2d_4a_3x3, model.maxpool2),
        mixed5=nn.Sequential(model.Mixed_5b, model.Mixed_5c, model.Mixed_5d),
        mixed6=nn.Sequential(model.Mixed_6a, model.Mixed_6b, model.Mixed_6c, model.Mixed_6d, model.Mixed_6e),
        mixed7=nn.Sequential(model.Mixed_7a, model.Mixed_7b, model.Mixed_7c),
    )
    head = nn.Sequential(model.dropout, model.fc)
    return stages, _pooled_head(model.avgpool, head), model.fc.in_features


def _split_features(model: nn.Module, groups: Sequence[tuple[str, Sequence[int]]], width: int) -> Split:
    f: nn.Sequential = model.features
    stages = OrderedDict((name, _pick(f, idx)) for name, idx in groups)
    pool = getattr(model, "avgpool", None) or nn.AdaptiveAvgPool2d(1)  # MobileNetV2 pools functionally
    return stages, _pooled_head(pool, model.classifier), width


def split_mobilenet_v2(model: nn.Module) -> Split:
    groups = [
        ("stem", [0]), ("stage1", [1]), ("stage2", [2, 3]), ("stage3", [4, 5, 6]),
        ("stage4", [7, 8, 9, 10]), ("stage5", [11, 12, 13]), ("stage6", [14, 15, 16]),
        ("stage7", [17]), ("conv_head", [18]),
    ]
    return _split_features(model, groups, model.classifier[-1].in_features)


def split_mobilenet_v3_large(model: nn.Module) -> Split:
    groups = [
        ("stem", [0]), ("stage1", [1]), ("stage2", [2, 3]), ("stage3", [4, 5, 6]),
        ("stage4", [7, 8, 9, 10]), ("stage5", [11, 12]), ("stage6", [13, 14, 15]), ("conv_head", [16]),
    ]
    return _split_features(model, groups, model.classifier[0].in_features)


def split_efficientnet_tv(model: nn.Module) -> Split:
    groups = [("stem", [0])] + [(f"stage{i}", [i]) for i in range(1, 8)] + [("conv_head", [8])]
    return _split_features(model, groups, model.classifier[-1].in_features)


def split_convnext(model: nn.Module) -> Split:
    groups = [("stage1", [0, 1]), ("stage2", [2, 3]), ("stage3", [4, 5]), ("stage4", [6, 7])]
    f: nn.Sequential = model.features
    stages = OrderedDict((name, _pick(f, idx)) for name, idx in groups)
    # ConvNeXt's classifier is LayerNorm2d -> Flatten -> Linear: it wants the pooled 4-D map.
    classifier = nn.Sequential(OrderedDict(pool=model.avgpool, head=model.classifier))
    return stages, classifier, model.classifier[-1].in_features


def split_timm_efficientnet(model: nn.Module) -> Split:
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=nn.Sequential(model.conv_stem, model.bn1))
    for i, block in enumerate(model.blocks):
        stages[f"stage{i + 1}"] = block
    stages["conv_head"] = nn.Sequential(model.conv_head, model.bn2)
    classifier = nn.Sequential(OrderedDict(pool=model.global_pool, head=model.classifier))
    return stages, classifier, model.num_features
