"""Tiny synthetic images for the data-layer tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def solid(color: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> Image.Image:
    return Image.new("RGB", size, color)


def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def save_jpeg(path: Path, image: Image.Image, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=95, **kwargs)
    return path


def make_class_folders(root: Path, counts: dict[str, int], *, size: tuple[int, int] = (24, 20)) -> Path:
    """``root/<class>/<i>.jpg`` with a distinct colour per class."""
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            save_jpeg(root / name / f"{i:03d}.jpg", solid((40 * k % 256, 10 * i % 256, 200), size))
    return root


def truncated_jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    noise((256, 256)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) // 2]


def upright_red_over_blue(size: tuple[int, int] = (40, 64)) -> Image.Image:
    """Portrait image: top half red, bottom half blue."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2] = (255, 0, 0)
    arr[h // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


def save_exif_rotated(path: Path, upright: Image.Image, orientation: int) -> Path:
    """Store ``upright`` rotated so that a viewer honouring EXIF ``orientation`` shows it upright."""
    stored = {6: upright.rotate(90, expand=True), 8: upright.rotate(-90, expand=True), 3: upright.rotate(180)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def save_png16(path: Path) -> Path:
    """16-bit gray PNG: left half 65535, right half 128*257."""
    arr = np.full((20, 24), 128 * 257, np.uint16)
    arr[:, :12] = 65535
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "PNG")
    assert Image.open(path).mode.startswith("I")
    return path


def save_rgba_png(path: Path) -> Path:
    """Left half opaque red, right half fully transparent (black underneath)."""
    arr = np.zeros((20, 24, 4), np.uint8)
    arr[:, :12] = (255, 0, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGBA").save(path, "PNG")
    return path


def save_gif(path: Path, *, animated: bool = True) -> Path:
    """A GIF whose first frame is green (second frame blue), written under any name."""
    frames = [Image.new("RGB", (24, 20), (0, 255, 0)), Image.new("RGB", (24, 20), (0, 0, 255))]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [f.convert("P") for f in frames]
    with path.open("wb") as fh:
        if animated:
            frames[0].save(fh, "GIF", save_all=True, append_images=frames[1:])
        else:
            frames[0].save(fh, "GIF")
    return path


def save_cmyk_jpeg(path: Path) -> Path:
    """A CMYK JPEG of pure red (C=0, M=255, Y=255, K=0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (24, 20), (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    return path


def png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (for decompression-bomb checks)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def make_messy_folder(root: Path) -> Path:
    """Two classes with good files of every kind plus broken ones; see test_data_layouts."""
    cats, dogs = root / "cats", root / "dogs"
    save_jpeg(cats / "good.jpg", solid((200, 30, 30)))
    save_cmyk_jpeg(cats / "cmyk.jpg")
    save_png16(cats / "deep16.png")
    save_rgba_png(cats / "alpha.png")
    save_gif(cats / "anim.gif")
    save_exif_rotated(dogs / "rotated.jpg", upright_red_over_blue(), 6)
    save_gif(dogs / "gif_named.jpg")
    save_jpeg(dogs / "good.jpeg", solid((30, 30, 200)))
    (dogs / "truncated.jpg").write_bytes(truncated_jpeg_bytes())
    (dogs / "text.jpg").write_text("this is not an image\n")
    (dogs / "notes.txt").write_text("ignored\n")
    (cats / "labels.mat").write_bytes(b"MATLAB 5.0")
    (cats / ".DS_Store").write_bytes(b"\0\0")
    return root
