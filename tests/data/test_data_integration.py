"""Integration tests on the real datasets (skipped with a reason when the data is absent)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from transferlab.data.idx import FASHION_MNIST_DIR

from transferlab.data import open_dataset

pytestmark = pytest.mark.slow


def annotation_names(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_flowers17(shared_dataset):
    root = shared_dataset("flowers17")
    t0 = time.perf_counter()
    src = open_dataset(root)
    first = time.perf_counter() - t0
    assert len(src.classes) == 17 and src.classes[0] == "01_daffodil" and src.classes[-1] == "17_pansy"
    assert src.class_counts().tolist() == [80] * 17
    assert src.skipped == [] and src.given_split is None
    assert src.summary()["validation"] == {"decoded": 1360, "cached": 0}
    img = src.load(0, draft_size=256)
    assert img.mode == "RGB" and min(img.size) >= 256
    t0 = time.perf_counter()
    again = open_dataset(root)
    second = time.perf_counter() - t0
    assert again.summary()["validation"] == {"decoded": 0, "cached": 1360}
    assert second < first


def test_oxford_pets_3(shared_dataset):
    root = shared_dataset("oxford-pets-3")
    src = open_dataset(root)
    on_disk = sorted(p for p in (root / "images").iterdir() if p.suffix == ".jpg")
    expected = Counter(p.stem.rsplit("_", 1)[0] for p in on_disk)
    assert sorted(src.classes) == sorted(expected) and len(src.classes) == 3
    assert dict(zip(src.classes, src.class_counts().tolist())) == dict(expected)
    assert set(expected.values()) == {200}
    assert src.skipped == []
    assert sorted(Path(p).name for p in src.ignored) == sorted(p.name for p in (root / "images").glob("*.mat"))
    for split in ("trainval", "test"):
        listed = set(annotation_names(root / "annotations" / f"{split}.txt"))
        got = {Path(src.identity(int(i))).stem for i in src.given_split[split]}
        assert got == listed
    listed_all = set(annotation_names(root / "annotations" / "list.txt"))
    unlisted = [i for i in range(len(src)) if Path(src.identity(i)).stem not in listed_all]
    assert len(unlisted) == len(on_disk) - len(listed_all)
    for quirky in ("Abyssinian_34.jpg", "Abyssinian_5.jpg"):  # a GIF and an RGBA PNG named .jpg
        i = src.index_of(str((root / "images" / quirky).absolute()))
        assert src.load(i).mode == "RGB" and src.classes[src.labels[i]] == "Abyssinian"


def test_fashion_mnist():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    src = open_dataset("fashion-mnist")
    assert len(src) == 70000 and len(src.classes) == 10
    assert src.classes[0] == "T-shirt/top" and src.classes[9] == "Ankle boot"
    assert len(src.given_split["train"]) == 60000 and len(src.given_split["test"]) == 10000
    assert np.bincount(src.labels[src.given_split["train"]]).tolist() == [6000] * 10
    img = src.load(60000)
    assert img.mode == "RGB" and img.size == (28, 28)
    assert src.identity(60000) == "fashion-mnist:test:0"
