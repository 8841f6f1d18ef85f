"""A PNG grid of augmented training samples, to see what a preset does before training."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch

from transferlab.data.atomic import atomic_write_bytes
from transferlab.data.layouts import open_dataset
from transferlab.data.norm import NormStats
from transferlab.data.source import ImageSource
from transferlab.data.splits import make_split
from transferlab.data.transforms import AUGMENT_PRESETS, BATCH_AUGMENTATIONS, batch_augmentation, build_transform
from transferlab.errors import ConfigError
from transferlab.zoo.preprocessing import Preprocessing

__all__ = ["DEFAULT_PREVIEW_PREPROCESSING", "PREVIEW_PRESETS", "augment_preview"]

#: 224 crop of a 256 resize, ImageNet mean/std, bilinear.
DEFAULT_PREVIEW_PREPROCESSING = Preprocessing(
    input_size=224, resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
)
#: Per-image presets and batch augmentations (MixUp/CutMix mix the rows of each column).
PREVIEW_PRESETS: tuple[str, ...] = AUGMENT_PRESETS + tuple(b for b in BATCH_AUGMENTATIONS if b != "none")
_MAX_TILES = 256
_TILE_INCHES = 2.0
_DPI = 100


def augment_preview(
    data: str | os.PathLike[str],
    *,
    preset: str,
    out: str | Path,
    n: int = 16,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
) -> Path:
    """Write a PNG grid of ``n`` augmented training samples; the first column holds the originals.

    Training images are the train part of ``make_split(source)`` (default fractions, or the
    layout's own split). Each row is one of them (classes cycled, seeded), shown through the eval transform, then
    augmented ``ceil(sqrt(n))`` times with ``preset`` (any of ``PREVIEW_PRESETS``), de-normalised
    for display, titled with class names (mixing weights for MixUp/CutMix). Written atomically.

    Example:
        >>> augment_preview("data/flowers", preset="randaugment", out="aug.png")  # doctest: +SKIP
        PosixPath('aug.png')
    """
    if preset not in PREVIEW_PRESETS:
        raise ConfigError(f"preset: expected one of {', '.join(PREVIEW_PRESETS)}, got {preset!r}")
    if not isinstance(n, int) or not 1 <= n <= _MAX_TILES:
        raise ConfigError(f"n: expected an integer in 1..{_MAX_TILES}, got {n!r}")
    out_path = Path(out)
    if out_path.suffix.lower() != ".png":
        raise ConfigError(f"out: expected a .png file name, got {out_path}")
    pp = preprocessing if preprocessing is not None else DEFAULT_PREVIEW_PREPROCESSING
    source = open_dataset(data)
    train = make_split(source, seed=0).train
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    rng = np.random.default_rng(seed)
    picks = _pick_rows(source, train, rows, rng)
    tiles = _render_tiles(source, picks, preset=preset, pp=pp, n=n, cols=cols, seed=seed)
    png = _grid_png(tiles, rows=rows, cols=cols + 1, title=f"{source.name}: augment={preset} (seed {seed})")
    return atomic_write_bytes(out_path, png)


def _pick_rows(source: ImageSource, train: np.ndarray, rows: int, rng: np.random.Generator) -> list[int]:
    """One training image per row, cycling through the classes in a seeded order."""
    labels = source.labels[train]
    present = np.unique(labels)
    order = rng.permutation(present)
    pools = {int(c): list(rng.permutation(train[labels == c])) for c in present}
    picks = []
    for r in range(rows):
        c = int(order[r % len(order)])
        if not pools[c]:
            pools[c] = list(rng.permutation(train[labels == c]))
        picks.append(int(pools[c].pop()))
    return picks


def _render_tiles(
    source: ImageSource, picks: list[int], *, preset: str, pp: Preprocessing, n: int, cols: int, seed: int
) -> dict[tuple[int, int], tuple[torch.Tensor, str]]:
    """(row, col) -> (display image CxHxW in [0, 1], title); column 0 is the original."""
    norm = NormStats("pretrained", pp.mean, pp.std)
    eval_t = build_transform(pp, norm=norm)
    per_image = preset in AUGMENT_PRESETS
    train_t = build_transform(pp, norm=norm, train=True, augment=preset if per_image else "none")
    mix = None if per_image else batch_augmentation(preset, num_classes=len(source.classes))
    images = [source.load(i, draft_size=pp.resize_size) for i in picks]
    names = [source.classes[source.labels[i]] for i in picks]
    tiles: dict[tuple[int, int], tuple[torch.Tensor, str]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for r, (img, name) in enumerate(zip(images, names)):
            tiles[(r, 0)] = (eval_t(img), f"{name}\n(original)")
        for c in range(1, cols + 1):
            active = [r for r in range(len(picks)) if r * cols + c <= n]
            if not active:
                continue
            batch = torch.stack([train_t(images[r]) for r in active])
            if mix is None:
                for r, x in zip(active, batch):
                    tiles[(r, c)] = (x, names[r])
                continue
            labels = torch.as_tensor([int(source.labels[picks[r]]) for r in active], dtype=torch.int64)
            mixed, soft = mix(batch, labels)
            for r, x, y in zip(active, mixed, soft):
                tiles[(r, c)] = (x, _mix_title(y, source.classes))
    mean = torch.tensor(pp.mean).view(3, 1, 1)
    std = torch.tensor(pp.std).view(3, 1, 1)
    return {k: ((x * std + mean).clamp(0, 1), t) for k, (x, t) in tiles.items()}


def _mix_title(soft: torch.Tensor, classes: list[str]) -> str:
    weights, idx = torch.topk(soft, k=min(2, soft.numel()))
    parts = [f"{w:.2f} {classes[int(i)]}" for w, i in zip(weights.tolist(), idx.tolist()) if w > 0.005]
    return "\n".join(parts)


def _grid_png(tiles: dict[tuple[int, int], tuple[torch.Tensor, str]], *, rows: int, cols: int, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_TILE_INCHES * cols, (_TILE_INCHES + 0.3) * rows + 0.4), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if (r, c) in tiles:
                x, text = tiles[(r, c)]
                ax.imshow(x.permute(1, 2, 0).numpy())
                ax.set_title(text, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()
