"""Pictures of a localization run: images with predicted (red) and true (green) boxes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

__all__ = ["PRED_COLOUR", "TRUE_COLOUR", "Tile", "draw_boxes", "png_bytes", "prediction_grid"]

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
