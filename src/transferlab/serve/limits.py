"""Request limits of the prediction server and the JSON errors it answers with."""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from transferlab.data.images import DecodeLimits, ImageDecodeError, decode_image, image_size
from transferlab.errors import ConfigError

__all__ = ["ACCEPTED_PART_TYPES", "ERRORS", "ApiError", "ServeLimits", "decode_request", "decode_upload"]

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
    "bad_parameter": (400, "a query parameter is unknown or has an invalid value"),
    "not_found": (404, "no such route or report file"),
    "method_not_allowed": (405, "wrong HTTP method for the route"),
    "timeout": (408, "the request body did not arrive within timeout_s"),
    "too_large": (413, "the request body is larger than max_upload_bytes"),
    "too_many_pixels": (413, "an image has more than max_pixels pixels (width x height), or the request's images "
                             "together decode to more than max_request_pixels"),
    "unsupported_media_type": (415, "the request is not multipart/form-data, or a part is not image/* "
                                    "or application/octet-stream"),
    "not_an_image": (422, "a file cannot be decoded as an image (not an image, truncated, corrupt)"),
    "extreme_aspect_ratio": (422, "an image more elongated than the aspect-ratio bound, or so elongated that "
                                  "resizing its shorter side would exceed max_pixels"),
    "bad_request": (400, "malformed HTTP (answered by the HTTP layer, e.g. a negative Content-Length)"),
    "internal": (500, "a bug in the server (please report it); the server keeps serving"),
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
    max_request_pixels: int = 64_000_000

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "max_concurrency", "max_request_pixels"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"{name}: expected an integer >= 1, got {v!r}")
        if self.max_request_pixels < self.max_pixels:
            raise ConfigError(f"max_request_pixels ({self.max_request_pixels}) must be >= max_pixels ({self.max_pixels})")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"timeout_s: expected a positive number of seconds, got {self.timeout_s!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_KIND_TO_CODE = {"too_many_pixels": "too_many_pixels", "extreme_aspect_ratio": "extreme_aspect_ratio"}


def _api_error(exc: ImageDecodeError) -> ApiError:
    return ApiError(_KIND_TO_CODE.get(exc.kind, "not_an_image"), str(exc))


def decode_upload(data: bytes, *, name: str, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode uploaded bytes with :func:`transferlab.data.images.decode_image` (the one decoder).

    The size is read from the header and checked before any pixel is decoded (``max_pixels``,
    the aspect-ratio bound, and with ``draft_size`` the size after resizing the shorter side).
    Raises :class:`ApiError` (``too_many_pixels``, ``extreme_aspect_ratio`` or ``not_an_image``),
    nothing else.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "PNG")
        >>> decode_upload(buf.getvalue(), name="a.png", max_pixels=100).size
        (4, 3)
    """
    try:
        return decode_image(data, name=name, draft_size=draft_size, limits=DecodeLimits(max_pixels=max_pixels))
    except ImageDecodeError as exc:
        raise _api_error(exc) from None


def decode_request(uploads: list[tuple[str, bytes]], *, limits: ServeLimits,
                   draft_size: int | None = None) -> list[Image.Image]:
    """Decode every upload of one request within the request's decoded-pixel budget.

    All headers are read first and the pixels each image will decode to (after a JPEG's draft
    reduction) are summed; over ``limits.max_request_pixels`` the request is refused
    (``too_many_pixels``) before any image is decoded.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (10, 10)).save(buf, "PNG")
        >>> decode_request([("a.png", buf.getvalue())] * 2, limits=ServeLimits(max_pixels=100, max_request_pixels=150))
        Traceback (most recent call last):
        ...
        transferlab.serve.limits.ApiError: the request's 2 images decode to 200 pixels, over the per-request budget of 150
    """
    decode_limits = DecodeLimits(max_pixels=limits.max_pixels)
    total = 0
    for name, data in uploads:
        try:
            w, h = image_size(data, name=name, draft_size=draft_size, limits=decode_limits)
        except ImageDecodeError as exc:
            raise _api_error(exc) from None
        total += w * h
    if total > limits.max_request_pixels:
        raise ApiError("too_many_pixels", f"the request's {len(uploads)} images decode to {total} pixels, over the "
                                          f"per-request budget of {limits.max_request_pixels}")
    return [decode_upload(data, name=name, max_pixels=limits.max_pixels, draft_size=draft_size)
            for name, data in uploads]
