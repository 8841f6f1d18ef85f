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
        image = self.source.load(int(self.indices[k]), draft_size=self.draft_size)
        x, box = self.transform(image, self.targets[k, :4])
        return x, torch.cat([box, self.targets[k, 4:]])


class FixedViews(Dataset):
    """``views`` seeded augmented copies of each item of a :class:`BoxDataset`, after the item itself.

    Item ``k`` is view ``k % (views + 1)`` of image ``k // (views + 1)``; view 0 is the dataset's
    own (eval) output, view ``v > 0`` the augmenting ``transform`` under a seed fixed by
    ``(seed, image, v)``. The views never change, so the engine can cache their frozen-prefix
    activations: augmentation at the cost of ``views + 1`` forward passes, once.

    Example:
        >>> ds = FixedViews(BoxDataset(src, boxes, split.train, eval_tf), train_tf, views=3)  # doctest: +SKIP
        >>> len(ds) == 4 * len(split.train)  # doctest: +SKIP
        True
    """

    def __init__(self, base: BoxDataset, transform: BoxTransform, *, views: int, seed: int = 0) -> None:
        if views < 0:
            raise ValueError(f"views: expected >= 0, got {views}")
        self.base = base
        self.transform = transform
        self.views = views
        self.seed = seed
        self.targets = self._targets()

    def _targets(self) -> torch.Tensor:
        """Targets of every view (the augmented boxes), computed by running the geometry once."""
        rows = []
        for k in range(len(self)):
            _, t = self[k]
            rows.append(t)
        return torch.stack(rows) if rows else torch.empty(0, 5)

    def __len__(self) -> int:
        return len(self.base) * (self.views + 1)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        item, view = divmod(int(k), self.views + 1)
        if view == 0:
            return self.base[item]
        image = self.base.source.load(int(self.base.indices[item]), draft_size=self.base.draft_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + item * 101 + view)
            x, box = self.transform(image, self.base.targets[item, :4])
        return x, torch.cat([box, self.base.targets[item, 4:]])
