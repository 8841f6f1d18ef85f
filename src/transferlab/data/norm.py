"""Input normalisation statistics: pretrained, dataset, min-max or per-image ("sample")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from transferlab.data.source import ImageSource
from transferlab.data.geometry import eval_geometry
from transferlab.errors import ConfigError, DataError
from transferlab.zoo.preprocessing import Preprocessing

__all__ = ["NORM_KINDS", "NormStats", "compute_norm_stats"]

#: pretrained: the weights' mean/std; dataset: mean/std of the training images; minmax: maps the
#: training images' per-channel range to [0, 1]; sample: each image standardised by its own stats.
NORM_KINDS: tuple[str, ...] = ("pretrained", "dataset", "minmax", "sample")

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class NormStats:
    """Per-channel ``(x - mean) / std`` applied after scaling pixels to [0, 1].

    For kind ``"sample"`` the stored mean/std are 0/1 and each image is standardised by its
    own per-channel statistics instead.

    Example:
        >>> n = NormStats("minmax", (0.1, 0.0, 0.2), (0.8, 1.0, 0.5))
        >>> NormStats.from_dict(n.to_dict()) == n
        True
    """

    kind: str
    mean: Triple
    std: Triple

    def __post_init__(self) -> None:
        if self.kind not in NORM_KINDS:
            raise ConfigError(f"norm: expected one of {', '.join(NORM_KINDS)}, got {self.kind!r}")
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"norm {self.kind}: expected 3 means and 3 stds, got {self.mean!r} / {self.std!r}")
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ConfigError(f"norm {self.kind}: expected finite means and positive stds, got {mean} / {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NormStats":
        return cls(kind=str(d["kind"]), mean=tuple(d["mean"]), std=tuple(d["std"]))  # type: ignore[arg-type]


def compute_norm_stats(
    kind: str,
    *,
    source: ImageSource,
    indices: Sequence[int] | np.ndarray,
    preprocessing: Preprocessing,
    max_images: int = 2000,
    seed: int = 0,
) -> NormStats:
    """Normalisation statistics of ``kind`` from the (training) ``indices`` of ``source``.

    ``dataset`` and ``minmax`` look at images through the eval resize/center-crop, at most
    ``max_images`` of them (a seeded sample); ``pretrained`` copies ``preprocessing.mean/std``;
    ``sample`` stores 0/1 (standardisation happens per image in the transform).

    Example:
        >>> stats = compute_norm_stats("dataset", source=src, indices=split.train,
        ...                            preprocessing=pp)  # doctest: +SKIP
        >>> stats.kind  # doctest: +SKIP
        'dataset'
    """
    if kind not in NORM_KINDS:
        raise ConfigError(f"norm: expected one of {', '.join(NORM_KINDS)}, got {kind!r}")
    if kind == "pretrained":
        return NormStats("pretrained", preprocessing.mean, preprocessing.std)
    if kind == "sample":
        return NormStats("sample", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise DataError(f"{source.name}: norm {kind} needs training images, got no indices")
    if max_images < 1:
        raise ConfigError(f"max_images: expected a positive integer, got {max_images!r}")
    if idx.size > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_images, replace=False))
    geometry = eval_geometry(preprocessing)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    n_pixels = 0
    for i in idx:
        x = geometry(source.load(int(i), draft_size=preprocessing.resize_size))
        flat = x.reshape(3, -1).to(torch.float64).numpy()
        total += flat.sum(axis=1)
        total_sq += np.square(flat).sum(axis=1)
        lo = np.minimum(lo, flat.min(axis=1))
        hi = np.maximum(hi, flat.max(axis=1))
        n_pixels += flat.shape[1]
    if kind == "dataset":
        mean = total / n_pixels
        std = np.sqrt(np.maximum(total_sq / n_pixels - mean**2, 0.0))
        _require_spread(std, source, kind, idx.size)
        return NormStats("dataset", tuple(mean.tolist()), tuple(std.tolist()))  # type: ignore[arg-type]
    _require_spread(hi - lo, source, kind, idx.size)
    return NormStats("minmax", tuple(lo.tolist()), tuple((hi - lo).tolist()))  # type: ignore[arg-type]


def _require_spread(spread: np.ndarray, source: ImageSource, kind: str, n: int) -> None:
    flat = np.flatnonzero(spread <= 1e-12)
    if flat.size:
        channel = "RGB"[flat[0]]
        raise DataError(
            f"{source.name}: norm {kind}: channel {channel} is constant over {n} training images; "
            "expected some variation (use norm kind pretrained or sample)"
        )
