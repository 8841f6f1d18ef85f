from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from transferlab.errors import ConfigError, WeightsNotFoundError
from transferlab.zoo import count_parameters, create_backbone, get_entry, list_backbones
from transferlab.zoo.weights import WeightsSpec, load_into, resolve_weights, verify_hash_in_name

EXPECTED = {
    "alexnet", "vgg16", "vgg19", "inception_v3", "resnet18", "resnet50", "resnet152", "mobilenet_v2",
    "mobilenet_v3_large", "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    "convnext_tiny",
}
LIGHT = ["resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_lite0",
         "efficientnet_lite1", "efficientnet_lite2", "inception_v3", "convnext_tiny", "alexnet"]


def test_registry_lists_every_entry_with_facts():
    assert EXPECTED <= set(list_backbones())
    for name in EXPECTED:
        e = get_entry(name)
        assert 2010 <= e.year <= 2023
        assert 50 < e.top1 < 90
        assert e.input_size in (224, 240, 260, 299)
        assert len(e.preprocessing.mean) == 3 and all(0 < s < 1 for s in e.preprocessing.std)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_fact_matches_the_built_model(name: str):
    assert count_parameters(get_entry(name).build(False)) == get_entry(name).params


@pytest.mark.parametrize("name", LIGHT)
def test_split_stages_compose_to_the_source_model(name: str):
    bb = create_backbone(name, pretrained=False)
    size = bb.preprocessing.input_size
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        y = bb(x)
        feats = bb.features(x)
    assert y.shape == (1, 1000)
    assert feats.shape == (1, bb.feature_dim)
    assert bb.num_stages >= 4 and len(set(bb.stage_names)) == bb.num_stages
    assert "head" not in bb.stage_names  # 'head' names the new layers in plans
    shapes = list(bb.stage_shapes().values())
    assert shapes[-1][0] == bb.feature_dim


def test_unknown_backbone_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet51'; did you mean resnet50.* expected one of: alexnet"):
        create_backbone("resnet51")


def test_offline_weights_load_from_packages():
    for name in ("mobilenet_v2", "efficientnet_lite0"):
        bb = create_backbone(name)
        assert bb.weights.pretrained and bb.weights.source.startswith("package ")
        assert bb.weights.sha256_prefix is not None


def test_missing_weights_error_lists_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("resnet18")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("explicit file", "torch hub cache", "download", "resnet18-f37072fd.pth", "--weights"):
        assert part in msg


def test_hash_in_name_is_verified(tmp_path: Path):
    good = tmp_path / "w.bin"
    torch.save({"a": torch.ones(2)}, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    named = tmp_path / f"tiny-{digest[:8]}.pth"
    good.rename(named)
    assert verify_hash_in_name(named) == (digest[:8], digest)
    bad = tmp_path / "tiny-deadbeef.pth"
    bad.write_bytes(named.read_bytes())
    with pytest.raises(ValueError, match="does not start with deadbeef"):
        verify_hash_in_name(bad)
    with pytest.raises(WeightsNotFoundError, match="unusable"):
        resolve_weights("tiny", WeightsSpec(), explicit=bad)


def test_explicit_weights_file_and_key_order_mapping(tmp_path: Path):
    src = create_backbone("mobilenet_v2", pretrained=False)
    full = torch.nn.Sequential(src.featurizer, src.classifier)
    renamed = {f"k{i}": v for i, v in enumerate(full.state_dict().values())}
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    bb = create_backbone("mobilenet_v2", weights=path)
    assert bb.weights.source == f"file {path}"
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(bb.eval()(x), src.eval()(x), atol=1e-5)
    with pytest.raises(WeightsNotFoundError, match="do not fit the model"):
        load_into(torch.nn.Linear(2, 2), renamed, name="x")
