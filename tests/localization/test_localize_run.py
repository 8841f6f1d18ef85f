"""End to end on a tiny synthetic pets layout: train (box, class+box, fixed views), predict --draw, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.cli import main
from transferlab.errors import ConfigError
from transferlab.localization import LocalizeOptions, load_localizer, localize
from transferlab.localization.model import LocalizationModel, LocHeadConfig
from transferlab.zoo import create_backbone

FAST = dict(backbone="mobilenet_v2", cut=3, batch_size=8, quiet=True, device="cpu", pool="avg", box_augment="none")


def test_box_head_swaps_the_output_layer_and_keeps_the_stages():
    bb = create_backbone("mobilenet_v2", pretrained=False)
    for act, lo, hi in (("sigmoid", 0.0, 1.0), ("relu", 0.0, float("inf"))):
        m = LocalizationModel(backbone=bb, head=LocHeadConfig(activation=act, pool="avg"), cut=3).eval()
        with torch.no_grad():
            m.head.box.weight.normal_()  # push the outputs beyond [0, 1] before the activation
            out = m(torch.randn(3, 3, 64, 64) * 5)
        assert out.shape == (3, 4) and m.num_classes == 4
        assert float(out.min()) >= lo and float(out.max()) <= hi
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(m.forward_from(m.prefix(x, start=0, stop=2), 2), m(x), atol=1e-5)
    both = LocalizationModel(backbone=bb, head=LocHeadConfig(kind="class+box", num_classes=3, pool="flatten"), cut=3)
    assert both(torch.zeros(2, 3, 224, 224)).shape == (2, 7)  # flatten: the input size of the weights
    with pytest.raises(ConfigError, match="--head: expected one of box, class\\+box, got 'dense'"):
        LocHeadConfig(kind="dense")


def test_train_writes_a_run_that_predicts_and_evaluates(tiny_pets: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]):
    run_dir = tmp_path / "run"
    run = localize(str(tiny_pets), out=run_dir, strategy="fine-tune", unfreeze=1, epochs=2, finetune_epochs=1,
                   lr=1e-3, **FAST)
    for name in ("config.json", "split_train.txt", "split_val.txt", "split_test.txt", "history.jsonl",
                 "metrics.json", "model.safetensors", "model.json", "predictions_test.csv",
                 "predictions_test.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "localization" and json.loads((run_dir / "model.json").read_text())["task"] == "localization"
    assert [h["epoch"] for h in run.history] == [1, 2, 3] and "val_mean_iou" in run.history[0]  # epochs from 1
    assert main(["report", str(run_dir)]) == 0  # the shared report reads a localization run
    capsys.readouterr()
    page = (run_dir / "report.html").read_text()
    assert "mean_iou" in page and "learning_curves" in page
    assert set(metrics["test"]) >= {"mean_iou", "acc_at_0.5", "acc_at_0.75", "n"} and "accuracy" not in metrics["test"]
    assert metrics["boxes"]["with_box"] == 27 and metrics["boxes"]["without_box"] == 3
    assert sum(metrics["split_sizes"].values()) == 27 and metrics["split_sizes"]["test"] == 6  # 0.6/0.2/0.2 of 9 x 3
    assert [h["phase"] for h in run.history] == ["head", "head", "fine-tune"]
    csv = (run_dir / "predictions_test.csv").read_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith("identity,true_xmin")

    # the saved model reproduces the run's test metrics through `localize evaluate`
    assert main(["localize", "evaluate", str(run_dir), str(tiny_pets), "--subset", "test", "--json", "--quiet",
                 "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 6 and ev["mean_iou"] == pytest.approx(metrics["test"]["mean_iou"], abs=1e-4)
    # ... and through the shared `evaluate` (model.json names its task; loading dispatches on it)
    assert main(["evaluate", str(run_dir), str(tiny_pets), "--subset", "test", "--json", "--quiet",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_iou"] == pytest.approx(ev["mean_iou"], abs=1e-6)

    image = tiny_pets / "images" / "Bengal_1.jpg"
    draw = tmp_path / "pred.png"
    assert main(["localize", "predict", str(image), "--model", str(run_dir), "--draw", str(draw), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)[0]
    assert main(["predict", str(image), "--model", str(run_dir), "--json"]) == 0  # the shared predict
    assert json.loads(capsys.readouterr().out)[0]["box"] == res["box"]
    assert len(res["box"]) == 4 and 0 <= res["box"][0] <= res["box"][2] <= 64 and 0 <= res["box"][1] <= res["box"][3] <= 48
    assert "true_box" in res and 0.0 <= res["iou"] <= 1.0  # the VOC file next door was found
    with Image.open(draw) as im:
        pixels = set(map(tuple, np.asarray(im.convert("RGB")).reshape(-1, 3).tolist()))
        assert (230, 30, 30) in pixels and (20, 200, 40) in pixels  # red prediction, green truth


def test_class_box_head_reports_accuracy_and_fixed_views_are_cached(tiny_pets: Path, tmp_path: Path):
    run = localize(str(tiny_pets), out=tmp_path / "cb", strategy="feature-extraction", epochs=2, head="class+box",
                   box_loss="giou", box_weight=2.0, **{**FAST, "box_augment": "flip-scale", "views": 2})
    test = run.metrics["test"]
    assert {"accuracy", "mean_iou"} <= set(test)
    assert all(h["cached_inputs"] for h in run.history)  # fixed views keep the frozen prefix cacheable
    assert load_localizer(tmp_path / "cb").model.head_config.kind == "class+box"


def test_bad_options_are_one_line_errors(tiny_pets: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="--views must be 0, or > 0 together with --augment"):
        LocalizeOptions(box_augment="none", views=2)
    assert LocalizeOptions().views == 7 and LocalizeOptions(box_augment="none").views == 0  # the defaults
    with pytest.raises(ConfigError, match="linear-probe fits a classifier"):
        localize(str(tiny_pets), out=tmp_path / "lp", strategy="linear-probe", **FAST)
    with pytest.raises(ConfigError, match="expected a localization model"):
        (tmp_path / "cls").mkdir()
        (tmp_path / "cls" / "model.json").write_text(json.dumps({"backbone": "mobilenet_v2"}))
        (tmp_path / "cls" / "model.safetensors").write_bytes(b"")
        load_localizer(tmp_path / "cls")


def test_train_task_localize_is_the_localize_command_and_exports(tiny_pets: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]):
    pytest.importorskip("onnxruntime")
    from transferlab.export import export_onnx, open_predictor

    flags = ["--backbone", "mobilenet_v2", "--cut", "3", "--batch-size", "8", "--quiet", "--device", "cpu",
             "--pool", "avg", "--strategy", "feature-extraction", "--epochs", "2", "--augment", "none"]
    assert main(["train", str(tiny_pets), "--task", "localize", "--out", str(tmp_path / "a"), *flags]) == 0
    assert main(["localize", "train", str(tiny_pets), "--out", str(tmp_path / "b"), *flags]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text()) for x in "ab")
    assert a["test"] == b["test"] and a["split_sizes"] == b["split_sizes"]
    r = export_onnx(tmp_path / "a", n_check=2)  # the shared export: parity on the box outputs
    assert r.ok
    image = Image.open(tiny_pets / "images" / "Bengal_1.jpg").convert("RGB")
    onnx_box = open_predictor(tmp_path / "a", runtime="onnx").predict([image])[0]["box"]
    torch_box = open_predictor(tmp_path / "a", runtime="torch").predict([image])[0]["box"]
    assert onnx_box == pytest.approx(torch_box, abs=0.2) and len(onnx_box) == 4
    # the shared server answers with the box, in pixels of the upload
    from fastapi.testclient import TestClient

    from transferlab.serve import create_app

    data = (tiny_pets / "images" / "Bengal_1.jpg").read_bytes()
    r = TestClient(create_app(tmp_path / "a", runtime="onnx")).post("/predict", files={"file": ("b.jpg", data)})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["box"] == pytest.approx(onnx_box, abs=0.2) and (pred["width"], pred["height"]) == image.size
