"""ONNX export: parity with PyTorch via ONNX Runtime, dynamic batch, metadata, loud failures, --runtime onnx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.export.helpers import copy_run
from transferlab.cli import main
from transferlab.errors import ConfigError
from transferlab.experiments.artifacts import load_model
from transferlab.experiments.inference import predict_images
from transferlab.export import ExportError, export_onnx, open_predictor, predict_files


def _images(run: Path) -> list[Path]:
    data = Path(json.loads((run / "config.json").read_text())["data"])
    return sorted(data.rglob("*.png"))


def test_export_writes_a_checked_dynamic_batch_model(exported_run: Path) -> None:
    meta = json.loads((exported_run / "model.json").read_text())
    info = meta["onnx"]
    assert info["file"] == "model.onnx" and info["parity"]["max_abs_diff"] < 1e-4
    assert info["parity"]["batch_sizes"] == [1, 4] and len(info["parity"]["images"]) == 4
    # The ONNX file documents itself: classes and preprocessing in its metadata.
    proto = onnx.load(str(exported_run / "model.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["transferlab.classes"]) == meta["classes"] == ["class_0", "class_1", "class_2"]
    assert json.loads(props["transferlab.preprocessing"])["input_size"] == 224
    # Dynamic batch: one session answers batches of 1, 3 and 7 like PyTorch does.
    session = ort.InferenceSession(str(exported_run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    model = load_model(exported_run).model
    for n in (1, 3, 7):
        x = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            ref = model(x).numpy()
        out = session.run(["logits"], {"input": x.numpy()})[0]
        assert out.shape == (n, 3)
        assert np.abs(out - ref).max() < 1e-4


def test_predict_runtime_onnx_matches_torch(exported_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = [str(p) for p in _images(exported_run)[::5]]
    assert main(["predict", "--model", str(exported_run), "--runtime", "onnx", "--json", "--top", "3", *images]) == 0
    onnx_out = json.loads(capsys.readouterr().out)
    torch_out = predict_images(images, model_dir=exported_run, top=3)
    assert [r["image"] for r in onnx_out] == images
    for a, b in zip(onnx_out, torch_out):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert np.allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]], atol=1e-5)
    # The synthetic classes are easy: the top-1 class is the image's folder.
    assert all(r["top"][0]["label"] == Path(r["image"]).parent.name for r in onnx_out)


def test_export_with_explicit_check_images_via_cli(tiny_run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path / "run", with_onnx=False)
    imgs = [str(p) for p in _images(tiny_run)[:3]]
    assert main(["export", str(run), "--format", "onnx", "--check-images", *imgs, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == imgs and result["n_images"] == 3 and result["max_abs_diff"] < 1e-4
    assert (run / "model.onnx").is_file()


def test_parity_failure_is_loud_and_writes_nothing(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run", with_onnx=False)
    before = (run / "model.json").read_text()
    with pytest.raises(ExportError, match=r"disagrees with PyTorch.*not written"):
        export_onnx(run, tolerance=1e-12)
    assert not (run / "model.onnx").exists()
    assert (run / "model.json").read_text() == before


def test_export_without_training_data_asks_for_check_images(tiny_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path / "run", with_onnx=False)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--check-images" in err and len(err.splitlines()) == 1
    assert not (run / "model.onnx").exists()


def test_onnx_runtime_refuses_a_missing_or_stale_export(exported_run: Path, tiny_run: Path, tmp_path: Path) -> None:
    fresh = copy_run(tiny_run, tmp_path / "fresh", with_onnx=False)
    with pytest.raises(ConfigError, match="transferlab export"):
        open_predictor(fresh, runtime="onnx")
    stale = copy_run(exported_run, tmp_path / "stale")
    weights = load_file(str(stale / "model.safetensors"))
    name = next(k for k in weights if k.startswith("head"))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(stale / "model.safetensors"))
    with pytest.raises(ConfigError, match="stale"):
        predict_files(_images(stale)[:1], model_dir=stale, runtime="onnx")
    tampered = copy_run(exported_run, tmp_path / "tampered")
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ConfigError, match="SHA-256"):
        open_predictor(tampered, runtime="onnx")


def test_runtime_onnx_needs_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--backbone", "mobilenet_v2", "--runtime", "onnx", "x.png"]) == 2
    assert "--runtime onnx needs --model" in capsys.readouterr().err
