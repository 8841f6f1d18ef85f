"""Multi-label through the one pipeline on tiny synthetic images: each image shows 1-2 coloured squares,
one label per colour. Train, metrics (mAP, F1 at val-chosen thresholds), predict and evaluate from the
saved model, and the one-line errors of a bad CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.cli import main
from transferlab.errors import DataError
from transferlab.tasks.multilabel import choose_thresholds, read_multilabel_csv

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


def test_thresholds_are_chosen_per_class_on_val():
    probs = np.array([[0.9, 0.45], [0.3, 0.4], [0.6, 0.1], [0.2, 0.35]])
    truth = np.array([[1, 1], [0, 1], [1, 0], [0, 0]])
    assert choose_thresholds(probs, truth) == [0.5, 0.4]  # ties: the lowest threshold
