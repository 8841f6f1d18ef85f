"""Keypoints task on synthetic blobs (no keypoint set is available offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.errors import DataError
from transferlab.experiments.train import train
from transferlab.tasks.keypoints import KeypointObjective, decode_heatmaps, keypoint_metrics, read_keypoint_csv

FAST = {"backbone": "small_cnn", "strategy": "scratch", "input_size": 48, "scratch_epochs": 15, "batch_size": 8,
        "quiet": True, "device": "cpu", "feature_cache": "off"}


def make_blobs(root: Path, *, n: int = 40, seed: int = 0) -> Path:
    """Noise with a red and a green disc; the CSV gives their centres (red hidden in every 8th image)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    rows = ["path,red_x,red_y,green_x,green_y"]
    yy, xx = np.mgrid[0:48, 0:56]
    for i in range(n):
        img = rng.integers(0, 50, (48, 56, 3)).astype(np.uint8)
        (rx, ry), (gx, gy) = rng.uniform(6, 42, 2), rng.uniform(6, 42, 2)
        hidden = i % 8 == 0
        if not hidden:
            img[(xx - rx) ** 2 + (yy - ry) ** 2 < 16] = (230, 30, 30)
        img[(xx - gx) ** 2 + (yy - gy) ** 2 < 16] = (30, 230, 30)
        Image.fromarray(img).save(root / "img" / f"b{i:02d}.png")
        red = ",," if hidden else f"{rx:.2f},{ry:.2f},"
        rows.append(f"img/b{i:02d}.png,{red}{gx:.2f},{gy:.2f}")
    (root / "points.csv").write_text("\n".join(rows) + "\n")
    return root / "points.csv"


def test_metrics_and_decoding_on_hand_made_heatmaps():
    h = torch.full((1, 2, 4, 4), -5.0)
    h[0, 0, 1, 2] = 5.0  # cell centre (2.5, 1.5) / 4
    h[0, 1, 3, 0] = 5.0
    xy, score = decode_heatmaps(h)
    assert xy[0].tolist() == [[0.625, 0.375], [0.125, 0.875]] and bool((score > 0.9).all())
    truth = torch.tensor([[[0.625, 0.375, 1.0], [0.5, 0.5, 1.0]]])  # second point 0.53 away
    m = keypoint_metrics(h, truth, names=["a", "b"], input_size=100)
    assert m["pck"] == 0.5 and m["per_keypoint"]["a"]["pck"] == 1.0 and m["per_keypoint"]["b"]["pck"] == 0.0
    assert m["mean_pixel_error"] == pytest.approx(100 * float(np.hypot(0.375, 0.375)) / 2, rel=1e-4)
    hidden = truth.clone()
    hidden[0, 1, 2] = 0.0  # a hidden point counts nowhere
    assert keypoint_metrics(h, hidden, names=["a", "b"], input_size=100)["pck"] == 1.0
    obj = KeypointObjective()
    assert obj.loss(h, hidden) < obj.loss(h, truth)


def test_learns_synthetic_blobs_and_predicts_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    csv = make_blobs(tmp_path / "blobs")
    run = train(str(csv), task="keypoints", out=tmp_path / "run", **FAST)
    t = run.metrics["test"]
    assert run.classes == ["red", "green"] and t["pck"] > 0.8, t
    assert (tmp_path / "run" / "predictions_test.png").is_file()
    from transferlab.experiments.inference import predict_images

    src, _, pts = read_keypoint_csv(csv)
    out = predict_images([src.identity(1)], model_dir=tmp_path / "run", draw=tmp_path / "d.png")
    green = out[0]["keypoints"]["green"]
    assert abs(green["x"] - pts[1, 1, 0]) < 6 and abs(green["y"] - pts[1, 1, 1]) < 6  # pixels of the 56x48 image
    assert (tmp_path / "d.png").is_file()


def test_bad_keypoint_csv_is_one_line(tmp_path: Path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "p.csv").write_text("path,nose_x,nose_y\na.png,3,\n")
    with pytest.raises(DataError, match=r"p.csv:2: nose has one coordinate"):
        read_keypoint_csv(tmp_path / "p.csv")
    (tmp_path / "q.csv").write_text("path,nose_x\na.png,3\n")
    with pytest.raises(DataError, match="expected the header path,NAME_x,NAME_y"):
        read_keypoint_csv(tmp_path / "q.csv")
