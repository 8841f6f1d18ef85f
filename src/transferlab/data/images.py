"""Robust image decoding to 8-bit RGB with Pillow."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from transferlab.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "MAX_ASPECT_RATIO", "DecodeLimits", "ImageDecodeError", "decode_image", "image_size",
           "is_image_file", "load_image", "to_rgb"]

#: File extensions treated as images (lower case). Anything else in a dataset folder is ignored.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".ppm", ".pgm", ".pbm",
     ".pnm", ".tif", ".tiff", ".webp"}
)

_JPEG_FORMATS = ("JPEG", "MPO")
#: Default budget of decoded pixels per image: Pillow's decompression-bomb warning threshold (~89M).
DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


class ImageDecodeError(DataError):
    """An image file could not be decoded; ``str()`` is ``"PATH: reason"``.

    It survives torch DataLoader workers: re-raised from a worker's traceback text, it recovers
    the path and reason from the text's last line.

    Example:
        >>> str(ImageDecodeError("/data/a.jpg", "image file is truncated"))
        '/data/a.jpg: image file is truncated'
    """

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None, *, kind: str = "corrupt") -> None:
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
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> Any:
        return (_rebuild_decode_error, (self.path, self.reason, self.kind))


def _rebuild_decode_error(path: str, reason: str, kind: str) -> ImageDecodeError:
    return ImageDecodeError(path, reason, kind=kind)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image extension (case-insensitive).

    Example:
        >>> is_image_file("a/B.JPG"), is_image_file("a/b.mat")
        (True, False)
    """
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


#: The longer side of an image may be at most this many times its shorter side (a 1 x 20000 strip is
#: refused: resizing its shorter side to the model's input would make billions of pixels).
MAX_ASPECT_RATIO = 25.0


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost before any pixel is decoded.

    ``max_pixels`` bounds width x height of what is actually decoded (after a JPEG's draft
    reduction) and, with a ``draft_size``, of the image once its shorter side is resized to it;
    ``max_aspect_ratio`` bounds longer side / shorter side.

    Example:
        >>> DecodeLimits().max_aspect_ratio
        25.0
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = MAX_ASPECT_RATIO

    def __post_init__(self) -> None:
        if not (isinstance(self.max_pixels, int) and self.max_pixels >= 1):
            raise ValueError(f"max_pixels must be an integer >= 1, got {self.max_pixels!r}")
        if not (isinstance(self.max_aspect_ratio, (int, float)) and self.max_aspect_ratio >= 1):
            raise ValueError(f"max_aspect_ratio must be a number >= 1, got {self.max_aspect_ratio!r}")


def load_image(path: str | os.PathLike[str], *, draft_size: int | None = None,
               limits: DecodeLimits | None = None) -> Image.Image:
    """Decode an image file to an upright 8-bit RGB ``PIL.Image`` (see :func:`decode_image`).

    Example:
        >>> img = load_image("photo.jpg", draft_size=256)  # doctest: +SKIP
        >>> img.mode, min(img.size) >= 256  # doctest: +SKIP
        ('RGB', True)
    """
    return decode_image(path, draft_size=draft_size, limits=limits)


def image_size(source: str | os.PathLike[str] | bytes, *, draft_size: int | None = None,
               name: str | None = None, limits: DecodeLimits | None = None) -> tuple[int, int]:
    """(width, height) that :func:`decode_image` would decode, read from the header only.

    Checks the same limits (raises :class:`ImageDecodeError`); a server sums these sizes over a
    request before decoding any of its images.

    Example:
        >>> import io; buf = io.BytesIO(); Image.new("RGB", (640, 480)).save(buf, "JPEG")
        >>> image_size(buf.getvalue(), draft_size=100)
        (160, 120)
    """
    with _opened(source, name=name) as (label, im):
        _plan(im, label, draft_size=draft_size, limits=limits or DecodeLimits())
        return im.size


def decode_image(source: str | os.PathLike[str] | bytes, *, draft_size: int | None = None,
                 name: str | None = None, limits: DecodeLimits | None = None) -> Image.Image:
    """Decode a file (path) or upload (bytes) to an upright 8-bit RGB ``PIL.Image``: the one decoder.

    Every path (train, predict, evaluate, serve, audit) decodes here. The size is read from the
    header and the limits are checked before any pixel is decoded: more than ``max_pixels`` pixels
    (``kind="too_many_pixels"``), an aspect ratio beyond ``max_aspect_ratio``, or, with
    ``draft_size``, a resize of the shorter side to ``draft_size`` that would exceed ``max_pixels``
    (``kind="extreme_aspect_ratio"``). With ``draft_size`` a JPEG is decoded at a reduced scale
    whose shorter side is still ``>= draft_size`` (Pillow's ``draft``) and the pixel budget applies
    to that reduced size. EXIF orientation is applied; palette, grayscale, CMYK, 16-bit and alpha
    images are converted (alpha composited on white); multi-frame files give their first frame.
    Truncated, corrupt and non-image files raise :class:`ImageDecodeError` (``kind`` says which).

    Example:
        >>> import io; buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "PNG")
        >>> decode_image(buf.getvalue(), name="a.png").size
        (4, 3)
        >>> decode_image(b"GIF89a-not-really", name="x.gif")
        Traceback (most recent call last):
        ...
        transferlab.data.images.ImageDecodeError: x.gif: not an image Pillow can identify
    """
    if draft_size is not None and (not isinstance(draft_size, int) or draft_size < 1):
        raise ValueError(f"draft_size must be a positive int or None, got {draft_size!r}")
    with _opened(source, name=name) as (label, im):
        _plan(im, label, draft_size=draft_size, limits=limits or DecodeLimits())
        try:
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb = to_rgb(upright)
            rgb.load()
        except MemoryError:
            raise
        except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, ValueError, EOFError...
            raise ImageDecodeError(label, f"{type(exc).__name__}: {exc}", kind="corrupt") from None
        return rgb


@contextlib.contextmanager
def _opened(source: str | os.PathLike[str] | bytes, *, name: str | None) -> Iterator[tuple[str, Image.Image]]:
    """Open (header only) with every Pillow failure turned into :class:`ImageDecodeError`."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, fp = name or "<bytes>", io.BytesIO(bytes(source))
    else:
        label = name or os.fspath(source)
        fp = os.fspath(source)
    try:
        im = Image.open(fp)
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found", kind="not_found") from None
    except IsADirectoryError:
        raise ImageDecodeError(label, "a folder, not an image file", kind="not_an_image") from None
    except PermissionError:
        raise ImageDecodeError(label, "permission denied (make the file readable)", kind="unreadable") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not an image Pillow can identify", kind="not_an_image") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"decompression bomb: {exc}", kind="too_many_pixels") from None
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(label, f"{type(exc).__name__}: {exc}", kind="corrupt") from None
    with im:
        yield label, im


def _plan(im: Image.Image, label: str, *, draft_size: int | None, limits: DecodeLimits) -> None:
    """Check the header's size against ``limits`` and set a JPEG's draft scale; decodes nothing."""
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageDecodeError(label, f"{w}x{h} image has no pixels", kind="corrupt")
    bomb = Image.MAX_IMAGE_PIXELS
    if bomb is not None and w * h > bomb:
        raise ImageDecodeError(label, f"decompression bomb: {w}x{h} = {w * h} pixels exceeds "
                                      f"Image.MAX_IMAGE_PIXELS ({bomb})", kind="too_many_pixels")
    ratio = max(w, h) / min(w, h)
    if ratio > limits.max_aspect_ratio:
        raise ImageDecodeError(label, f"extreme aspect ratio: {w}x{h} is {ratio:.3g}:1, the limit is "
                                      f"{limits.max_aspect_ratio:g}:1 (crop the image)", kind="extreme_aspect_ratio")
    if draft_size is not None:
        resized = draft_size * draft_size * ratio
        if resized > limits.max_pixels:
            raise ImageDecodeError(label, f"extreme aspect ratio: {w}x{h} would become {resized:.3g} pixels when its "
                                          f"shorter side is resized to {draft_size} (limit {limits.max_pixels})",
                                   kind="extreme_aspect_ratio")
        if im.format in _JPEG_FORMATS:
            try:
                im.draft("RGB", (draft_size, draft_size))
            except Exception as exc:
                raise ImageDecodeError(label, f"{type(exc).__name__}: {exc}", kind="corrupt") from None
    dw, dh = im.size
    if dw * dh > limits.max_pixels:
        raise ImageDecodeError(label, f"too many pixels: {dw}x{dh} = {dw * dh} pixels exceeds the limit of "
                                      f"{limits.max_pixels}", kind="too_many_pixels")


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

    Symlinked folders are followed, but each real folder is walked once: a link back to an
    ancestor (``ln -s . loop``) or a second link to a folder already walked is not entered.

    Example:
        >>> images, others = image_files_under(Path("data/cat"))  # doctest: +SKIP
    """
    images: list[Path] = []
    others: list[Path] = []
    visited = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        hidden_dirs = [d for d in dirnames if d.startswith(".")]
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in visited:
                visited.add(real)
                keep.append(d)
        dirnames[:] = keep
        others.extend(Path(dirpath, d) for d in hidden_dirs)
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if name.startswith(".") or not is_image_file(name):
                others.append(p)
            else:
                images.append(p)
    return sorted(images), sorted(others)
