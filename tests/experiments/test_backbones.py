"""compare --backbones, LogME ranking under budgets, latency cache, recommend naming a backbone, bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder
from transferlab.cli import main
from transferlab.data import make_split, open_dataset
from transferlab.errors import ConfigError
from transferlab.experiments import backbones as bmod
from transferlab.experiments.backbones import (
    backbone_points,
    compare_backbones,
    latency_table,
    parse_backbones,
    pooled_features,
    rank_backbones,
    within_budget,
)
from transferlab.experiments.recommend import recommend
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions

pytestmark = pytest.mark.usefixtures("offline_cache")
FAKE_LATENCY = {"mobilenet_v2": {"batch_1_ms": 8.0, "batch_32_ms": 120.0, "batch_32_ms_per_image": 3.75,
                                 "load_avg_1m": 1.0},
                "efficientnet_lite0": {"batch_1_ms": 11.0, "batch_32_ms": 200.0, "batch_32_ms_per_image": 6.25,
                                       "load_avg_1m": 1.0}}


def test_bad_backbones_are_one_line_listing_those_with_weights(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'nope'.*efficientnet_lite0"):
        parse_backbones("mobilenet_v2,nope")
    with pytest.raises(ConfigError, match="vgg16 has no ImageNet weights here; those with weights here: mobilenet_v2"):
        parse_backbones("vgg16")
    with pytest.raises(ConfigError, match="twice"):
        parse_backbones("mobilenet_v2,mobilenet_v2")
    data = make_image_folder(tmp_path / "data", size=32)
    assert main(["compare", str(data), "--backbones", "resnet50", "--strategies", "linear-probe", "--out",
                 str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet50 has no ImageNet weights here" in err[0] and "efficientnet_lite2" in err[0]


def test_budgets_that_exclude_every_backbone_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"--max-latency-ms 5 excludes every backbone: mobilenet_v2 \(8.0 ms"):
        within_budget(["mobilenet_v2", "efficientnet_lite0"], max_latency_ms=5, max_params=None,
                      latencies=FAKE_LATENCY)
    assert within_budget(["mobilenet_v2", "efficientnet_lite0"], max_latency_ms=10, max_params=None,
                         latencies=FAKE_LATENCY) == ["mobilenet_v2"]
    with pytest.raises(ConfigError, match="must be > 0"):
        within_budget(["mobilenet_v2"], max_latency_ms=None, max_params=0, latencies={})
    data = make_image_folder(tmp_path / "data", size=32)
    assert main(["recommend", str(data), "--max-params", "1e6", "--sample", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --max-params 1e+06 excludes every backbone: mobilenet_v2 (3.50M")


def test_latency_is_measured_once_per_machine_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    real = bmod.measure_latency

    def counted(name: str, **kw: object) -> dict:
        calls.append(name)
        return real(name, batch_sizes=(1, 2), repeats=1)

    monkeypatch.setattr(bmod, "measure_latency", counted)
    cache = tmp_path / "latency.json"
    first = latency_table(["small_cnn"], cache=cache)
    with caplog.at_level(logging.INFO, logger="transferlab"):
        again = latency_table(["small_cnn"], cache=cache)
    assert calls == ["small_cnn"] and again == first
    assert first["small_cnn"]["batch_1_ms"] > 0 and first["small_cnn"]["machine"]["cpus"]
    assert "latency from" in caplog.text
    monkeypatch.setattr(bmod, "machine_key", lambda: {"cpu": "another machine"})
    latency_table(["small_cnn"], cache=cache)
    assert calls == ["small_cnn", "small_cnn"] and len(json.loads(cache.read_text())["entries"]) == 2


def test_ranking_features_seed_the_cache_a_linear_probe_then_uses(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    src = open_dataset(str(data), quiet=True)
    split = make_split(src, seed=0)
    ranked = rank_backbones(src, split.train, names=["mobilenet_v2"], max_params=4e6)
    assert [r["backbone"] for r in ranked] == ["mobilenet_v2"] and np.isfinite(ranked[0]["logme"])
    assert ranked[0]["images"] == split.train.size
    with caplog.at_level(logging.INFO, logger="transferlab"):
        again = pooled_features(src, split.train, "mobilenet_v2")
        run = run_training(str(data), data_options=DataOptions(quiet=False),  # quiet would mute the log
                           train_options=TrainOptions(backbone="mobilenet_v2", strategy="linear-probe"),
                           source=src, split=split)
    assert again.shape == (split.train.size, 1280)
    # the run's train features are read back, not computed: no second forward pass
    assert "train: features after the last stage" in caplog.text
    assert "read from the on-disk feature cache (no forward pass)" in caplog.text
    assert run.metrics["backbone"] == "mobilenet_v2"


def test_recommend_names_the_best_logme_backbone_within_budget(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    rec = recommend(str(data), backbone=None, sample=4, max_params=4e6)  # only mobilenet_v2 has < 4M
    assert rec["backbone"] == "mobilenet_v2" and rec["backbone_ranking"][0]["backbone"] == "mobilenet_v2"
    assert any("highest LogME" in r and "--max-params 4e+06" in r for r in rec["reasons"])
    with pytest.raises(ConfigError, match="need no --backbone"):
        recommend(str(data), backbone="mobilenet_v2", max_params=4e6)


def test_compare_backbones_crosses_backbones_on_one_split(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "cmp"
    res = compare_backbones(str(data), backbones="mobilenet_v2,efficientnet_lite0", strategies="linear-probe,hog-svm",
                            seeds=1, out=out, latencies=FAKE_LATENCY, data_options=DataOptions(quiet=True),
                            train_options=TrainOptions(batch_size=8))
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "done" and on_disk["backbones"] == ["mobilenet_v2", "efficientnet_lite0"]
    assert list(on_disk["strategies"]) == ["linear-probe@mobilenet_v2", "hog-svm", "linear-probe@efficientnet_lite0"]
    for s in on_disk["strategies"].values():  # every run row names its backbone; hog-svm ran once, without one
        assert all(r["backbone"] == (s["backbone"] or "none") for r in s["runs"])
    splits = {(Path(r["run_dir"]) / "split_test.txt").read_text() for s in res["strategies"].values()
              for r in s["runs"]}
    assert len(splits) == 1
    pts = backbone_points(on_disk)
    assert {(p["backbone"], p["top1"]) for p in pts} == {("mobilenet_v2", 71.878), ("efficientnet_lite0", 74.94)}
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    for fig in ("backbones_top1", "backbones_cost"):
        assert f'id="fig-{fig}"' in page and (out / "figures" / f"{fig}.png").is_file()
    assert "Pareto" in page and "Budgets" in page and "none (HOG + SVM)" in page
