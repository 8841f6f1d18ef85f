"""Fashion-MNIST in IDX format (``*-ubyte`` or ``*-ubyte.gz``), parsed with numpy."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from transferlab.errors import DataError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IDX_FILES", "find_idx_files", "read_idx"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The 10 official class names, in label order.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

#: (split, kind) -> file stem; each file may also carry a ``.gz`` suffix.
IDX_FILES: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

_UBYTE = 0x08


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
    """The IDX files present in ``folder`` (plain or gzipped), keyed like :data:`IDX_FILES`.

    Example:
        >>> sorted(find_idx_files(FASHION_MNIST_DIR))  # doctest: +SKIP
        [('test', 'images'), ('test', 'labels'), ('train', 'images'), ('train', 'labels')]
    """
    found: dict[tuple[str, str], Path] = {}
    for key, stem in IDX_FILES.items():
        for name in (stem, stem + ".gz"):
            p = folder / name
            if p.is_file():
                if key in found:
                    raise DataError(f"{folder}: expected one of {stem} or {stem}.gz, found both")
                found[key] = p
    return found


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes with ``ndim`` dimensions (3 for images, 1 for labels).

    Example:
        >>> read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", ndim=1).shape  # doctest: +SKIP
        (10000,)
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: expected an IDX header of {4 + 4 * ndim} bytes, got a {len(raw)}-byte file")
    zero, dtype_code, dims = raw[0] | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != _UBYTE or dims != ndim:
        raise DataError(
            f"{path}: expected IDX magic 0x0000 08 {ndim:02x} (unsigned bytes, {ndim}-D), "
            f"got {raw[:4].hex(' ')}"
        )
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) + 4 + 4 * ndim
    if len(raw) != expected:
        raise DataError(f"{path}: expected {expected} bytes for shape {shape}, got {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
