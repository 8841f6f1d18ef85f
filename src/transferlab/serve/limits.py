"""Request limits of the prediction server and the JSON errors it answers with."""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from transferlab.data.images import to_rgb
from transferlab.errors import ConfigError

__all__ = ["ACCEPTED_PART_TYPES", "ERRORS", "ApiError", "ServeLimits", "decode_upload"]

#: Content types accepted for an uploaded file part (``application/octet-stream``: decoding decides).
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")

#: Every error the API answers with: code -> (HTTP status, when). Documented in the README and /docs.
ERRORS: dict[str, tuple[int, str]] = {
    "empty_body": (400, "the request has no body"),
    "incomplete_body": (400, "the client closed the connection before the whole body arrived"),
    "bad_multipart": (400, "the body is not valid multipart/form-data"),
    "missing_file": (400, "no file in the form fields 'file' or 'files'"),
    "empty_file": (400, "an uploaded file has 0 bytes"),
    "too_many_files": (400, "more files than the server's max_files"),
    "bad_parameter": (400, "a query parameter has an invalid value"),
    "not_found": (404, "no such route or report file"),
    "method_not_allowed": (405, "wrong HTTP method for the route"),
    "timeout": (408, "the request body did not arrive within timeout_s"),
    "too_large": (413, "the request body is larger than max_upload_bytes"),
    "too_many_pixels": (413, "an image has more than max_pixels pixels (width x height)"),
    "unsupported_media_type": (415, "the request is not multipart/form-data, or a part is not image/* "
                                    "or application/octet-stream"),
    "not_an_image": (422, "a file cannot be decoded as an image (not an image, truncated, corrupt)"),
    "extreme_aspect_ratio": (422, "an image so elongated that resizing its shorter side would exceed max_pixels"),
    "busy": (503, "inference did not finish within timeout_s (server overloaded); retry later"),
}


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": ...}`` with the code's HTTP status.

    Example:
        >>> e = ApiError("too_large", "body exceeds 10 bytes")
        >>> e.status, e.to_dict()
        (413, {'error': 'too_large', 'message': 'body exceeds 10 bytes'})
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in ERRORS:
            raise KeyError(f"unknown API error code {code!r}")
        super().__init__(message)
        self.code = code
        self.status = ERRORS[code][0]
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may send and how long it may take.

    Example:
        >>> ServeLimits(max_upload_bytes=1 << 20).max_files
        16
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 16
    timeout_s: float = 30.0
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "max_concurrency"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"{name}: expected an integer >= 1, got {v!r}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"timeout_s: expected a positive number of seconds, got {self.timeout_s!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_upload(data: bytes, *, name: str, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode uploaded bytes to upright 8-bit RGB like :func:`transferlab.data.load_image`, with a pixel cap.

    The size is read from the header and checked before any pixel is decoded; with ``draft_size``
    (the model's resize size) an image whose resize to that shorter side would exceed ``max_pixels``
    (a 1 x 40000 strip) is refused too. Raises :class:`ApiError` (``too_many_pixels``,
    ``extreme_aspect_ratio`` or ``not_an_image``), nothing else.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "PNG")
        >>> decode_upload(buf.getvalue(), name="a.png", max_pixels=100).size
        (4, 3)
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ApiError("too_many_pixels", f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            if draft_size is not None and min(w, h) >= 1:
                resized = draft_size * draft_size * max(w, h) / min(w, h)
                if resized > max_pixels:
                    raise ApiError("extreme_aspect_ratio",
                                   f"{name}: {w}x{h} would become {resized:.3g} pixels when its shorter side "
                                   f"is resized to {draft_size} (limit {max_pixels})")
            if draft_size is not None and im.format in ("JPEG", "MPO"):
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            rgb = to_rgb(ImageOps.exif_transpose(im))
            rgb.load()
            return rgb
    except ApiError:
        raise
    except UnidentifiedImageError:
        raise ApiError("not_an_image", f"{name}: not an image Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ApiError("too_many_pixels", f"{name}: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise OSError, SyntaxError, ValueError, EOFError...
        raise ApiError("not_an_image", f"{name}: {type(exc).__name__}: {exc}") from None
