"""torch ``Dataset`` over an :class:`ImageSource` subset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from transferlab.data.source import ImageSource

__all__ = ["FixedViews", "ImageDataset"]


class ImageDataset(Dataset):
    """Items ``indices`` of ``source`` as ``(transform(image), label)`` pairs.

    ``draft_size`` (usually the preprocessing's resize size) lets large JPEGs decode at a reduced
    scale. A file that no longer decodes raises :class:`ImageDecodeError` naming it.

    Example:
        >>> ds = ImageDataset(src, split.train, build_transform(pp, norm=stats),
        ...                   draft_size=pp.resize_size)  # doctest: +SKIP
        >>> x, y = ds[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        source: ImageSource,
        indices: Sequence[int] | np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        draft_size: int | None = None,
    ) -> None:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
            raise IndexError(f"ImageDataset: indices must lie in 0..{len(source) - 1} for {source.name}")
        self.source = source
        self.indices = idx
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[k])
        image = self.source.load(i, draft_size=self.draft_size)
        return self.transform(image), int(self.source.labels[i])

    def transformed(self, k: int, transform: Callable[[Image.Image], torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Item ``k`` through another ``transform`` (what :class:`FixedViews` draws its views with)."""
        i = int(self.indices[k])
        return transform(self.source.load(i, draft_size=self.draft_size)), int(self.source.labels[i])

    @property
    def labels(self) -> np.ndarray:
        """Labels of the items, in dataset order (for samplers and class weights)."""
        return self.source.labels[self.indices]


class FixedViews(Dataset):
    """Each item of ``base`` followed by ``views`` seeded augmented copies of it (any task's dataset).

    Item ``k`` is view ``k % (views + 1)`` of item ``k // (views + 1)``: view 0 is ``base``'s own
    (eval) output, view ``v > 0`` is ``base.transformed(item, transform)`` under a seed fixed by
    ``(seed, item, v)``. The views never change, so their frozen-prefix activations can be cached:
    augmentation in feature space at the cost of ``views + 1`` forward passes, once. ``base`` is an
    :class:`ImageDataset` or a task's dataset with the same ``transformed`` method (boxes move with
    the image: :meth:`targets` runs the geometry once to collect them).

    Example:
        >>> ds = FixedViews(ImageDataset(src, split.train, eval_tf), train_tf, views=2)  # doctest: +SKIP
        >>> len(ds) == 3 * len(split.train)  # doctest: +SKIP
        True
    """

    def __init__(self, base: Any, transform: Callable[..., Any], *, views: int, seed: int = 0) -> None:
        if views < 1:
            raise ValueError(f"FixedViews: views must be >= 1, got {views}")
        self.base = base
        self.transform = transform
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base) * (self.views + 1)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, Any]:
        item, view = divmod(int(k), self.views + 1)
        if view == 0:
            return self.base[item]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + item * 101 + view)
            return self.base.transformed(item, self.transform)

    @property
    def labels(self) -> np.ndarray:
        """Labels of the items (each image's label ``views + 1`` times)."""
        return np.repeat(self.base.labels, self.views + 1)

    def targets(self) -> torch.Tensor:
        """The target of every view, in item order (decodes and transforms every view once)."""
        rows = [torch.as_tensor(self[k][1]) for k in range(len(self))]
        return torch.stack(rows) if rows else torch.empty(0)
