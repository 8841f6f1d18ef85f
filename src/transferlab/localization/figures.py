"""Pictures of a localization run: images with predicted (red) and true (green) boxes, learning curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from transferlab.report.figures import PHASE_COLOURS, phase_spans  # noqa: E402

__all__ = ["PRED_COLOUR", "TRUE_COLOUR", "Tile", "draw_boxes", "localization_curves", "png_bytes", "prediction_grid"]

PRED_COLOUR = (230, 30, 30)
TRUE_COLOUR = (20, 200, 40)


@dataclass
class Tile:
    """One image to draw: pixel boxes ``(xmin, ymin, xmax, ymax)`` of ``image``, and a caption."""

    image: Image.Image
    pred: Sequence[float] | None
    true: Sequence[float] | None
    caption: str = ""


def draw_boxes(tile: Tile, *, size: int = 200) -> Image.Image:
    """The image scaled to fit ``size`` x ``size``, true box in green, predicted in red, caption below.

    Example:
        >>> t = Tile(Image.new("RGB", (100, 50)), pred=(10, 10, 50, 40), true=(12, 8, 48, 40), caption="IoU 0.9")
        >>> draw_boxes(t, size=100).size
        (100, 118)
    """
    img = tile.image.convert("RGB")
    s = size / max(img.size)
    w, h = max(1, round(img.width * s)), max(1, round(img.height * s))
    small = img.resize((w, h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size + 18), (255, 255, 255))
    ox, oy = (size - w) // 2, (size - h) // 2
    canvas.paste(small, (ox, oy))
    draw = ImageDraw.Draw(canvas)
    width = max(2, size // 100)
    for box, colour in ((tile.true, TRUE_COLOUR), (tile.pred, PRED_COLOUR)):
        if box is not None:
            x0, y0, x1, y1 = (float(v) * s for v in box)
            draw.rectangle([ox + min(x0, x1), oy + min(y0, y1), ox + max(x0, x1), oy + max(y0, y1)],
                           outline=colour, width=width)
    if tile.caption:
        draw.text((3, size + 3), tile.caption, fill=(0, 0, 0))
    return canvas


def prediction_grid(tiles: Sequence[Tile], *, cols: int = 6, size: int = 200) -> Image.Image:
    """Tiles from :func:`draw_boxes` in rows of ``cols``.

    Example:
        >>> prediction_grid([Tile(Image.new("RGB", (10, 10)), None, None)] * 3, cols=2, size=50).size
        (100, 136)
    """
    if not tiles:
        raise ValueError("prediction_grid: no images to draw")
    drawn = [draw_boxes(t, size=size) for t in tiles]
    cols = min(cols, len(drawn))
    rows = (len(drawn) + cols - 1) // cols
    th = drawn[0].height
    grid = Image.new("RGB", (cols * size, rows * th), (255, 255, 255))
    for k, d in enumerate(drawn):
        grid.paste(d, ((k % cols) * size, (k // cols) * th))
    return grid


def png_bytes(image: Image.Image | Figure) -> bytes:
    """A PIL image or a matplotlib figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    if isinstance(image, Figure):
        image.savefig(buf, format="png", dpi=100)
        plt.close(image)
    else:
        image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def localization_curves(history: list[dict[str, Any]], *, title: str = "") -> Figure:
    """Loss and mean IoU per epoch (train solid, val dashed), phases shaded.

    The engine's history keeps the task's score under ``train_accuracy`` / ``val_accuracy``; for
    localization that score is the mean IoU.

    Example:
        >>> fig = localization_curves([{"epoch": 0, "phase": "head", "train_loss": 1.0, "val_loss": 0.9,
        ...                             "train_accuracy": 0.5, "val_accuracy": 0.6}])
        >>> len(fig.axes)
        2
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    ep = [h["epoch"] + 1 for h in history]
    for ax, (key, label) in zip(axes, (("loss", "loss"), ("accuracy", "mean IoU"))):
        for i, (name, a, b) in enumerate(phase_spans(history)):
            ax.axvspan(a + 0.5, b + 1.5, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], zorder=0)
            ax.text((a + b) / 2 + 1, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="#555")
        ax.plot(ep, [h[f"train_{key}"] for h in history], "-o", ms=3, label=f"train {label}")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "--s", ms=3, label=f"val {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    fig.tight_layout()
    return fig
