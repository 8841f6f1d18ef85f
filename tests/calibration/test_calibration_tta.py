"""Calibration (ECE, temperature scaling applied wherever probabilities leave the tool) and TTA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_image_folder
from transferlab.calibration import calibrate_splits, expected_calibration_error
from transferlab.cli import main
from transferlab.data import NormStats
from transferlab.tta import TTA_VIEWS, tta_transform
from transferlab.zoo import Preprocessing


def _overconfident(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    logits = 3.0 * torch.randn(n, 4, generator=g)
    logits[torch.arange(n), y] += 4.0  # right ~80 % of the time, with large logit gaps: overconfident
    return logits * 3.0, y


def test_temperature_fitted_on_val_lowers_test_ece_and_keeps_the_argmax() -> None:
    val, y_val = _overconfident(seed=0)
    test, y_test = _overconfident(seed=1)
    t, s = calibrate_splits("temperature", val=(val, y_val), test=(test, y_test))
    assert t > 1.5  # the logits were inflated 3x
    assert s["test"]["ece"] < 0.5 * s["test"]["ece_uncalibrated"]
    assert torch.equal((test / t).argmax(1), test.argmax(1))
    nll = lambda T: float(torch.nn.functional.cross_entropy(val / T, y_val))  # noqa: E731
    assert nll(t) <= min(nll(t * 0.9), nll(t * 1.1), nll(1.0))


def test_ece_is_the_weighted_gap_of_the_bins() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    y = torch.tensor([0, 1, 0, 0])
    # bin (0.93, 1]: conf .95, acc .5; bin (0.53, 0.6]: confs .55 (right) and .55 (wrong), acc .5
    expected = (2 * abs(0.95 - 0.5) + 2 * abs(0.55 - 0.5)) / 4
    assert expected_calibration_error(probs, y) == pytest.approx(expected, abs=1e-6)


def test_tta_views_are_the_crop_its_mirror_and_five_crops() -> None:
    pp = Preprocessing(8, 10, (0.0,) * 3, (1.0,) * 3)
    norm = NormStats("pretrained", pp.mean, pp.std)
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8))
    flip = tta_transform(pp, norm=norm, mode="flip")(im)
    assert flip.shape == (2, 3, 8, 8) and torch.equal(flip[1], flip[0].flip(-1))
    crops = tta_transform(pp, norm=norm, mode="flip+crops")(im)
    assert crops.shape == (TTA_VIEWS["flip+crops"], 3, 8, 8)
    assert torch.allclose(crops[0], flip[0])  # the first view is the eval centre crop
    assert torch.equal(crops[5], crops[0].flip(-1))
    assert not torch.allclose(crops[1], crops[2])


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibrated")
    data = make_image_folder(root / "data", classes=3, per_class=8)
    # one mislabelled image per class (one lands in val): with every val image right there is no
    # temperature to fit, and T = 1 would hide whether the temperature reaches every output below
    noise = make_image_folder(root / "noise", classes=3, per_class=1, seed=1)
    for c in range(3):
        for i, img in enumerate(sorted((noise / f"class_{c}").glob("*.png"))):
            img.rename(data / f"class_{(c + 1) % 3}" / f"mislabelled_{i}.png")
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERLAB_CACHE", str(root / "cache"))
        assert main(["train", str(data), "--backbone", "mobilenet_v2", "--cut", "3", "--strategy", "linear-probe",
                     "--calibrate", "temperature", "--out", str(run), "--quiet"]) == 0
    return run


def test_calibrated_run_reports_ece_and_applies_the_temperature_everywhere(calibrated_run: Path) -> None:
    from transferlab.experiments.artifacts import load_model
    from transferlab.experiments.inference import evaluate_run, predict_images

    m = json.loads((calibrated_run / "metrics.json").read_text())
    t = json.loads((calibrated_run / "model.json").read_text())["temperature"]
    for split in ("val", "test"):
        assert {"ece", "ece_uncalibrated", "temperature", "reliability"} <= set(m[split])
        assert m[split]["temperature"] == t
    assert t != 1.0
    lm = load_model(calibrated_run)
    img = sorted((Path(json.loads((calibrated_run / "config.json").read_text())["data"]) / "class_1").glob("*.png"))[0]
    x = lm.transform()(Image.open(img).convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        want = (lm.model(x) / t).softmax(1)[0]
    got = predict_images([img], model_dir=calibrated_run, top=3)[0]["top"]
    for entry in got:
        assert entry["probability"] == pytest.approx(float(want[entry["index"]]), abs=1e-5)
    ev = evaluate_run(calibrated_run, json.loads((calibrated_run / "config.json").read_text())["data"],
                      subset="test", device="cpu", tta="flip")
    assert ev["temperature"] == t and 0.0 <= ev["ece"] <= 1.0 and ev["tta"] == "flip" and ev["seconds"] > 0


def test_onnx_graph_divides_by_the_temperature(calibrated_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")
    pytest.importorskip("onnxscript", reason="the 'export' extra is not installed")
    from tests.export.helpers import copy_run
    from transferlab.experiments.artifacts import load_model
    from transferlab.export import export_onnx, open_predictor

    run = copy_run(calibrated_run, tmp_path / "run")
    export_onnx(run)
    lm = load_model(run)
    x = torch.randn(2, 3, lm.preprocessing.input_size, lm.preprocessing.input_size)
    onnx_logits = open_predictor(run, runtime="onnx").logits(x.numpy())
    with torch.inference_mode():
        raw = lm.model(x).numpy()
    assert np.allclose(onnx_logits, raw / lm.temperature, atol=1e-4)
    assert not np.allclose(onnx_logits, raw, atol=1e-3)


def test_calibrate_without_a_held_out_val_split_is_one_line(tiny_folder: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", str(tiny_folder), "--calibrate", "temperature", "--refit", "--out", str(tmp_path / "r"),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: --calibrate temperature") and "val" in err


def test_calibrate_with_the_probe_search_is_one_line(tiny_folder: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", str(tiny_folder), "--calibrate", "temperature", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "saves averaged probabilities" in err
    assert not (tmp_path / "r" / "config.json").exists()
