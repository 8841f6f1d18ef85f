"""A scratch baseline sized for the data: its own architecture and resolution in compare, budgets reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_image_folder
from transferlab.errors import ConfigError
from transferlab.experiments.compare import compare, parse_strategies, variant_options
from transferlab.experiments.demo import DEMO_STRATEGIES, demo_options
from transferlab.options import DataOptions, TrainOptions
from transferlab.report import build_report

pytestmark = pytest.mark.usefixtures("offline_cache")


def test_only_scratch_entries_choose_their_architecture() -> None:
    t = TrainOptions(backbone="mobilenet_v2")
    v = variant_options("scratch:backbone=small_cnn:input-size=32", t)
    assert (v.strategy, v.backbone, v.input_size) == ("scratch", "small_cnn", 32)
    with pytest.raises(ConfigError, match="not per entry"):
        variant_options("fine-tune:backbone=small_cnn", t)


def test_demo_scratch_is_small_cnn_at_native_resolution_with_early_stopping() -> None:
    d, t = demo_options(quiet=True)
    names = parse_strategies(list(DEMO_STRATEGIES))
    scratch = [variant_options(n, t) for n in names if n.startswith("scratch")]
    assert [(s.backbone, s.input_size) for s in scratch] == [("small_cnn", None)]  # small_cnn's own 28 px
    assert t.scratch_epochs >= 50 and t.patience < t.scratch_epochs and "hog-svm" in names


def test_scratch_on_its_own_architecture_beside_a_transfer_run(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "cmp"
    res = compare(str(data), strategies="scratch:backbone=small_cnn:input-size=16:scratch-epochs=6,feature-extraction",
                  seeds=1, out=out, data_options=DataOptions(quiet=True),
                  train_options=TrainOptions(backbone="mobilenet_v2", cut=2, epochs=2, patience=3))
    run = res["strategies"]["scratch:backbone=small_cnn:input-size=16:scratch-epochs=6"]["runs"][0]
    assert run["backbone"] == "small_cnn"
    cfg = json.loads((Path(run["run_dir"]) / "config.json").read_text())
    assert cfg["train_options"]["input_size"] == 16 and cfg["plan"]["pretrained"] is False
    model = json.loads((Path(run["run_dir"]) / "model.json").read_text())
    assert model["preprocessing"]["input_size"] == 16
    hist = (Path(run["run_dir"]) / "history.jsonl").read_text().splitlines()
    assert 1 <= len(hist) <= 6  # at most its cap; --patience (val loss) may end it earlier
    # each architecture/resolution preprocesses the images once, in its own store
    assert res["sharing"]["forward_images"] == 2 * sum(res["split"]["sizes"].values())
    page = build_report(out).read_text()
    assert "Budgets" in page and "none (random init)" in page and "ImageNet weights" in page
    assert f"{len(hist)} of 6" in page
