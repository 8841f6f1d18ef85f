"""PASCAL VOC XML bounding boxes, and the head boxes of the Oxford-IIIT Pet layout.

A box is ``(xmin, ymin, xmax, ymax)`` in pixels of the image file. Boxes are clipped to the
image and validated (``xmin < xmax``, ``ymin < ymax`` after clipping); an XML file that cannot be
used (not XML, missing fields, no object, a box with no area) is reported by name and skipped.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.data import ImageSource
from transferlab.errors import DataError

__all__ = ["BoxSet", "VocAnnotation", "clip_box", "find_voc", "load_source_boxes", "read_voc", "xml_dir_of"]

log = logging.getLogger("transferlab")

BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VocAnnotation:
    """One VOC file: the image size it declares and its boxes (pixels, as written in the file).

    Example:
        >>> VocAnnotation(filename="a.jpg", width=60, height=40, boxes=((1.0, 2.0, 30.0, 20.0),)).largest()
        (1.0, 2.0, 30.0, 20.0)
    """

    filename: str
    width: int | None
    height: int | None
    boxes: tuple[tuple[float, float, float, float], ...]

    def largest(self) -> tuple[float, float, float, float]:
        """The box with the largest area (an image may hold several pets' heads)."""
        return max(self.boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


def _number(node: ET.Element, tag: str, path: Path) -> float:
    text = node.findtext(tag)
    if text is None or not text.strip():
        raise DataError(f"{path}: missing <{tag}>; expected a number")
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: <{tag}> must be a number, got {text.strip()!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: <{tag}> must be finite, got {text.strip()!r}")
    return value


def read_voc(path: str | os.PathLike[str]) -> VocAnnotation:
    """Parse a PASCAL VOC annotation; raises :class:`DataError` naming the file when it is unusable.

    Example:
        >>> ann = read_voc("annotations/xmls/Abyssinian_1.xml")  # doctest: +SKIP
        >>> ann.boxes  # doctest: +SKIP
        ((333.0, 72.0, 425.0, 158.0),)
    """
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{p}: not well-formed XML ({exc})") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if root.tag != "annotation":
        raise DataError(f"{p}: expected a PASCAL VOC <annotation> root, got <{root.tag}>")
    size = root.find("size")
    width = height = None
    if size is not None:
        width, height = int(_number(size, "width", p)), int(_number(size, "height", p))
        if width < 1 or height < 1:
            raise DataError(f"{p}: <size> must be positive, got {width}x{height}")
    boxes = []
    for obj in root.findall("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{p}: an <object> has no <bndbox>")
        boxes.append(tuple(_number(bnd, k, p) for k in BOX_FIELDS))
    if not boxes:
        raise DataError(f"{p}: no <object><bndbox>; expected at least one box")
    return VocAnnotation(filename=root.findtext("filename") or "", width=width, height=height,
                         boxes=tuple(boxes))  # type: ignore[arg-type]


def clip_box(box: tuple[float, float, float, float], *, width: int, height: int,
             where: str = "box") -> tuple[float, float, float, float]:
    """Clip ``box`` to a ``width`` x ``height`` image; raise :class:`DataError` if no area is left.

    VOC coordinates are 1-based pixel indices; the box is used as-is (continuous coordinates) and
    only clipped to ``[0, width] x [0, height]``.

    Example:
        >>> clip_box((-5, 10, 70, 30), width=60, height=40)
        (0.0, 10.0, 60.0, 30.0)
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = float(width), float(height)
    c = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
    if not (c[0] < c[2] and c[1] < c[3]):
        raise DataError(f"{where}: box {tuple(box)} has no area inside the {width}x{height} image; "
                        "expected xmin < xmax and ymin < ymax")
    return c


@dataclass
class BoxSet:
    """The items of a source that have a usable box, with boxes normalised to [0, 1] of the image.

    Attributes:
        indices: int64 indices into the source, sorted.
        boxes: float32 (N, 4) ``(xmin, ymin, xmax, ymax) / (W, H, W, H)`` of the image file.
        sizes: int64 (N, 2) ``(width, height)`` of the image files.
        without_box: how many candidate items had no XML file.
        skipped: ``(xml path, reason)`` of XML files that could not be used.
        clipped: XML paths whose box reached outside the image and was clipped.
        multiple: XML paths with several boxes (the largest is used).
    """

    indices: np.ndarray
    boxes: np.ndarray
    sizes: np.ndarray
    without_box: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)
    multiple: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.indices.size)

    def box_of(self, index: int) -> np.ndarray:
        """Normalised box of source item ``index`` (KeyError if it has none)."""
        pos = np.searchsorted(self.indices, index)
        if pos >= self.indices.size or self.indices[pos] != index:
            raise KeyError(index)
        return self.boxes[pos]

    def summary(self) -> dict[str, object]:
        return {"with_box": len(self), "without_box": self.without_box, "skipped_xml": len(self.skipped),
                "clipped": len(self.clipped), "multiple_boxes": len(self.multiple),
                "skipped": [list(s) for s in self.skipped]}


def xml_dir_of(source: ImageSource) -> Path:
    """``annotations/xmls`` of an Oxford-IIIT Pet layout (DataError for other layouts)."""
    if source.layout != "oxford-pets":
        raise DataError(f"{source.root}: localization reads the Oxford-IIIT Pet layout (images/ + annotations/"
                        f"xmls/), got a {source.layout!r} dataset")
    d = Path(source.root) / "annotations" / "xmls"
    if not d.is_dir():
        raise DataError(f"{d}: not found; expected the PASCAL VOC head boxes annotations/xmls/NAME.xml")
    return d


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, upright (EXIF orientation applied), read from its header."""
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_source_boxes(source: ImageSource, *, xml_dir: str | os.PathLike[str] | None = None,
                      candidates: np.ndarray | None = None) -> BoxSet:
    """Boxes for the items of ``source`` that have ``xml_dir/STEM.xml`` (default: the pets layout's).

    ``candidates`` (default: the layout's ``trainval`` items, else all) are the items considered;
    those without an XML file are counted, unusable XML files are listed with the reason and
    skipped, boxes outside the image are clipped. The counts are logged.

    Example:
        >>> boxes = load_source_boxes(open_dataset("../shared/datasets/oxford-pets-3"))  # doctest: +SKIP
        >>> len(boxes), boxes.without_box  # doctest: +SKIP
        (296, 4)
    """
    folder = Path(xml_dir) if xml_dir is not None else xml_dir_of(source)
    if candidates is None:
        given = source.given_split or {}
        candidates = given["trainval"] if "trainval" in given else np.arange(len(source), dtype=np.int64)
    keep, boxes, sizes = [], [], []
    out = BoxSet(indices=np.empty(0, np.int64), boxes=np.empty((0, 4), np.float32), sizes=np.empty((0, 2), np.int64))
    for i in np.asarray(candidates, dtype=np.int64):
        ident = source.identity(int(i))
        xml = folder / f"{Path(ident).stem}.xml"
        if not xml.is_file():
            out.without_box += 1
            continue
        try:
            ann = read_voc(xml)
            w, h = image_size(ident)
            if ann.width is not None and (ann.width, ann.height) != (w, h):
                raise DataError(f"{xml}: <size> {ann.width}x{ann.height} differs from the image {w}x{h}")
            if len(ann.boxes) > 1:
                out.multiple.append(str(xml))
            raw = ann.largest()
            box = clip_box(raw, width=w, height=h, where=str(xml))
        except DataError as exc:
            out.skipped.append((str(xml), str(exc)))
            log.warning("skipped %s", exc)
            continue
        if box != tuple(float(v) for v in raw):
            out.clipped.append(str(xml))
        keep.append(int(i))
        boxes.append((box[0] / w, box[1] / h, box[2] / w, box[3] / h))
        sizes.append((w, h))
    order = np.argsort(np.asarray(keep, dtype=np.int64), kind="stable")
    out.indices = np.asarray(keep, dtype=np.int64)[order]
    out.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order]
    out.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)[order]
    log.info("%s: %d images with a head box, %d without a box (not used), %d XML skipped, %d boxes clipped",
             source.name, len(out), out.without_box, len(out.skipped), len(out.clipped))
    return out


def find_voc(image: str | os.PathLike[str]) -> Path | None:
    """The VOC file of an image if there is one: ``../annotations/xmls/STEM.xml`` (pets layout) or ``STEM.xml``."""
    p = Path(image)
    for cand in (p.parent.parent / "annotations" / "xmls" / f"{p.stem}.xml", p.with_suffix(".xml")):
        if cand.is_file():
            return cand
    return None
