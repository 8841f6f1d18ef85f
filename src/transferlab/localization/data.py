"""torch ``Dataset`` of (image, box + class) for the items of a source that have a box."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from transferlab.data import ImageSource
from transferlab.localization.transforms import BoxTransform
from transferlab.localization.voc import BoxSet

__all__ = ["BoxDataset", "targets_of"]


def targets_of(source: ImageSource, boxes: BoxSet, indices: np.ndarray) -> torch.Tensor:
    """``N x 5`` float targets (normalised box of the file, class index) for source ``indices``.

    Example:
        >>> targets_of(src, boxes, split.test).shape  # doctest: +SKIP
        torch.Size([60, 5])
    """
    rows = [np.append(boxes.box_of(int(i)), float(source.labels[int(i)])) for i in indices]
    return torch.as_tensor(np.asarray(rows, dtype=np.float32).reshape(-1, 5))


class BoxDataset(Dataset):
    """Items ``indices`` of ``source`` as ``(image tensor, target (5,))`` through a :class:`BoxTransform`.

    With an augmenting transform the target's box is the box moved with the image.

    Example:
        >>> ds = BoxDataset(src, boxes, split.train, box_transform(pp, norm=stats))  # doctest: +SKIP
        >>> x, t = ds[0]  # doctest: +SKIP
    """

    def __init__(self, source: ImageSource, boxes: BoxSet, indices: np.ndarray, transform: BoxTransform, *,
                 draft_size: int | None = None) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.targets = targets_of(source, boxes, self.indices)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transformed(k, self.transform)

    def transformed(self, k: int, transform: BoxTransform) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``k`` through another box transform (``data.FixedViews`` draws its views with it)."""
        image = self.source.load(int(self.indices[k]), draft_size=self.draft_size)
        x, box = transform(image, self.targets[k, :4])
        return x, torch.cat([box, self.targets[k, 4:]])

    @property
    def labels(self) -> np.ndarray:
        """Class index of each item."""
        return self.targets[:, 4].numpy().astype(np.int64)
