from __future__ import annotations

import json
from pathlib import Path

import pytest

from transferlab.cli import main
from transferlab.zoo import list_backbones

CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photo (test extra)")
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])
def test_chelsea_is_a_cat(chelsea: Path, backbone: str, capsys: pytest.CaptureFixture[str]):
    assert main(["predict", str(chelsea), "--backbone", backbone, "--top", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    top = out[0]["top"]
    assert len(top) == 5 and top[0]["index"] in CATS, top
    assert top[0]["probability"] >= top[1]["probability"]


def test_models_json_marks_offline_weights(capsys: pytest.CaptureFixture[str]):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == list_backbones()  # every registered backbone, in registry order
    for name in ("mobilenet_v2", "efficientnet_lite0"):
        assert rows[name]["pretrained_available"] and rows[name]["weights_source"].startswith("package")
