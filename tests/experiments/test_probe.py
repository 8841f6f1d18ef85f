"""probe-layers: the recommendation rule, one forward pass for all stages, per-stage probes, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.conftest import make_image_folder
from transferlab.cli import main
from transferlab.errors import ConfigError
from transferlab.experiments.probe import (
    PROBE_JSON,
    PROBE_PNG,
    ProbeOptions,
    StageFeatures,
    advice_from_probe,
    format_probe_table,
    parse_resolutions,
    pooled_stage_features,
    probe_layers,
    probe_stages,
    transfer_point,
)
from transferlab.options import DataOptions
from transferlab.zoo import create_backbone

SHARED_DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


pytestmark = pytest.mark.usefixtures("offline_cache")


# ----------------------------------------------------------------------------- the rule

@pytest.mark.parametrize(("acc", "point"), [
    ([0.30, 0.50, 0.70, 0.90], 4),              # still rising at the end: keep every stage
    ([0.30, 0.80, 0.90, 0.905, 0.91], 3),       # stops rising (within 0.01 of the best) at stage 3
    ([0.30, 0.85, 0.92, 0.80, 0.60], 3),        # peaks, then falls
    ([0.30, 0.90, 0.85, 0.95], 4),              # a dip is not a stop: the best comes later
    ([0.70, 0.70, 0.70], 1),                    # flat: the first stage already has it
])
def test_transfer_point_is_where_accuracy_stops_rising_or_falls(acc: list[float], point: int) -> None:
    assert transfer_point(acc, tolerance=0.01) == point


def test_tolerance_moves_the_point() -> None:
    acc = [0.5, 0.90, 0.93, 0.95]
    assert transfer_point(acc, tolerance=0.0) == 4
    assert transfer_point(acc, tolerance=0.03) == 3
    assert transfer_point(acc, tolerance=0.06) == 2


@pytest.mark.parametrize(("acc", "tol", "match"), [
    ([], 0.01, "at least one stage"),
    ([0.5, 1.2], 0.01, r"accuracies in \[0, 1\]"),
    ([0.5, float("nan")], 0.01, r"accuracies in \[0, 1\]"),
    ([0.5], -0.1, "--tolerance must be in"),
])
def test_transfer_point_rejects_bad_input(acc: list[float], tol: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        transfer_point(acc, tolerance=tol)


def test_advice_cut_unfreeze_and_fall() -> None:
    rows = [{"name": f"s{k}", "val_accuracy": a} for k, a in enumerate([0.3, 0.8, 0.9, 0.7, 0.6], 1)]
    a = advice_from_probe(rows)
    assert (a.point, a.stage, a.cut, a.unfreeze, a.best_stage, a.falls_after) == (3, "s3", 3, 2, "s3", True)
    assert "falls" in a.reason and "s3" in a.reason
    rising = advice_from_probe([{"name": "a", "val_accuracy": 0.4}, {"name": "b", "val_accuracy": 0.9}])
    assert (rising.cut, rising.unfreeze, rising.falls_after) == (2, 0, False)
    assert "feature extraction" in rising.reason
    # the rule reads validation accuracy only: a test column cannot move it
    rows_with_test = [{**r, "test_accuracy": 1.0 - r["val_accuracy"]} for r in rows]
    assert advice_from_probe(rows_with_test) == a


# ----------------------------------------------------------------------------- features and probes

def test_one_forward_pass_per_image_gives_every_stage_pooled() -> None:
    torch.manual_seed(0)
    bb = create_backbone("small_cnn", pretrained=False).eval()
    x = torch.randn(10, 3, 28, 28)
    calls = {name: 0 for name in bb.stage_names}
    seen = {name: 0 for name in bb.stage_names}

    def hook(name: str):
        def f(module, inputs, output):  # noqa: ANN001, ANN202
            calls[name] += 1
            seen[name] += inputs[0].shape[0]
        return f

    for name in bb.stage_names:
        bb.stage(name).register_forward_hook(hook(name))
    feats = pooled_stage_features(bb.featurizer, TensorDataset(x, torch.arange(10)), batch_size=4)
    assert feats.images == 10
    assert all(calls[n] == 3 for n in bb.stage_names)  # 3 batches, each stage once per batch
    assert all(seen[n] == 10 for n in bb.stage_names)  # every image exactly once through every stage
    assert feats.labels.tolist() == list(range(10))
    # each stage's features are the global average pool of that stage's output
    with torch.inference_mode():
        h = x
        for k, stage in enumerate(bb.featurizer):
            h = stage(h)
            assert feats.features[k].shape == (10, h.shape[1])
            np.testing.assert_allclose(feats.features[k], h.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def _stage_features(rng: np.random.Generator, y: np.ndarray) -> StageFeatures:
    noise = rng.normal(size=(y.size, 6)).astype(np.float32)
    signal = np.eye(3, dtype=np.float32)[y] * 5 + rng.normal(scale=0.1, size=(y.size, 3)).astype(np.float32)
    return StageFeatures(features=[noise, signal], labels=y, forward_s=[0.5, 0.25], images=y.size)


def test_probe_stages_measures_each_stage_separately() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    tr, va, te = (_stage_features(rng, y) for _ in range(3))
    rows = probe_stages(tr, va, te, names=["noise", "signal"], num_classes=3)
    assert [r["name"] for r in rows] == ["noise", "signal"]
    assert [r["width"] for r in rows] == [6, 3]
    assert rows[1]["val_accuracy"] == 1.0 and rows[1]["test_accuracy"] == 1.0
    assert rows[0]["test_accuracy"] < 0.6  # chance is 1/3
    assert rows[0]["forward_s"] == pytest.approx(1.5) and rows[1]["forward_s"] == pytest.approx(0.75)
    assert rows[0]["seconds"] == pytest.approx(rows[0]["forward_s"] + rows[0]["fit_s"], abs=2e-3)


def test_parse_resolutions() -> None:
    assert parse_resolutions("160,224", default=1) == [160, 224]
    assert parse_resolutions(None, default=224) == [224]
    for bad, match in (("160,x", "comma-separated integers"), ("8", ">= 16"), ("64,64", "twice"), ("", ">= 16")):
        with pytest.raises(ConfigError, match=match):
            parse_resolutions(bad, default=224)


# ----------------------------------------------------------------------------- the command

def test_probe_layers_writes_json_and_plot_for_every_resolution(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=8, size=40)
    out = tmp_path / "probe"
    res = probe_layers(str(data), out=out, options=ProbeOptions(backbone="mobilenet_v2", resolutions="32,48"),
                       data_options=DataOptions(quiet=True))
    on_disk = json.loads((out / PROBE_JSON).read_text())
    assert on_disk["stages"] == res["stages"]
    names = create_backbone("mobilenet_v2", pretrained=False).stage_names
    assert [r["resolution"] for r in on_disk["resolutions"]] == [32, 48]
    assert on_disk["resolution"] == 32 and on_disk["stages"] == on_disk["resolutions"][0]["stages"]
    widths = [c for c, _, _ in create_backbone("mobilenet_v2", pretrained=False).stage_shapes(input_size=32).values()]
    for r in on_disk["resolutions"]:
        assert [s["name"] for s in r["stages"]] == names  # shallow to deep
        assert [s["width"] for s in r["stages"]] == widths
        for s in r["stages"]:
            assert {"name", "width", "val_accuracy", "test_accuracy", "seconds"} <= s.keys()
            assert 0.0 <= s["val_accuracy"] <= 1.0 and 0.0 <= s["test_accuracy"] <= 1.0 and s["seconds"] >= 0
    # one forward pass per image and resolution, all stages at once
    assert on_disk["forward_images"] == 2 * sum(on_disk["split"]["sizes"].values()) == 2 * 24
    assert on_disk["weights"].startswith("package ")
    advice = on_disk["advice"]
    assert advice["cut"] + advice["unfreeze"] == len(names)
    assert advice["point"] == transfer_point([s["val_accuracy"] for s in on_disk["stages"]])
    assert (out / PROBE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_probe_table(on_disk)
    assert table.count("\n") == 1 + 2 * len(names) and "| 48 | 9 | conv_head | 1280 |" in table


def test_cli_probe_layers_prints_table_and_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=8, size=40)
    out = tmp_path / "p"
    assert main(["probe-layers", str(data), "--backbone", "mobilenet_v2", "--resolutions", "32", "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| 32 | 1 | stem |" in printed and "advice:" in printed and (out / PROBE_PNG).is_file()
    assert main(["probe-layers", str(data), "--backbone", "mobilenet_v2", "--resolutions", "32,abc",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resolutions must be comma-separated integers") and "\n" not in err
    assert main(["probe-layers", str(data), "--backbone", "small_cnn", "--out", str(out)]) == 2
    assert "no pretrained weights for 'small_cnn'" in capsys.readouterr().err


@pytest.mark.slow
def test_flowers17_last_stage_is_accurate_and_early_stages_are_not(tmp_path: Path) -> None:
    root = SHARED_DATASETS / "flowers17"
    if not root.is_dir():
        pytest.skip(f"real dataset flowers17 not found at {root} (integration data absent)")
    res = probe_layers(str(root), out=tmp_path / "p", options=ProbeOptions(backbone="mobilenet_v2", resolutions="160"),
                       data_options=DataOptions(quiet=True))
    acc = [s["test_accuracy"] for s in res["stages"]]
    assert acc[-1] >= 0.85
    assert max(acc[:3]) < acc[-1] - 0.25


def test_probe_layers_second_run_reads_the_shared_feature_cache(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    opts = ProbeOptions(backbone="mobilenet_v2", resolutions="32")
    first = probe_layers(str(data), out=tmp_path / "a", options=opts, data_options=DataOptions(quiet=True))
    second = probe_layers(str(data), out=tmp_path / "b", options=opts, data_options=DataOptions(quiet=True))
    assert first["forward_images"] == 24 and second["forward_images"] == 0
    assert [r["val_accuracy"] for r in second["stages"]] == [r["val_accuracy"] for r in first["stages"]]
    assert [r["test_accuracy"] for r in second["stages"]] == [r["test_accuracy"] for r in first["stages"]]
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 3  # train, val, test
