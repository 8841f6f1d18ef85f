"""Segmentation task on tiny synthetic images: learning, metrics, joint transforms, export, bad input."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.cli import main
from transferlab.data import NormStats
from transferlab.errors import DataError
from transferlab.experiments.train import train
from transferlab.tasks.segment import DenseModel, dense_transform, read_masks, segmentation_metrics
from transferlab.zoo import Preprocessing, create_backbone

#: a scratch small_cnn at 32 px: seconds per run
FAST = {"backbone": "small_cnn", "strategy": "scratch", "input_size": 32, "scratch_epochs": 12, "batch_size": 8,
        "quiet": True, "device": "cpu", "feature_cache": "off"}


def make_masks(root: Path, *, n: int = 24, seed: int = 0) -> Path:
    """images/ + masks/: dark noise with a bright yellow rectangle (class 1), background class 0."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 60, (40, 48, 3)).astype(np.uint8)
        m = np.zeros((40, 48), np.uint8)
        x, y = rng.integers(2, 24), rng.integers(2, 18)
        img[y:y + 16, x:x + 20] = (220, 200, 40)
        m[y:y + 16, x:x + 20] = 1
        Image.fromarray(img).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(m).save(root / "masks" / f"im{i:02d}.png")
    (root / "classes.txt").write_text("background\nsquare\n")
    return root


@pytest.fixture
def squares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    return make_masks(tmp_path / "squares")


def test_metrics_on_hand_made_masks():
    # 2x2 image, truth [[0, 0], [0, 1]], prediction: top row 0, bottom row 1
    logits = torch.tensor([[[[9.0, 9.0], [0.0, 0.0]], [[0.0, 0.0], [9.0, 9.0]]]])
    m = segmentation_metrics(logits, torch.tensor([[[0, 0], [0, 1]]]), classes=["a", "b", "c"])
    assert m["pixel_accuracy"] == 0.75
    assert m["per_class"]["a"]["iou"] == pytest.approx(2 / 3)  # tp 2, union 3
    assert m["per_class"]["b"]["iou"] == 0.5  # tp 1, union 2
    assert m["per_class"]["c"]["iou"] is None  # absent from truth and prediction: left out of the mean
    assert m["mean_iou"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_mask_moves_with_the_image():
    pp = Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3, "bilinear")
    tf = dense_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std), augment="flip-scale", scale=(0.3, 1.0))
    img = np.zeros((32, 40, 3), np.uint8)
    img[:, :10] = 255  # a white left band, class 1 in the mask
    mask = np.zeros((32, 40), np.uint8)
    mask[:, :10] = 1
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, m = tf(Image.fromarray(img), mask)
        assert m.dtype == torch.long and set(m.unique().tolist()) <= {0, 1}  # nearest: no new values
        bright = x[0] > 0.5  # white pixels after normalisation
        agree = (bright == (m == 1)).float().mean()  # all but the resampled edge column of the band
        assert agree > 0.9, (seed, float(agree))
        flipped += int(m[:, -1].float().mean() > m[:, 0].float().mean())
    assert 0 < flipped < 12  # some views flipped, some not, the mask with them each time


def test_decoder_reads_multi_scale_stages_and_cached_prefix_agrees():
    bb = create_backbone("mobilenet_v2", pretrained=False)
    bb.preprocessing = bb.preprocessing.with_input_size(64)
    m = DenseModel(backbone=bb, out_channels=3, width=16).eval()
    assert len(m.levels) >= 3  # strides 4, 8, 16, 32 (and deeper stages at 32)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = m(x)
        for b in (3, len(m.stage_names)):  # the engine's frozen-prefix path: rows at a boundary, then on
            rows = m.prefix(m.prefix(x, start=0, stop=b - 1), start=b - 1, stop=b)
            assert rows.dim() == 2
            assert torch.allclose(m.forward_from(rows, b), full, atol=1e-5)
    assert full.shape == (2, 3, 64, 64)


def test_learns_a_trivially_learnable_mask_and_predicts_pngs(squares: Path, tmp_path: Path):
    run = train(str(squares), task="segment", out=tmp_path / "run", **FAST)
    test = run.metrics["test"]
    assert run.metrics["task"] == "segmentation" and run.classes == ["background", "square"]
    assert test["pixel_accuracy"] > 0.9 and test["mean_iou"] > 0.75, test
    assert (tmp_path / "run" / "predictions_test.png").is_file()
    assert "iou_square" in (tmp_path / "run" / "predictions_test.csv").read_text()
    from transferlab.experiments.inference import predict_images

    img = squares / "images" / "im00.png"
    out = predict_images([img], model_dir=tmp_path / "run", draw=tmp_path / "draw.png")
    mask = np.asarray(Image.open(out[0]["mask_file"]))
    truth = np.asarray(Image.open(squares / "masks" / "im00.png"))
    assert mask.shape == truth.shape and (mask == truth).mean() > 0.85
    assert (tmp_path / "draw.png").is_file()


def test_export_parity_and_served_mask(squares: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from transferlab.export import export_onnx, open_predictor

    train(str(squares), task="segment", out=tmp_path / "run", **{**FAST, "scratch_epochs": 2})
    img = squares / "images" / "im01.png"
    r = export_onnx(tmp_path / "run", check_images=[img, squares / "images" / "im02.png"])
    assert r.ok and r.max_abs_diff < 1e-3
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert "[batch, 2, 32, 32]" in meta["onnx"]["output_spec"]
    image = Image.open(img).convert("RGB")
    onnx_pred = open_predictor(tmp_path / "run", runtime="onnx").predict([image])[0]
    torch_pred = open_predictor(tmp_path / "run", runtime="torch").predict([image])[0]
    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(p["mask_png"])))) for p in (onnx_pred, torch_pred))
    assert a.shape == (40, 48) and (a == b).mean() > 0.99
    from fastapi.testclient import TestClient

    from transferlab.serve import create_app

    resp = TestClient(create_app(tmp_path / "run", runtime="onnx")).post(
        "/predict", files={"file": ("a.png", img.read_bytes())})
    assert resp.status_code == 200, resp.text
    served = resp.json()["predictions"][0]
    assert served["mask_png"] == onnx_pred["mask_png"] and set(served["fractions"]) == {"background", "square"}


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line(squares: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    base = ["train", "--task", "segment", "--backbone", "small_cnn", "--out"]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(squares / "masks" / "im03.png")
    err = _one_line_error([*base, str(tmp_path / "a"), str(squares)], capsys)
    assert "im03.png: mask is 10x10 but its image" in err and "48x40" in err
    m = np.zeros((40, 48), np.uint8)
    m[0, 0] = 7
    Image.fromarray(m).save(squares / "masks" / "im03.png")
    err = _one_line_error([*base, str(tmp_path / "b"), str(squares)], capsys)
    assert "mask value 7 is outside the classes" in err
    plain = tmp_path / "plain" / "cats"
    plain.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(plain / "a.png")
    err = _one_line_error([*base, str(tmp_path / "c"), str(plain.parent)], capsys)
    assert "--task segment needs masks" in err
    with pytest.raises(DataError, match="no mask for any"):
        (tmp_path / "empty" / "images").mkdir(parents=True)
        (tmp_path / "empty" / "masks").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "images" / "a.png")
        read_masks(str(tmp_path / "empty"))
