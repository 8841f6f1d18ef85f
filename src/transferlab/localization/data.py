"""torch ``Dataset`` of (image, box + class) for the items of a source that have a box."""

from __future__ import annotations

import numpy as np
import torch

from transferlab.data import ImageSource
from transferlab.localization.transforms import BoxTransform
from transferlab.localization.voc import BoxSet
from transferlab.tasks.paired import PairedDataset

__all__ = ["BoxDataset", "targets_of"]


def targets_of(source: ImageSource, boxes: BoxSet, indices: np.ndarray) -> torch.Tensor:
    """``N x 5`` float targets (normalised box of the file, class index) for source ``indices``.

    Example:
        >>> targets_of(src, boxes, split.test).shape  # doctest: +SKIP
        torch.Size([60, 5])
    """
    rows = [np.append(boxes.box_of(int(i)), float(source.labels[int(i)])) for i in indices]
    return torch.as_tensor(np.asarray(rows, dtype=np.float32).reshape(-1, 5))


class BoxDataset(PairedDataset):
    """Items ``indices`` of ``source`` as ``(image tensor, target (5,))`` through a :class:`BoxTransform`.

    With an augmenting transform the target's box is the box moved with the image; :meth:`targets`
    are the boxes of the files (what the eval transform gives), without decoding the images.

    Example:
        >>> ds = BoxDataset(src, boxes, split.train, box_transform(pp, norm=stats))  # doctest: +SKIP
        >>> x, t = ds[0]  # doctest: +SKIP
    """

    def __init__(self, source: ImageSource, boxes: BoxSet, indices: np.ndarray, transform: BoxTransform, *,
                 draft_size: int | None = None) -> None:
        super().__init__(source, indices, transform, draft_size=draft_size)
        self.rows = targets_of(source, boxes, self.indices)

    def target(self, k: int) -> torch.Tensor:
        return self.rows[k, :4]

    def transformed(self, k: int, transform: BoxTransform) -> tuple[torch.Tensor, torch.Tensor]:
        x, box = super().transformed(k, transform)
        return x, torch.cat([box, self.rows[k, 4:]])

    def targets(self) -> torch.Tensor:
        """``N x 5``: the normalised box of each file and its class index."""
        return self.rows

    @property
    def labels(self) -> np.ndarray:
        """Class index of each item."""
        return self.rows[:, 4].numpy().astype(np.int64)
