"""A folder of unlabelled images as an :class:`ImageSource` (one placeholder class)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from transferlab.data import IMAGE_EXTENSIONS, ImageSource
from transferlab.errors import DataError

UNLABELED = "<unlabeled>"


def open_unlabeled(folder: str | os.PathLike[str]) -> ImageSource:
    """Every image file under ``folder`` (recursively, sorted), labelled with a placeholder class.

    Example:
        >>> open_unlabeled("unlabelled/").describe()  # doctest: +SKIP
        'unlabelled: 680 images, 1 classes, 0 skipped, 0 ignored'
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--unlabeled {folder}: expected a folder of images, got {'a file' if root.exists() else 'nothing'}")
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"--unlabeled {folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in it")
    return ImageSource.from_files(paths, np.zeros(len(paths), np.int64), classes=[UNLABELED], name=root.name,
                                  root=str(folder))


def overlapping(unlabeled: ImageSource, source: ImageSource, indices: np.ndarray) -> list[str]:
    """Unlabelled files that are (after resolving links) files of ``source`` at ``indices``."""
    if source.in_memory:
        return []
    held = {os.path.realpath(source.identity(int(i))) for i in indices}
    return [unlabeled.identity(i) for i in range(len(unlabeled)) if os.path.realpath(unlabeled.identity(i)) in held]
