"""torch ``Dataset`` over an :class:`ImageSource` subset."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from transferlab.data.source import ImageSource

__all__ = ["ImageDataset"]


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

    @property
    def labels(self) -> np.ndarray:
        """Labels of the items, in dataset order (for samplers and class weights)."""
        return self.source.labels[self.indices]
