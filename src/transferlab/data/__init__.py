"""Data layer: open datasets in common layouts, split them, normalise, transform, preview.

Example:
    >>> from transferlab.data import open_dataset, make_split  # doctest: +SKIP
    >>> src = open_dataset("../shared/datasets/flowers17")  # doctest: +SKIP
    >>> split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)  # doctest: +SKIP
"""

from transferlab.data.atomic import atomic_write_bytes, atomic_write_text
from transferlab.data.dataset import FixedViews, ImageDataset
from transferlab.data.images import IMAGE_EXTENSIONS, ImageDecodeError, load_image
from transferlab.data.layouts import open_dataset
from transferlab.data.norm import NORM_KINDS, NormStats, compute_norm_stats
from transferlab.data.preview import augment_preview
from transferlab.data.scan import scan_cache_dir
from transferlab.data.source import ImageSource
from transferlab.data.splits import Split, load_split, make_split, parse_fractions, save_split
from transferlab.data.transforms import (
    AUGMENT_PRESETS,
    BATCH_AUGMENTATIONS,
    batch_augmentation,
    build_transform,
)

__all__ = [
    "AUGMENT_PRESETS",
    "BATCH_AUGMENTATIONS",
    "IMAGE_EXTENSIONS",
    "FixedViews",
    "NORM_KINDS",
    "ImageDataset",
    "ImageDecodeError",
    "ImageSource",
    "NormStats",
    "Split",
    "atomic_write_bytes",
    "atomic_write_text",
    "augment_preview",
    "batch_augmentation",
    "build_transform",
    "compute_norm_stats",
    "load_image",
    "load_split",
    "make_split",
    "open_dataset",
    "parse_fractions",
    "save_split",
    "scan_cache_dir",
]
