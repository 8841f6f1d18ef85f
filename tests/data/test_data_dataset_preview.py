"""ImageDataset, augment_preview and the atomic writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import make_class_folders, noise, save_jpeg, truncated_jpeg_bytes
from PIL import Image
from torch.utils.data import DataLoader

from transferlab.data import (
    ImageDataset,
    ImageDecodeError,
    NormStats,
    atomic_write_bytes,
    atomic_write_text,
    augment_preview,
    build_transform,
    make_split,
    open_dataset,
)
from transferlab.errors import ConfigError
from transferlab.zoo.preprocessing import Preprocessing

PP = Preprocessing(input_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
NORM = NormStats("pretrained", PP.mean, PP.std)


def test_image_dataset_items_and_loader(tmp_path):
    src = open_dataset(make_class_folders(tmp_path / "d", {"a": 4, "b": 4}, size=(48, 40)))
    split = make_split(src, seed=0)
    ds = ImageDataset(src, split.train, build_transform(PP, norm=NORM, train=True, augment="basic"), draft_size=36)
    assert len(ds) == 4 and ds.labels.tolist() == src.labels[split.train].tolist()
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and y == src.labels[split.train[1]]
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and yb.dtype == torch.int64


def test_image_dataset_raises_for_a_file_broken_after_validation(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    src = open_dataset(root)
    broken = Path(src.identity(2))
    broken.write_bytes(truncated_jpeg_bytes())
    ds = ImageDataset(src, np.arange(len(src)), build_transform(PP, norm=NORM))
    ds[0]
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        ds[2]
    assert info.value.path == str(broken)


def test_decode_error_crosses_dataloader_workers(tmp_path):
    # (torch takes ~5 s to shut a worker down after an error: this test pays it once)
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    src = open_dataset(root)
    broken = Path(src.identity(1))
    broken.write_text("not a jpeg any more")
    ds = ImageDataset(src, np.arange(len(src)), build_transform(PP, norm=NORM))
    with pytest.raises(ImageDecodeError) as info:
        list(DataLoader(ds, batch_size=2, num_workers=1))
    assert (info.value.path, str(info.value)) == (str(broken), f"{broken}: not an image Pillow can identify")


def test_image_dataset_rejects_out_of_range_indices(tmp_path):
    src = open_dataset(make_class_folders(tmp_path / "d", {"a": 1, "b": 1}))
    with pytest.raises(IndexError, match=r"0\.\.1"):
        ImageDataset(src, [0, 5], build_transform(PP, norm=NORM))


def preview_data(tmp_path: Path) -> Path:
    root = tmp_path / "pv"
    for k, name in enumerate(("red", "blue")):
        for i in range(8):
            save_jpeg(root / name / f"{i}.jpg", noise((60, 50), seed=10 * k + i))
    return root


@pytest.mark.parametrize("preset", ["basic", "mixup"])
def test_augment_preview_writes_a_png(tmp_path, preset):
    out = augment_preview(str(preview_data(tmp_path)), preset=preset, out=tmp_path / "o" / "p.png", n=4,
                          preprocessing=PP)
    assert out == tmp_path / "o" / "p.png"
    with Image.open(out) as im:
        assert im.format == "PNG"
        width, height = im.size
    # 2 rows x (1 original + 2 augmented) tiles of 2 inches at 100 dpi
    assert 550 <= width <= 650 and 400 <= height <= 600
    assert not [p for p in out.parent.iterdir() if p.name != "p.png"]


def test_augment_preview_is_seeded(tmp_path):
    data = str(preview_data(tmp_path))
    a = augment_preview(data, preset="trivialaugment", out=tmp_path / "a.png", n=4, seed=1, preprocessing=PP)
    b = augment_preview(data, preset="trivialaugment", out=tmp_path / "b.png", n=4, seed=1, preprocessing=PP)
    c = augment_preview(data, preset="trivialaugment", out=tmp_path / "c.png", n=4, seed=2, preprocessing=PP)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_augment_preview_errors(tmp_path):
    data = str(preview_data(tmp_path))
    with pytest.raises(ConfigError, match="preset: expected one of none, basic"):
        augment_preview(data, preset="zoom", out=tmp_path / "p.png")
    with pytest.raises(ConfigError, match="out: expected a .png"):
        augment_preview(data, preset="basic", out=tmp_path / "p.jpg")
    with pytest.raises(ConfigError, match="n: expected"):
        augment_preview(data, preset="basic", out=tmp_path / "p.png", n=0)


def test_atomic_writes(tmp_path):
    target = tmp_path / "deep" / "f.txt"
    assert atomic_write_text(target, "one") == target
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_atomic_write_failure_leaves_no_temp_and_old_content(tmp_path):
    (tmp_path / "dir_target").mkdir()
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "dir_target", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir_target"]
    with pytest.raises(TypeError, match="expected bytes"):
        atomic_write_bytes(tmp_path / "x", "text")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
