"""int8 export: static quantization calibrated on training images, parity report, served by --runtime onnx."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.export.helpers import copy_run
from transferlab.cli import main
from transferlab.errors import ConfigError
from transferlab.export import INT8_FILE, ExportError, open_predictor, quantize_int8
from transferlab.export.quantize import quantize_bytes


def test_int8_export_report_and_serving(exported_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = copy_run(exported_run, tmp_path / "run")
    assert main(["export", str(run), "--quantize", "int8", "--calibration-images", "8", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)["int8"]
    meta = json.loads((run / "model.json").read_text())
    info = meta["onnx_int8"]
    assert info["file"] == INT8_FILE and info["format"] == "qdq" and info["per_channel"] is True
    assert info["calibration"] == {"method": "minmax", "images": 8, "split": "train", "seed": 0}
    blob = (run / INT8_FILE).read_bytes()
    assert info["onnx_sha256"] == hashlib.sha256(blob).hexdigest()
    parity = info["parity"]
    assert parity["top1_agreement"] >= 0.99 and parity["images"] == printed["n_test"] == 6
    assert parity["test_accuracy_fp32"] - parity["test_accuracy_int8"] <= 0.005
    ops = {n.op_type for n in onnx.load_from_string(blob).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8 = open_predictor(run, runtime="onnx")
    fp32 = open_predictor(run, runtime="onnx", onnx_model="fp32")
    assert int8.model_file == INT8_FILE and fp32.model_file == "model.onnx"
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    assert int8.logits(x).shape == fp32.logits(x).shape == (2, 3)


def test_a_model_that_misses_the_bar_is_not_written(exported_run: Path, tmp_path: Path):
    run = copy_run(exported_run, tmp_path / "run")
    with pytest.raises(ConfigError, match="export .* --quantize int8"):
        open_predictor(run, runtime="onnx", onnx_model="int8")
    # per-tensor percentile ranges clip this tiny model's activations: 2 of 6 test images change class
    with pytest.raises(ExportError, match="misses the parity bar .* top-1 agreement 0.6667"):
        quantize_int8(run, fmt="qoperator", per_channel=False, calibration="percentile", n_calibration=8)
    assert not (run / INT8_FILE).exists() and "onnx_int8" not in json.loads((run / "model.json").read_text())
    assert open_predictor(run, runtime="onnx").model_file == "model.onnx"  # auto: fp32 when no int8 exists
    blob = quantize_bytes(run / "model.onnx", np.zeros((2, 3, 224, 224), np.float32), fmt="qoperator")
    assert "QLinearConv" in {n.op_type for n in onnx.load_from_string(blob).graph.node}
    with pytest.raises(ConfigError, match="--quant-format"):
        quantize_int8(run, fmt="int4")
