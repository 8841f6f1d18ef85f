"""Grad-CAM (pytorch-grad-cam) heatmaps, the Adebayo et al. (2018) sanity check, and `inspect`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from tests.export.helpers import session_run
from transferlab.cli import main
from transferlab.experiments.artifacts import load_model
from transferlab.explain import Explainer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_run(tmp_path_factory, "tiny")


def _images(run: Path, n: int = 6) -> list[Path]:
    data = Path(json.loads((run / "config.json").read_text())["data"])
    return [p for c in sorted(data.iterdir()) for p in sorted(c.glob("*.png"))[:2]][:n]


def test_explain_writes_an_overlay_of_the_input_crop(tiny_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    imgs = _images(tiny_run, 2)
    assert main(["explain", *map(str, imgs), "--model", str(tiny_run), "--out", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    size = load_model(tiny_run).preprocessing.input_size
    for r in res:
        with Image.open(r["overlay"]) as im:
            assert im.size == (size, size) and im.mode == "RGB"
        assert r["target"] == r["predicted"]  # no --target: the predicted class
    assert main(["explain", str(imgs[0]), "--model", str(tiny_run), "--out", str(tmp_path), "--target", "class_2",
                 "--method", "gradcam++", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["target"] == "class_2"


def test_target_not_a_class_is_one_line(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["explain", str(_images(tiny_run, 1)[0]), "--model", str(tiny_run), "--out", str(tmp_path),
               "--target", "class_9"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "'class_9' is not a class of the model" in err


def test_randomising_head_and_top_stages_changes_the_maps(tiny_run: Path) -> None:
    """Adebayo et al. (NeurIPS 2018) cascading randomisation: maps that survive it explain nothing."""
    lm = load_model(tiny_run)
    images = [Image.open(p).convert("RGB") for p in _images(tiny_run, 6)]
    targets = [0, 1, 2] * 2
    original = Explainer.from_run(lm, method="gradcam").explain(images, target=targets)
    randomised = copy.deepcopy(lm)
    torch.manual_seed(0)
    for module in [randomised.model.head, *list(randomised.model.stages)[-2:]]:
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    changed = Explainer.from_run(randomised, method="gradcam").explain(images, target=targets)
    rhos = [spearmanr(a.cam.ravel(), b.cam.ravel()).statistic for a, b in zip(original, changed)]
    rhos = [0.0 if np.isnan(r) else r for r in rhos]
    assert float(np.mean(rhos)) < 0.5, rhos
    # and the same weights give the same maps (the check is not passed by noise)
    again = Explainer.from_run(lm, method="gradcam").explain(images, target=targets)
    assert all(np.allclose(a.cam, b.cam, atol=1e-5) for a, b in zip(original, again))


def test_inspect_a_run_draws_filters_activations_and_the_layer_table(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "insp"
    assert main(["inspect", "--model", str(tiny_run), str(_images(tiny_run, 1)[0]), "--out", str(out)]) == 0
    layers = json.loads((out / "layers.json").read_text())
    model = load_model(tiny_run).model
    assert [r["stage"] for r in layers["layers"]] == ["input", *model.stage_names]
    assert sum(r["params"] for r in layers["layers"]) == sum(p.numel() for p in model.stages.parameters())
    assert all(r["macs"] > 0 for r in layers["layers"][1:])
    assert len(layers["activations"]) == len(model.stage_names)
    for name in ("filters.png", "activations.png"):
        with Image.open(out / name) as im:
            assert im.width > 100


def test_inspect_without_weights_here_needs_random(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  offline_cache: Path) -> None:
    rc = main(["inspect", "--backbone", "small_cnn", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--random" in err
    assert main(["inspect", "--backbone", "small_cnn", "--random", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "filters.png").is_file()


def test_models_describe_prints_the_layer_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--describe", "small_cnn", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert rows[0]["stage"] == "input" and all(len(r["output"]) == 3 for r in rows)
    from transferlab.zoo import create_backbone

    assert sum(r["params"] for r in rows) == sum(p.numel() for p in create_backbone(
        "small_cnn", pretrained=False).featurizer.parameters())
