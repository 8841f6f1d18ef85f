"""A small CNN for from-scratch experiments at 28-32 px (the transferability experiment's default).

Five conv stages (conv3x3 -> BatchNorm -> ReLU, max-pool after conv2 and conv3), a
global-average-pool and a linear classifier: 136k parameters, 13 MMAC per 28x28 image, so that
dozens of networks train from scratch on 2 CPU cores in minutes. Random init only (no
pretrained weights exist); stage ``k`` plays the role of Yosinski et al.'s (2014) layer ``k``.

Example:
    >>> from transferlab.zoo import create_backbone
    >>> bb = create_backbone("small_cnn", pretrained=False)
    >>> bb.stage_names, bb.feature_dim
    (['conv1', 'conv2', 'conv3', 'conv4', 'conv5'], 128)
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from transferlab.zoo.families import Split
from transferlab.zoo.preprocessing import Preprocessing

#: Output channels of conv1..conv5.
SMALL_CNN_WIDTHS: tuple[int, ...] = (16, 32, 64, 64, 128)
#: Stages followed by a 2x2 max-pool (28 -> 14 -> 7).
SMALL_CNN_POOL_AFTER: tuple[int, ...] = (2, 3)
#: Outputs of the classifier of the built "source" model (replaced by every transfer model's head).
SMALL_CNN_CLASSES = 10
#: Parameters of :func:`build_small_cnn` (the registry's ``params`` fact; a test checks it).
SMALL_CNN_PARAMS = 135_962
#: Native resolution: Fashion-MNIST/MNIST size; any input >= 4 px works (global pooling).
SMALL_CNN_PREPROCESSING = Preprocessing(
    input_size=28, resize_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
)


def build_small_cnn(for_pretrained: bool = False) -> nn.Module:
    """The whole network: ``features`` (conv1..conv5), ``avgpool``, ``classifier``.

    Example:
        >>> m = build_small_cnn()
        >>> [name for name, _ in m.features.named_children()]
        ['conv1', 'conv2', 'conv3', 'conv4', 'conv5']
    """
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    cin = 3
    for k, cout in enumerate(SMALL_CNN_WIDTHS, start=1):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                   nn.ReLU(inplace=True)]
        if k in SMALL_CNN_POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        stages[f"conv{k}"] = nn.Sequential(*layers)
        cin = cout
    model = nn.Module()
    model.features = nn.Sequential(stages)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Linear(cin, SMALL_CNN_CLASSES)
    return model


def split_small_cnn(model: nn.Module) -> Split:
    """Stages conv1..conv5, classifier = pool -> flatten -> linear."""
    stages = OrderedDict(model.features.named_children())
    classifier = nn.Sequential(OrderedDict(pool=model.avgpool, flatten=nn.Flatten(1), head=model.classifier))
    return stages, classifier, model.classifier.in_features
