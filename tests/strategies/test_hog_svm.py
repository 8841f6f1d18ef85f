"""hog-svm: descriptors that see orientation, a run like any other (train, compare), no pretrained weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.cli import main
from transferlab.errors import ConfigError
from transferlab.experiments.compare import compare
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies.hog_svm import hog_settings, hog_vector

pytestmark = pytest.mark.usefixtures("offline_cache")


def stripes(root: Path, *, per_class: int = 10, size: int = 40) -> Path:
    """Two classes that differ only by the orientation of noisy stripes (same colours, same mean)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("horizontal", "vertical")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            period = int(rng.integers(4, 8))
            wave = (np.arange(size) // (period // 2) % 2 * 200).astype(np.uint8)
            img = np.repeat(wave[:, None] if c == 0 else wave[None, :], size, axis=1 if c == 0 else 0)
            img = np.clip(img.astype(int) + rng.integers(0, 50, size=(size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([img] * 3, -1)).save(root / name / f"{i}.png")
    return root


def test_hog_descriptor_shape_and_bad_size() -> None:
    v = hog_vector(Image.new("RGB", (64, 48), "white"), size=32)
    # 32 px, 4 px cells -> 8x8 cells, 7x7 blocks of 2x2 cells x 9 orientations
    assert v.shape == (7 * 7 * 2 * 2 * 9,) and v.dtype == np.float32
    with pytest.raises(ConfigError, match=">= 16"):
        hog_settings(8)


def test_hog_svm_train_run_separates_orientations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = stripes(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", str(data), "--strategy", "hog-svm", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["strategy"] == "hog-svm" and m["backbone"] == "none" and m["test"]["accuracy"] == 1.0
    assert m["features"]["size"] == 40 and m["probe"]["classifier"] == "svm"  # native size (< 128), C on val
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["plan"]["pretrained"] is False and (out / "split_test.txt").is_file()
    assert "hog-svm / none" in capsys.readouterr().out


def test_hog_svm_in_compare_reuses_cached_descriptors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = stripes(tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="transferlab"):
        res = compare(str(data), strategies="hog-svm", seeds=2, out=tmp_path / "cmp",
                      data_options=DataOptions(quiet=False), train_options=TrainOptions(input_size=32))
    s = res["strategies"]["hog-svm"]
    assert s["n_ok"] == 2 and s["test_accuracy_mean"] == 1.0 and s["runs"][0]["backbone"] == "none"
    assert caplog.text.count("descriptors of") == 3  # seed 1 read train, val and test from the cache
