"""Multi-label through the one pipeline on tiny synthetic images: each image shows 1-2 coloured squares,
one label per colour. Train, metrics (mAP, F1 at val-chosen thresholds), predict and evaluate from the
saved model, and the one-line errors of a bad CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.cli import main
from transferlab.data.norm import NormStats
from transferlab.errors import BadFileError, DataError
from transferlab.strategies.model import HeadConfig, TransferModel
from transferlab.tasks.multilabel import (TASK, MultiLabelModel, choose_thresholds, read_multilabel_csv,
                                          region_features, whole_image_transform)
from transferlab.zoo import Preprocessing, create_backbone

from tests.conftest import COLOURS

NAMES = ["red", "green", "blue"]


def _mosaics(root: Path, n: int = 36, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["path,labels"]
    for i in range(n):
        labels = sorted(rng.choice(3, size=1 + i % 2, replace=False).tolist())
        img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        for k, c in enumerate(labels):  # left / right half
            img[8:40, 24 * k + 2 : 24 * k + 22] = COLOURS[c]
        Image.fromarray(img).save(root / f"m{i:02d}.png")
        rows.append(f"m{i:02d}.png,{';'.join(NAMES[c] for c in labels)}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root / "tags.csv"


def test_multilabel_trains_reports_predicts_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    csv = _mosaics(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", str(csv), "--task", "multilabel", "--out", str(run), "--backbone", "mobilenet_v2",
                 "--cut", "4", "--strategy", "feature-extraction", "--epochs", "15", "--lr", "0.01",
                 "--batch-size", "8", "--quiet", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    m = json.loads((run / "metrics.json").read_text())
    assert out["task"] == m["task"] == "multilabel" and set(m["test"]) >= {"map", "micro_f1", "macro_f1"}
    assert m["test"]["map"] > 0.5 and len(m["test"]["thresholds"]) == 3  # coloured squares are easy
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "multilabel" and meta["thresholds"] == m["test"]["thresholds"]
    assert (run / "predictions_test.csv").read_text().startswith("identity,true,predicted,p_")
    assert main(["evaluate", str(run), str(csv), "--subset", "test", "--json", "--quiet", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["map"] == pytest.approx(m["test"]["map"], abs=1e-6)
    assert main(["predict", str(tmp_path / "data" / "m00.png"), "--model", str(run), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)[0]
    assert set(pred["probabilities"]) == set(NAMES) and set(pred["labels"]) <= set(NAMES)
    assert main(["report", str(run)]) == 0
    assert "map" in (run / "report.html").read_text()


def test_bad_multilabel_csv_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    csv = _mosaics(tmp_path / "data", n=4)
    first = csv.read_text().splitlines()[1].split(",")[1]  # the first image's one label
    allowed = [n for n in NAMES if n != first]
    with pytest.raises(DataError, match=rf"tags.csv:2: unknown label '{first}'; expected one of {', '.join(allowed)}$"):
        read_multilabel_csv(csv, allowed=allowed)
    empty = tmp_path / "data" / "empty.csv"
    empty.write_text("path,labels\nm00.png,red\nm01.png, ; \n")
    assert main(["train", str(empty), "--task", "multilabel", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {empty}:3: empty label list for m01.png (expected labels separated by ';')"]
    assert main(["train", str(csv), "--task", "multilabel", "--labels", ",".join(allowed),
                 "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {csv}:2: unknown label '{first}'; expected one of {', '.join(allowed)}"]


def test_eval_input_is_the_whole_image_not_a_centre_crop():
    pp = Preprocessing(32, 40, (0.5,) * 3, (0.5,) * 3)
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, :4] = 255  # a label at the left edge: a resize-then-centre-crop (32 of 40 px) would drop it
    x = whole_image_transform(pp, norm=NormStats("pretrained", pp.mean, pp.std))(Image.fromarray(img))
    assert x.shape == (3, 32, 32) and float(x[:, :, 0].min()) > 0.9 and float(x[:, :, 8:].max()) < -0.9


def test_region_head_scores_each_window_and_keeps_the_highest():
    x = torch.zeros(1, 2, 7, 7)
    x[0, 0, :4, :4] = 1.0  # channel 0 only in the top-left window
    r = region_features(x, 2)
    assert r.shape == (1, 5, 2) and r[0, 1, 0] == 1.0 and r[0, 0, 0] == pytest.approx(16 / 49)
    assert r[0, 4, 0] == pytest.approx(1 / 16)  # the bottom-right window overlaps it in one cell
    bb = create_backbone("mobilenet_v2", pretrained=False)
    torch.manual_seed(0)
    one = MultiLabelModel(backbone=bb, num_classes=3, head=HeadConfig(dropout=0.0), cut=4, regions=1).eval()
    plain = TransferModel(backbone=bb, num_classes=3, head=HeadConfig(dropout=0.0), cut=4).eval()
    plain.load_state_dict(one.state_dict())
    two = MultiLabelModel(backbone=bb, num_classes=3, head=HeadConfig(dropout=0.0), cut=4, regions=2).eval()
    two.load_state_dict(one.state_dict())
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(one(img), plain(img))  # regions 1 = the global average of the classification head
        feats = region_features(one.stages(img), 2)
        assert torch.allclose(two(img), one.head(feats).amax(1)) and bool((two(img) >= one(img) - 1e-6).all())


def test_a_multilabel_model_file_without_the_whole_image_geometry_is_refused():
    bb = create_backbone("mobilenet_v2", pretrained=False)
    meta = {"backbone": "mobilenet_v2", "cut": 4, "head": HeadConfig().to_dict(), "num_classes": 3}
    with pytest.raises(BadFileError, match="predates the whole-image input and the region head; train it again"):
        TASK.model_from_meta(meta, bb)
    model = TASK.model_from_meta({**meta, "regions": 2, "geometry": "whole", "thresholds": [0.5] * 3}, bb)
    assert model.regions == 2 and TASK.model_meta(model)["regions"] == 2


def test_thresholds_are_chosen_per_class_on_val():
    probs = np.array([[0.9, 0.45], [0.3, 0.4], [0.6, 0.1], [0.2, 0.35]])
    truth = np.array([[1, 1], [0, 1], [1, 0], [0, 0]])
    assert choose_thresholds(probs, truth) == [0.5, 0.4]  # ties: the lowest threshold
