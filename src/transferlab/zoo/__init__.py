"""Backbone zoo: registry, factory, offline weights, preprocessing bound to weights."""

from transferlab.zoo.backbone import Backbone, WeightsInfo
from transferlab.zoo.preprocessing import Preprocessing
from transferlab.zoo.registry import (
    BackboneEntry,
    check_backbone_name,
    count_parameters,
    create_backbone,
    get_entry,
    imagenet_categories,
    list_backbones,
    register,
    weights_available,
)

__all__ = [
    "Backbone",
    "BackboneEntry",
    "Preprocessing",
    "WeightsInfo",
    "count_parameters",
    "create_backbone",
    "get_entry",
    "imagenet_categories",
    "list_backbones",
    "register",
    "weights_available",
]
