"""open_dataset: layouts, validation with skipped/ignored files, the verdict cache, clear errors."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_class_folders, make_messy_folder, save_gif, save_jpeg, solid, truncated_jpeg_bytes

from transferlab.data import ImageSource, open_dataset, scan_cache_dir
from transferlab.errors import ConfigError, DataError


def names(paths) -> set[str]:
    return {Path(p).name for p in paths}


# -- the messy folder (acceptance) ----------------------------------------------------------
def test_messy_folder_opens_with_bad_files_skipped(tmp_path, caplog):
    root = make_messy_folder(tmp_path / "messy")
    with caplog.at_level(logging.WARNING, logger="transferlab.data"):
        src = open_dataset(root)
    assert src.layout == "imagefolder" and src.classes == ["cats", "dogs"]
    skipped = {Path(p).name: reason for p, reason in src.skipped}
    assert set(skipped) == {"truncated.jpg", "text.jpg"}
    assert "truncated" in skipped["truncated.jpg"]
    assert "not an image" in skipped["text.jpg"]
    assert names(src.ignored) == {"notes.txt", "labels.mat", ".DS_Store"}
    good = {"good.jpg", "cmyk.jpg", "deep16.png", "alpha.png", "anim.gif", "rotated.jpg", "gif_named.jpg", "good.jpeg"}
    assert names(src.identity(i) for i in range(len(src))) == good
    for i in range(len(src)):
        img = src.load(i)
        assert img.mode == "RGB"
        assert Path(src.identity(i)).parent.name == src.classes[src.labels[i]]
    rotated = next(i for i in range(len(src)) if src.identity(i).endswith("rotated.jpg"))
    img = src.load(rotated)
    assert img.size == (40, 64)
    assert img.getpixel((20, 8))[0] > 200 and img.getpixel((20, 56))[2] > 200
    # one log line per skipped file, naming it
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("truncated.jpg" in m for m in logged) == 1 and sum("text.jpg" in m for m in logged) == 1
    s = src.summary()
    assert s["n_images"] == 8 and s["n_skipped"] == 2 and s["n_ignored"] == 3
    assert s["per_class"] == {"cats": 5, "dogs": 3}


def test_identity_and_file_stat(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    src = open_dataset(root)
    assert src.identity(0) == str((root / "a" / "000.jpg").resolve())
    size, mtime = src.file_stat(0)
    assert size == os.path.getsize(src.identity(0)) and mtime > 0
    assert src.index_of(src.identity(3)) == 3
    assert src.subset_labels([0, 3]).tolist() == [0, 1]
    assert src.labels.dtype == np.int64


def test_validate_false_keeps_undecodable_files(tmp_path):
    root = make_messy_folder(tmp_path / "messy")
    src = open_dataset(root, validate=False)
    assert src.skipped == [] and len(src) == 10
    assert src.summary()["validation"] == {"decoded": 0, "cached": 0}


def test_nested_files_in_class_folder_are_found(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 1, "b": 1})
    save_jpeg(root / "a" / "sub" / "deep.jpg", solid((1, 2, 3)))
    src = open_dataset(root)
    assert len(src) == 3 and src.class_counts().tolist() == [2, 1]


# -- verdict cache ----------------------------------------------------------------------------
def test_second_open_uses_cached_verdicts(tmp_path):
    root = make_messy_folder(tmp_path / "messy")
    first = open_dataset(root)
    assert first.summary()["validation"] == {"decoded": 10, "cached": 0}
    second = open_dataset(root)
    assert second.summary()["validation"] == {"decoded": 0, "cached": 10}
    assert [second.identity(i) for i in range(len(second))] == [first.identity(i) for i in range(len(first))]
    assert second.skipped == first.skipped  # cached failures keep their reasons
    files = list(scan_cache_dir().glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"] == str(root.resolve())


def test_changed_file_is_validated_again(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    open_dataset(root)
    victim = root / "b" / "001.jpg"
    victim.write_bytes(truncated_jpeg_bytes())
    src = open_dataset(root)
    assert src.summary()["validation"] == {"decoded": 1, "cached": 3}
    assert [Path(p).name for p, _ in src.skipped] == ["001.jpg"]
    assert len(src) == 3


def test_corrupt_cache_is_reported_and_rebuilt(tmp_path, caplog):
    root = make_class_folders(tmp_path / "d", {"a": 1, "b": 1})
    open_dataset(root)
    (cache_file,) = scan_cache_dir().glob("*.json")
    cache_file.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="transferlab.data"):
        src = open_dataset(root)
    assert src.summary()["validation"]["decoded"] == 2
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert json.loads(cache_file.read_text())["entries"]


def test_quiet_false_logs_the_summary_once(tmp_path, caplog):
    root = make_class_folders(tmp_path / "d", {"a": 1, "b": 1})
    with caplog.at_level(logging.INFO, logger="transferlab"):
        open_dataset(root, quiet=False)
    assert [r.getMessage() for r in caplog.records].count("d: 2 images, 2 classes, 0 skipped, 0 ignored") == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transferlab"):
        open_dataset(root)
    assert not any("2 classes" in r.getMessage() for r in caplog.records)


# -- split folders ----------------------------------------------------------------------------
@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_split_folders_give_a_split(tmp_path, val_name):
    root = tmp_path / "sf"
    make_class_folders(root / "train", {"a": 4, "b": 3})
    make_class_folders(root / val_name, {"a": 2, "b": 2})
    make_class_folders(root / "test", {"b": 1, "a": 1})
    src = open_dataset(root)
    assert src.layout == "split-folders" and src.classes == ["a", "b"]
    assert {k: len(v) for k, v in src.given_split.items()} == {"train": 7, "val": 4, "test": 2}
    for key, folder in (("train", "train"), ("val", val_name), ("test", "test")):
        for i in src.given_split[key]:
            ident = Path(src.identity(int(i)))
            assert ident.parent.parent.name == folder and ident.parent.name == src.classes[src.labels[i]]


def test_split_folders_train_only_and_union_of_classes(tmp_path):
    root = tmp_path / "sf"
    make_class_folders(root / "train", {"a": 2, "b": 2})
    make_class_folders(root / "test", {"a": 1, "b": 1, "c": 1})
    src = open_dataset(root)
    assert src.classes == ["a", "b", "c"] and set(src.given_split) == {"train", "test"}


# -- Oxford-IIIT Pet --------------------------------------------------------------------------
def make_pets(root: Path) -> Path:
    images, ann = root / "images", root / "annotations"
    rows = []
    for breed, cid, species in (("Persian", 3, 1), ("beagle", 1, 2)):
        for n in range(1, 7):
            save_jpeg(images / f"{breed}_{n}.jpg", solid((cid * 50, n * 30, 90)))
            if n != 6:  # breed_6 is on disk but not in list.txt
                rows.append(f"{breed}_{n} {cid} {species} 1")
    save_gif(images / "Persian_7.jpg")  # a GIF with a .jpg name, not listed either
    (images / "Persian_1.mat").write_bytes(b"MATLAB")
    ann.mkdir(parents=True)
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
    (ann / "list.txt").write_text(header + "\n".join(rows) + "\n")
    (ann / "trainval.txt").write_text("\n".join(r for r in rows if int(r.split()[0].rsplit("_", 1)[1]) <= 3) + "\n")
    (ann / "test.txt").write_text("\n".join(r for r in rows if int(r.split()[0].rsplit("_", 1)[1]) > 3) + "\n")
    return root


def test_oxford_pets_layout(tmp_path):
    src = open_dataset(make_pets(tmp_path / "pets"))
    assert src.layout == "oxford-pets"
    assert src.classes == ["beagle", "Persian"]  # list.txt's class-id order, not alphabetical
    assert src.class_counts().tolist() == [6, 7]  # unlisted images still belong to their breed
    assert names(src.ignored) == {"Persian_1.mat"}
    assert src.skipped == []
    assert {k: len(v) for k, v in src.given_split.items()} == {"trainval": 6, "test": 4}
    test_names = names(src.identity(int(i)) for i in src.given_split["test"])
    assert test_names == {"Persian_4.jpg", "Persian_5.jpg", "beagle_4.jpg", "beagle_5.jpg"}
    gif = next(i for i in range(len(src)) if src.identity(i).endswith("Persian_7.jpg"))
    assert src.load(gif).mode == "RGB" and src.classes[src.labels[gif]] == "Persian"


def test_oxford_pets_missing_listed_file_is_reported(tmp_path):
    root = make_pets(tmp_path / "pets")
    (root / "images" / "beagle_2.jpg").unlink()
    src = open_dataset(root)
    assert [(Path(p).name, "not found" in r) for p, r in src.skipped] == [("beagle_2.jpg", True)]


def test_oxford_pets_bad_list_line(tmp_path):
    root = make_pets(tmp_path / "pets")
    with (root / "annotations" / "list.txt").open("a") as fh:
        fh.write("garbage\n")
    with pytest.raises(DataError, match=r"list.txt:\d+: expected"):
        open_dataset(root)


# -- Fashion-MNIST IDX ----------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_idx(root: Path, *, gz: bool = True, n_train: int = 6, n_test: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        write_idx(root / f"{prefix}-images-idx3-ubyte", imgs, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path, gz):
    src = open_dataset(make_idx(tmp_path / "fm", gz=gz))
    assert src.layout == "idx" and len(src) == 10 and src.classes[0] == "T-shirt/top" and len(src.classes) == 10
    assert src.given_split["train"].tolist() == list(range(6))
    assert src.given_split["test"].tolist() == list(range(6, 10))
    assert src.identity(7) == "fashion-mnist:test:1" and src.file_stat(7) is None
    img = src.load(7)
    assert img.mode == "RGB" and img.size == (28, 28)
    r, g, b = (np.asarray(img)[..., c] for c in range(3))
    assert np.array_equal(r, g) and np.array_equal(g, b)
    assert src.labels[7] == 1


def test_idx_missing_file(tmp_path):
    root = make_idx(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        open_dataset(root)


def test_idx_bad_magic(tmp_path):
    root = make_idx(tmp_path / "fm")
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x0d\x01" + b"\0" * 8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: expected IDX magic"):
        open_dataset(root)


# -- CSV ----------------------------------------------------------------------------------------
def test_csv_layout(tmp_path):
    make_class_folders(tmp_path / "imgs", {"x": 2, "y": 2})
    (tmp_path / "imgs" / "bad.jpg").write_text("nope")
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\nimgs/x/000.jpg,cat\nimgs/x/001.jpg,cat\nimgs/y/000.jpg,dog\n"
                   "imgs/bad.jpg,dog\nimgs/missing.jpg,dog\n")
    src = open_dataset(csv)
    assert src.layout == "csv" and src.classes == ["cat", "dog"] and len(src) == 3
    reasons = {Path(p).name: r for p, r in src.skipped}
    assert "not an image" in reasons["bad.jpg"] and "line 6" in reasons["missing.jpg"]


def test_csv_root(tmp_path):
    make_class_folders(tmp_path / "imgs", {"x": 1, "y": 1})
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "l.csv").write_text("path,label\nx/000.jpg,a\ny/000.jpg,b\n")
    src = open_dataset(lists / "l.csv", csv_root=tmp_path / "imgs")
    assert len(src) == 2 and src.identity(0) == str(tmp_path / "imgs" / "x" / "000.jpg")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("file,class\na.jpg,x\n", "expected a header with columns path,label, got file,class"),
        ("path,label\na.jpg,x\na.jpg,y\n", ":3: a.jpg is already listed on line 2"),
        ("path,label\na.jpg,\n", ":2: expected a path and a label"),
        ("path,label\n", "header but no rows"),
    ],
)
def test_csv_errors(tmp_path, text, pattern):
    (tmp_path / "a.jpg").write_bytes(b"")
    csv = tmp_path / "l.csv"
    csv.write_text(text)
    with pytest.raises(DataError, match=pattern) as info:
        open_dataset(csv)
    assert str(csv) in str(info.value)


def test_csv_root_on_a_folder_is_a_config_error(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(ConfigError, match="csv_root"):
        open_dataset(root, csv_root=tmp_path)


# -- errors -----------------------------------------------------------------------------------
def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        open_dataset(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in one_line(info)


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / ".hidden").write_text("x")
    with pytest.raises(DataError, match="empty folder") as info:
        open_dataset(tmp_path / "e")
    assert str(tmp_path / "e") in one_line(info)


def test_single_class(tmp_path):
    root = make_class_folders(tmp_path / "one", {"only": 3})
    with pytest.raises(DataError, match=r"only one class \(only\)") as info:
        open_dataset(root)
    assert str(root) in one_line(info)


def test_class_folder_without_usable_image(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "c" / "broken.jpg").write_text("nope")
    with pytest.raises(DataError, match="has no usable image") as info:
        open_dataset(root)
    assert one_line(info).startswith(f"{root / 'c'}: class folder") and "none decodable" in str(info.value)


def test_empty_class_folder(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 2, "b": 2})
    (root / "c").mkdir()
    with pytest.raises(DataError, match="no image files"):
        open_dataset(root)


@pytest.mark.parametrize("kind", ["flat", "file"])
def test_unknown_layout(tmp_path, kind):
    if kind == "flat":
        target = tmp_path / "flat"
        save_jpeg(target / "a.jpg", solid((1, 1, 1)))
    else:
        target = tmp_path / "data.zip"
        target.write_bytes(b"PK")
    with pytest.raises(DataError, match="unknown dataset layout") as info:
        open_dataset(target)
    assert str(target) in one_line(info)


def test_ambiguous_split_folders(tmp_path):
    root = tmp_path / "amb"
    make_class_folders(root / "train", {"a": 1, "b": 1})
    make_class_folders(root / "cats", {"a": 1})
    with pytest.raises(DataError, match="ambiguous layout"):
        open_dataset(root)


def test_split_folders_without_train(tmp_path):
    root = tmp_path / "nt"
    make_class_folders(root / "val", {"a": 1, "b": 1})
    make_class_folders(root / "test", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="expected a train/ folder"):
        open_dataset(root)


def test_from_arrays_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        ImageSource.from_arrays(np.zeros((2, 4, 4), np.uint8), [0, 2], classes=["a", "b"], name="t")
    with pytest.raises(ValueError, match="uint8"):
        ImageSource.from_arrays(np.zeros((2, 4, 4), np.float32), [0, 1], classes=["a", "b"], name="t")
