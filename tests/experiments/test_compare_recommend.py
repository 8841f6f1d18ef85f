"""recommend: the similarity formula, the size/similarity table, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import make_split, open_dataset
from transferlab.cli import main
from transferlab.errors import ConfigError
from transferlab.experiments import recommend as rec_mod
from transferlab.experiments.recommend import bn_similarity, gaussian_kl, recommend


def squares(root: Path, *, per_class: int = 6) -> Path:
    rng = np.random.default_rng(2)
    for c, colour in enumerate([(220, 40, 40), (40, 200, 60)]):
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, size=(32, 40, 3), dtype=np.uint8)
            img[4:20, 4:20] = colour
            Image.fromarray(img).save(d / f"{i}.png")
    return root


pytestmark = pytest.mark.usefixtures("offline_cache")


def test_gaussian_kl_known_values() -> None:
    z, one = torch.zeros(1), torch.ones(1)
    assert float(gaussian_kl(z, one, z, one, eps=0)) == pytest.approx(0.0)
    assert float(gaussian_kl(torch.tensor([2.0]), one, z, one, eps=0)) == pytest.approx(2.0)  # (mu diff)^2 / 2
    assert float(gaussian_kl(z, torch.tensor([4.0]), z, one, eps=0)) == pytest.approx(0.5 * (np.log(0.25) + 3))


def test_bn_similarity_is_one_on_the_source_statistics() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(256, 3, 4, 4) * 2 + 1
    bn = net[0]
    bn.running_mean.copy_(x.mean((0, 2, 3)))
    bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    assert bn_similarity(net, x)["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert bn_similarity(net, x * 5 + 3)["similarity"] < 0.1
    with pytest.raises(ConfigError):
        bn_similarity(torch.nn.Linear(2, 2), torch.zeros(1, 2))


def test_recommend_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = squares(tmp_path / "data")
    small = recommend(str(data), backbone="mobilenet_v2", sample=8)
    m = small["measurements"]
    split = make_split(open_dataset(str(data), quiet=True), fractions=(0.5, 0.25, 0.25), seed=0)
    assert m["train_images_per_class"] == len(split.train) // 2  # what train would use (2 classes)
    assert m["class_counts"] == {"min": 6, "max": 6, "imbalance": 1.0}
    assert m["image_sizes"]["width"] == [40, 40, 40] and m["image_sizes"]["height"] == [32, 32, 32]
    assert 0 < m["similarity"] <= 1
    assert small["quadrant"].startswith("small/")
    monkeypatch.setattr(rec_mod, "SIMILAR_AT", 0.0)  # everything counts as similar
    big = recommend(str(data), backbone="mobilenet_v2", sample=8, train_per_class=500)
    assert (big["quadrant"], big["strategy"], big["unfreeze"]) == ("large/similar", "fine-tune", 4)
    assert recommend(str(data), backbone="mobilenet_v2", sample=8)["compare_entry"] == "fine-tune:unfreeze=3"
    monkeypatch.setattr(rec_mod, "SIMILAR_AT", 1.01)  # nothing is similar
    diff = recommend(str(data), backbone="mobilenet_v2", sample=8)
    assert (diff["quadrant"], diff["strategy"], diff["cut"]) == ("small/different", "linear-probe", None)
    assert diff["compare_entry"] == "linear-probe" and big["compare_entry"] == "fine-tune:unfreeze=4"
    assert any("training images per class" in r for r in diff["reasons"])


def test_recommend_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = squares(tmp_path / "data")
    assert main(["recommend", str(data), "--backbone", "mobilenet_v2", "--sample", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] in ("feature-extraction", "linear-probe", "fine-tune")
    assert main(["recommend", str(data), "--backbone", "mobilenet_v2", "--sample", "1"]) == 2
    assert "error: --sample must be >= 2" in capsys.readouterr().err
