"""Shared fixtures: tiny synthetic image folders (real-data fixtures live in tests/data/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never try the network for weights, and use their own scan cache.
os.environ.setdefault("TRANSFERLAB_OFFLINE", "1")

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30)]


def make_image_folder(root: Path, *, classes: int = 3, per_class: int = 8, size: int = 48, seed: int = 0) -> Path:
    """Class folders of noisy images with a class-coloured square: easy to learn, fast to load."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            x, y = rng.integers(0, size // 2, size=2)
            img[y : y + size // 2, x : x + size // 2] = COLOURS[c % len(COLOURS)]
            Image.fromarray(img).save(d / f"img_{i:03d}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    return make_image_folder(tmp_path / "data")



@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh TRANSFERLAB_CACHE per test and no downloads (use with ``pytest.mark.usefixtures``)."""
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERLAB_OFFLINE", "1")
    return tmp_path / "cache"
