"""The open zoo: any timm model as --backbone timm:NAME, weights from a file or the Hugging Face cache.

Offline: the "pretrained" weights are a random init saved to a file (or into a Hugging Face cache
layout built here), so the tests check the plumbing (stages, preprocessing, loading, every strategy
end to end), not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import transferlab
from transferlab.cli import main
from transferlab.errors import ConfigError, WeightsNotFoundError
from transferlab.strategies.plans import FEATURE_BASELINES, STRATEGIES
from transferlab.zoo import create_backbone
from tests.conftest import make_image_folder

FEW = dict(epochs=1, finetune_epochs=1, scratch_epochs=1, thaw_epochs=1, unfreeze=1, batch_size=8,
           device="cpu", quiet=True, split="0.5,0.25,0.25")


def _saved_weights(arch: str, path: Path) -> Path:
    import timm

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model(arch).state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("timm") / "data", classes=3, per_class=4, size=32)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_every_strategy_end_to_end(arch: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    weights = _saved_weights(arch, tmp_path / f"{arch}.safetensors")
    bb = create_backbone(f"timm:{arch}", weights=weights)
    assert bb.weights.source == f"file {weights}" and bb.preprocessing.input_size == 224
    if arch.startswith("vit"):
        assert bb.stage_names == ["embed", "blocks1-3", "blocks4-6", "blocks7-9", "blocks10-12"]
        assert bb.preprocessing.mean == (0.5, 0.5, 0.5) and bb.preprocessing.interpolation == "bicubic"
    else:
        assert bb.stage_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    for strategy in (s for s in STRATEGIES if s not in FEATURE_BASELINES):  # hog-svm uses no backbone
        run = transferlab.train(str(data), out=tmp_path / strategy, backbone=f"timm:{arch}", weights=str(weights),
                                strategy=strategy, **FEW)
        assert run.metrics["backbone"] == f"timm:{arch}" and 0.0 <= run.test_accuracy <= 1.0, strategy
        assert (tmp_path / strategy / "model.safetensors").is_file()
    # a saved run loads back into the same stages (the model is rebuilt from its name)
    from transferlab.experiments.inference import predict_images

    image = next(data.glob("class_0/*.png"))
    top = predict_images([str(image)], model_dir=tmp_path / "fine-tune", top=1)[0]["top"][0]
    assert top["label"] in {"class_0", "class_1", "class_2"}


def test_weights_from_a_hugging_face_cache_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFERLAB_OFFLINE", "1")
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    with pytest.raises(WeightsNotFoundError, match=r"Hugging Face cache timm/resnet18\.a1_in1k \(not found\).*"
                                                   r"Hugging Face download .* \(network unreachable\)"):
        create_backbone("timm:resnet18")
    repo = hub / "models--timm--resnet18.a1_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    _saved_weights("resnet18", snap / "model.safetensors")
    bb = create_backbone("timm:resnet18")
    assert bb.weights.pretrained and bb.weights.source.startswith("Hugging Face cache: ")
    from safetensors.torch import load_file

    saved = load_file(str(snap / "model.safetensors"))
    assert torch.equal(bb.featurizer.stem[0].weight, saved["conv1.weight"])  # stem = conv1, bn1, act1


def test_bad_timm_names_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet81'.*did you mean"):
        create_backbone("timm:resnet81", pretrained=False)
    out = tmp_path / "never"
    assert main(["train", str(tmp_path), "--out", str(out), "--backbone", "timm:vit_tiny_patch16_2244"]) == 2
    assert "unknown timm model" in capsys.readouterr().err and not out.exists()


def test_models_lists_timm_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--timm", "vit_tiny_patch16_2*"]) == 0
    out = capsys.readouterr().out
    assert "timm:vit_tiny_patch16_224 " in out and "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in out
