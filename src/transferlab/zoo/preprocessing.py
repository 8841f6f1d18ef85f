"""Preprocessing bound to a set of weights (torchvision's ``weights.transforms()`` idea, as data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone's weights.

    Eval path: resize the shorter side to ``resize_size``, center-crop ``input_size``,
    scale to [0, 1], normalise with ``mean``/``std``.

    Example:
        >>> p = Preprocessing(input_size=224, resize_size=256, mean=(0.485, 0.456, 0.406),
        ...                   std=(0.229, 0.224, 0.225), interpolation="bilinear")
        >>> p.crop_pct
        0.875
    """

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.resize_size < self.input_size:
            raise ValueError(
                f"resize_size ({self.resize_size}) must be >= input_size ({self.input_size})"
            )

    @property
    def crop_pct(self) -> float:
        return round(self.input_size / self.resize_size, 3)

    def with_input_size(self, input_size: int) -> "Preprocessing":
        """The same preprocessing at another resolution, keeping the crop fraction."""
        resize = int(round(input_size / (self.input_size / self.resize_size)))
        return Preprocessing(
            input_size=input_size,
            resize_size=max(resize, input_size),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(
            input_size=int(d["input_size"]),
            resize_size=int(d["resize_size"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            interpolation=str(d.get("interpolation", "bilinear")),
        )
