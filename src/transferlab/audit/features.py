"""Pooled pretrained embeddings of a dataset, one forward pass, through the project's feature cache.

The activations come from :class:`~transferlab.engine.ActivationStore` with the same disk keys as
``transferlab train`` (backbone + weights sha256 + preprocessing + normalisation + boundary + the
identity, size and mtime of every image of a split), so an ``audit`` warms the cache for a later
``train --strategy linear-probe`` or ``feature-extraction`` on the same split, and the other way round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from transferlab.data import ImageDataset, ImageSource, NormStats, Split, build_transform, compute_norm_stats
from transferlab.engine import ActivationStore, SplitInputs, init_distributed
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone

log = logging.getLogger("transferlab")
SPLIT_ORDER = ("train", "val", "test")


@dataclass
class Embedder:
    """A pretrained featurizer with its store: ``embed(name, source, indices)`` gives pooled rows.

    Example:
        >>> e = Embedder.create("efficientnet_lite0", source=src, norm_indices=split.train)  # doctest: +SKIP
        >>> e.embed("train", src, split.train).shape  # doctest: +SKIP
        (680, 1280)
    """

    model: TransferModel
    store: ActivationStore
    norm: NormStats

    @classmethod
    def create(cls, backbone: str, *, source: ImageSource, norm_indices: np.ndarray, weights: str | None = None,
               cache: FeatureCache | None = None, device: str = "auto", batch_size: int = 64, workers: int = 0,
               progress: bool = False, cut: int | None = None) -> "Embedder":
        from transferlab.experiments.train import cache_fingerprint

        bb = create_backbone(backbone, pretrained=True, weights=weights)
        if not bb.weights.pretrained:
            raise ConfigError(f"audit needs pretrained weights for {backbone}; none were loaded")
        model = TransferModel(backbone=bb, num_classes=2, head=HeadConfig(), cut=cut)
        norm = compute_norm_stats("pretrained", source=source, indices=norm_indices, preprocessing=model.preprocessing)
        ctx = init_distributed(device)
        store = ActivationStore(model, device=ctx.device, batch_size=max(batch_size, 64), num_workers=workers,
                                progress=progress, disk=cache, fingerprint=cache_fingerprint(bb, norm))
        store.pristine_upto = len(model.stage_names)
        return cls(model=model, store=store, norm=norm)

    @property
    def boundary(self) -> int:
        return len(self.model.stage_names)

    def inputs(self, name: str, source: ImageSource, indices: np.ndarray, *,
               view: Callable[[Image.Image], Image.Image] | None = None, tag: str = "") -> SplitInputs:
        """``indices`` of ``source`` as the engine's split (``view`` alters each image first, ``tag`` keys it)."""
        from transferlab.experiments.train import item_keys

        pre = self.model.preprocessing
        tf = build_transform(pre, norm=self.norm)
        ds: Dataset = ImageDataset(source, indices, tf if view is None else (lambda im: tf(view(im))),
                                   draft_size=pre.resize_size if view is None else None)
        return SplitInputs(name=name, labels=torch.as_tensor(source.labels[indices], dtype=torch.long),
                           eval_dataset=ds, items=[k + tag for k in item_keys(source, indices)])

    def embed_inputs(self, split: SplitInputs) -> np.ndarray:
        acts = self.store.get(split, self.boundary)
        if acts is None:
            raise ConfigError(f"{split.name}: {len(split)} feature maps do not fit the memory budget")
        with torch.inference_mode():
            rows = [self.model.pool(acts[i : i + 256]) for i in range(0, len(acts), 256)]
        return torch.cat(rows).numpy() if rows else np.zeros((0, self.model.in_features), np.float32)

    def embed(self, name: str, source: ImageSource, indices: np.ndarray) -> np.ndarray:
        return self.embed_inputs(self.inputs(name, source, indices))


def embed_split(embedder: Embedder, source: ImageSource, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings, source indices, split name per row) of every item of ``split``, train then val then test."""
    xs, idx, names = [], [], []
    for name in SPLIT_ORDER:
        part = getattr(split, name)
        xs.append(embedder.embed(name, source, part))
        idx.append(part)
        names += [name] * len(part)
    return np.vstack(xs).astype(np.float32), np.concatenate(idx).astype(np.int64), np.asarray(names)
