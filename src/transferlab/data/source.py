"""``ImageSource``: a dataset as a list of (item, label), independent of torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from transferlab.data.images import load_image
from transferlab.errors import DataError

__all__ = ["ImageSource"]


class ImageSource:
    """A labelled image dataset: files on disk or an in-memory uint8 array.

    Built by :func:`transferlab.data.open_dataset`, or directly with :meth:`from_files` /
    :meth:`from_arrays` (handy for tests). Item ``i`` has label ``labels[i]`` (an index into
    ``classes``) and a stable :meth:`identity`.

    Attributes:
        name: short dataset name (folder or file stem).
        root: the path (or name) it was opened from, as given.
        layout: how it was read ("imagefolder", "split-folders", "oxford-pets", "idx", "csv", ...).
        classes: class names; ``labels`` index into it.
        labels: int64 array, one label per item.
        given_split: the layout's own split as sorted index arrays (e.g. ``{"trainval", "test"}``) or None.
        skipped: (identity, reason) for files found but unusable (not decodable, missing).
        ignored: non-image files that were passed over.

    Example:
        >>> src = ImageSource.from_arrays(np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1],
        ...                               classes=["a", "b"], name="toy")
        >>> len(src), src.identity(3), src.load(0).mode
        (4, 'toy:3', 'RGB')
    """

    def __init__(
        self,
        *,
        name: str,
        root: str,
        layout: str,
        classes: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        paths: Sequence[str] | None = None,
        pixels: np.ndarray | None = None,
        identities: Sequence[str] | None = None,
        given_split: dict[str, np.ndarray] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
        ignored: Sequence[str] = (),
        scan_stats: dict[str, int] | None = None,
    ) -> None:
        if (paths is None) == (pixels is None):
            raise ValueError("ImageSource needs exactly one of paths= or pixels=")
        self.name = name
        self.root = root
        self.layout = layout
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        n = len(self.labels)
        self._paths: list[str] | None = None
        self._pixels: np.ndarray | None = None
        if paths is not None:
            if len(paths) != n:
                raise ValueError(f"ImageSource {name}: {len(paths)} paths for {n} labels")
            self._paths = [os.path.abspath(p) for p in paths]
            self._ids = self._paths
        else:
            assert pixels is not None
            if pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or (pixels.ndim == 4 and pixels.shape[3] != 3):
                raise ValueError(
                    f"ImageSource {name}: pixels must be uint8 (N,H,W) or (N,H,W,3), "
                    f"got {pixels.dtype} {pixels.shape}"
                )
            if len(pixels) != n:
                raise ValueError(f"ImageSource {name}: {len(pixels)} images for {n} labels")
            self._pixels = pixels
            self._ids = list(identities) if identities is not None else [f"{name}:{i}" for i in range(n)]
            if len(self._ids) != n:
                raise ValueError(f"ImageSource {name}: {len(self._ids)} identities for {n} images")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"ImageSource {name}: labels must lie in 0..{len(self.classes) - 1}, "
                f"got {self.labels.min()}..{self.labels.max()}"
            )
        self.given_split = _check_given_split(given_split, n, name)
        self.skipped: list[tuple[str, str]] = list(skipped)
        self.ignored: list[str] = list(ignored)
        self.scan_stats: dict[str, int] = dict(scan_stats or {"decoded": 0, "cached": 0})
        self._index: dict[str, int] | None = None

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        labels: Sequence[int] | np.ndarray,
        *,
        classes: Sequence[str],
        name: str,
        root: str | None = None,
        given_split: dict[str, np.ndarray] | None = None,
    ) -> "ImageSource":
        """A source over image files (not validated here; see :func:`open_dataset` for that).

        Example:
            >>> src = ImageSource.from_files(["a.jpg", "b.jpg"], [0, 1], classes=["x", "y"], name="two")
            >>> src.identity(0).endswith("a.jpg")
            True
        """
        return cls(
            name=name, root=root if root is not None else name, layout="files", classes=classes,
            labels=labels, paths=[os.fspath(p) for p in paths], given_split=given_split,
        )

    @classmethod
    def from_arrays(
        cls,
        pixels: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        *,
        classes: Sequence[str],
        name: str,
        identities: Sequence[str] | None = None,
        given_split: dict[str, np.ndarray] | None = None,
    ) -> "ImageSource":
        """A source over a uint8 array of gray (N,H,W) or RGB (N,H,W,3) images.

        Identities default to ``"NAME:i"``.

        Example:
            >>> ImageSource.from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, 1],
            ...                         classes=["a", "b"], name="z").identity(1)
            'z:1'
        """
        return cls(
            name=name, root=name, layout="arrays", classes=classes, labels=labels, pixels=pixels,
            identities=identities, given_split=given_split,
        )

    # -- items ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ImageSource(name={self.name!r}, layout={self.layout!r}, n={len(self)}, "
            f"classes={len(self.classes)}, skipped={len(self.skipped)}, ignored={len(self.ignored)})"
        )

    @property
    def in_memory(self) -> bool:
        """True for array-backed sources (no files)."""
        return self._pixels is not None

    def identity(self, i: int) -> str:
        """Stable id of item ``i``: the absolute path of a file, or e.g. ``"fashion-mnist:train:123"``."""
        return self._ids[i]

    def index_of(self, identity: str) -> int:
        """Inverse of :meth:`identity`; raises KeyError when the identity is not in the source."""
        if self._index is None:
            self._index = {ident: i for i, ident in enumerate(self._ids)}
        return self._index[identity]

    def file_stat(self, i: int) -> tuple[int, float] | None:
        """(size in bytes, mtime) of item ``i``'s file now, or None for in-memory items."""
        if self._paths is None:
            return None
        st = os.stat(self._paths[i])
        return st.st_size, st.st_mtime

    def load(self, i: int, *, draft_size: int | None = None) -> Image.Image:
        """Item ``i`` as an RGB ``PIL.Image`` (see :func:`load_image`; ``draft_size`` speeds JPEGs)."""
        if self._paths is not None:
            return load_image(self._paths[i], draft_size=draft_size)
        assert self._pixels is not None
        arr = self._pixels[i]
        return Image.fromarray(arr).convert("RGB") if arr.ndim == 2 else Image.fromarray(arr, "RGB")

    def subset_labels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Labels of the items at ``indices`` (int64)."""
        return self.labels[np.asarray(indices, dtype=np.int64)]

    def class_counts(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Number of items per class (over ``indices`` when given), as an int64 array."""
        labels = self.labels if indices is None else self.subset_labels(indices)
        return np.bincount(labels, minlength=len(self.classes)).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """Counts for reports and the CLI.

        Example:
            >>> src = ImageSource.from_arrays(np.zeros((3, 2, 2), np.uint8), [0, 1, 1],
            ...                               classes=["a", "b"], name="t")
            >>> src.summary()["per_class"]
            {'a': 1, 'b': 2}
        """
        counts = self.class_counts()
        return {
            "name": self.name,
            "root": self.root,
            "layout": self.layout,
            "n_images": len(self),
            "n_classes": len(self.classes),
            "per_class": {c: int(k) for c, k in zip(self.classes, counts)},
            "n_skipped": len(self.skipped),
            "n_ignored": len(self.ignored),
            "given_split": (
                None if self.given_split is None else {k: len(v) for k, v in self.given_split.items()}
            ),
            "validation": dict(self.scan_stats),
        }

    def describe(self) -> str:
        """The summary as one line, e.g. ``"flowers17: 1360 images, 17 classes, 0 skipped, 0 ignored"``."""
        s = self.summary()
        given = "" if s["given_split"] is None else " (given split " + ", ".join(
            f"{k} {v}" for k, v in s["given_split"].items()) + ")"
        return (
            f"{self.name}: {s['n_images']} images, {s['n_classes']} classes, "
            f"{s['n_skipped']} skipped, {s['n_ignored']} ignored{given}"
        )


def _check_given_split(
    given: dict[str, np.ndarray] | None, n: int, name: str
) -> dict[str, np.ndarray] | None:
    if given is None:
        return None
    out: dict[str, np.ndarray] = {}
    for key, idx in given.items():
        arr = np.unique(np.asarray(idx, dtype=np.int64))
        if arr.size and (arr[0] < 0 or arr[-1] >= n):
            raise DataError(f"{name}: given split {key!r} has indices outside 0..{n - 1}")
        out[key] = arr
    return out
