"""Robust image decoding to 8-bit RGB with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferlab.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageDecodeError", "load_image", "is_image_file", "to_rgb"]

#: File extensions treated as images (lower case). Anything else in a dataset folder is ignored.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".ppm", ".pgm", ".pbm",
     ".pnm", ".tif", ".tiff", ".webp"}
)

_JPEG_FORMATS = ("JPEG", "MPO")


class ImageDecodeError(DataError):
    """An image file could not be decoded; ``str()`` is ``"PATH: reason"``.

    It survives torch DataLoader workers: re-raised from a worker's traceback text, it recovers
    the path and reason from the text's last line.

    Example:
        >>> str(ImageDecodeError("/data/a.jpg", "image file is truncated"))
        '/data/a.jpg: image file is truncated'
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        if reason is None:
            # torch's DataLoader re-raises a worker's exception as ``type(message)`` where the message
            # is the worker's formatted traceback; its last line is "...ImageDecodeError: PATH: reason".
            lines = [line for line in str(path).splitlines() if line.strip()] or [""]
            last = lines[-1]
            last = last.split("ImageDecodeError: ", 1)[-1]
            path, sep, rest = last.partition(": ")
            reason = rest if sep else "image could not be decoded"
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.reason))


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image extension (case-insensitive).

    Example:
        >>> is_image_file("a/B.JPG"), is_image_file("a/b.mat")
        (True, False)
    """
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike[str], *, draft_size: int | None = None) -> Image.Image:
    """Decode an image file to an upright 8-bit RGB ``PIL.Image``.

    EXIF orientation is applied; palette, grayscale, CMYK, 16-bit and alpha images are converted
    (alpha is composited on white); multi-frame files (GIF, TIFF, WebP) give their first frame (Pillow opens at frame 0).
    With ``draft_size`` a JPEG is decoded at a reduced scale whose shorter side is still
    ``>= draft_size`` (Pillow's ``draft``), which is much faster for large photos. Truncated,
    corrupt, non-image files and decompression bombs (more than ``Image.MAX_IMAGE_PIXELS``
    pixels) raise :class:`ImageDecodeError`.

    Example:
        >>> img = load_image("photo.jpg", draft_size=256)  # doctest: +SKIP
        >>> img.mode, min(img.size) >= 256  # doctest: +SKIP
        ('RGB', True)
    """
    if draft_size is not None and (not isinstance(draft_size, int) or draft_size < 1):
        raise ValueError(f"draft_size must be a positive int or None, got {draft_size!r}")
    fspath = os.fspath(path)
    try:
        with Image.open(fspath) as im:
            _check_pixel_limit(im.size)
            if draft_size is not None and im.format in _JPEG_FORMATS:
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb = to_rgb(upright)
            rgb.load()
            return rgb
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(fspath, "file not found") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(fspath, "not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(fspath, f"decompression bomb: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, ValueError, EOFError...
        raise ImageDecodeError(fspath, f"{type(exc).__name__}: {exc}") from None


def _check_pixel_limit(size: tuple[int, int]) -> None:
    """Treat Pillow's decompression-bomb *warning* threshold as an error as well."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise Image.DecompressionBombError(
            f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels exceeds Image.MAX_IMAGE_PIXELS ({limit})"
        )


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, 16-bit scaled down).

    Example:
        >>> to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0))  # transparent -> white
        (255, 255, 255)
    """
    mode = im.mode
    if mode in ("P", "L", "RGB") and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"  # a transparent palette index or colour key
    if mode == "RGB":
        return im
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(im)
    if mode == "F":
        raise ValueError("32-bit float pixels (mode F) are not supported; save the image as 8- or 16-bit")
    # "1", "L", "CMYK", "YCbCr", "RGBX", "LAB", "HSV": Pillow converts these directly.
    return im.convert("RGB")


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16-bit gray (``I;16*``, or ``I`` holding 0..65535) to 8-bit by ``round(v / 257)``."""
    arr = np.asarray(im).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(
            f"32-bit integer pixels must lie in 0..65535 to be read as 16-bit, got {arr.min()}..{arr.max()}"
        )
    gray8 = ((arr * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(gray8).convert("RGB")


def image_files_under(folder: Path) -> tuple[list[Path], list[Path]]:
    """All files under ``folder`` (recursive, sorted, hidden entries excluded) as (images, others).

    Example:
        >>> images, others = image_files_under(Path("data/cat"))  # doctest: +SKIP
    """
    images: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        hidden_dirs = [d for d in dirnames if d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        others.extend(Path(dirpath, d) for d in hidden_dirs)
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if name.startswith(".") or not is_image_file(name):
                others.append(p)
            else:
                images.append(p)
    return sorted(images), sorted(others)
