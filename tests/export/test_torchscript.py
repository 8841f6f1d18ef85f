"""TorchScript export: checked against PyTorch after loading the file back, like the ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.export.helpers import copy_run
from transferlab.cli import main
from transferlab.experiments.artifacts import load_model


def test_torchscript_export_is_parity_checked(tiny_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    assert main(["export", str(run), "--format", "torchscript", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_diff"] < 1e-4 and result["batch_sizes"] == [1, 4]
    info = json.loads((run / "model.json").read_text())["torchscript"]
    assert info["file"] == "model.torchscript.pt" and info["parity"]["max_abs_diff"] == result["max_abs_diff"]
    extra = {"transferlab.json": ""}
    scripted = torch.jit.load(str(run / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["transferlab.json"])["classes"] == ["class_0", "class_1", "class_2"]
    model = load_model(run).model
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # a batch size never traced
    with torch.no_grad():
        assert (scripted(x) - model(x)).abs().max() < 1e-4
