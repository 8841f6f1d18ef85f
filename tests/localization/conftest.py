"""Fixtures for the localization tests: a tiny synthetic Oxford-IIIT Pet layout with VOC head boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
BREEDS = ("Abyssinian", "Bengal", "beagle")
COLOURS = ((220, 40, 40), (40, 200, 60), (40, 60, 220))


def voc_xml(name: str, width: int, height: int, boxes: list[tuple[float, float, float, float]]) -> str:
    objects = "".join(
        f"<object><name>head</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for b in boxes)
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")


def make_pets(root: Path, *, per_breed: int = 10, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """``images/`` with a coloured square per image (the "head"), ``annotations/`` lists and ``xmls/``.

    Every image is in trainval and has a box except the last of each breed (no XML).
    """
    rng = np.random.default_rng(seed)
    images, ann, xmls = root / "images", root / "annotations", root / "annotations" / "xmls"
    for d in (images, xmls):
        d.mkdir(parents=True, exist_ok=True)
    lines = []
    w, h = size
    for b, breed in enumerate(BREEDS):
        for i in range(1, per_breed + 1):
            name = f"{breed}_{i}"
            arr = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            side = int(rng.integers(12, 24))
            x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
            arr[y0:y0 + side, x0:x0 + side] = COLOURS[b]
            Image.fromarray(arr).save(images / f"{name}.jpg", quality=95)
            if i < per_breed:
                (xmls / f"{name}.xml").write_text(voc_xml(name, w, h, [(x0, y0, x0 + side, y0 + side)]))
            lines.append(f"{name} {b + 1} {1 if b < 2 else 2} {b + 1}")
    (ann / "list.txt").write_text("\n".join(lines) + "\n")
    (ann / "trainval.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def _isolated_scan_cache(offline_cache: Path) -> Path:
    """Every localization test gets its own $TRANSFERLAB_CACHE (tests/conftest.py's ``offline_cache``)."""
    return offline_cache


@pytest.fixture
def tiny_pets(tmp_path: Path) -> Path:
    return make_pets(tmp_path / "pets")


@pytest.fixture
def oxford_pets() -> Path:
    """The real ../shared/datasets/oxford-pets-3, or skip saying it is absent."""
    path = SHARED_DATASETS / "oxford-pets-3"
    if not (path / "annotations" / "xmls").is_dir():
        pytest.skip(f"real dataset oxford-pets-3 with annotations/xmls not found at {path} (integration data absent)")
    return path
