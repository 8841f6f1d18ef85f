"""int8 for deployment: ONNX Runtime static quantization calibrated on the run's training images.

The fp32 ``model.onnx`` (exported and checked first when missing) is quantized with
``onnxruntime.quantization.quantize_static``; activation ranges come from training images
(never test images). The int8 model is then compared with the fp32 model on the run's test split:
top-1 agreement and test accuracy of both. Unless agreement >= :data:`MIN_AGREEMENT` and the
accuracy drop <= :data:`MAX_ACCURACY_DROP`, :class:`~transferlab.export.ExportError` is raised and
nothing is written; on success ``RUN_DIR/model.int8.onnx`` is written and ``model.json`` gains an
``"onnx_int8"`` entry with the parity report.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import atomic_write_bytes, atomic_write_text, load_split, open_dataset
from transferlab.errors import ConfigError, TransferlabError
from transferlab.experiments.artifacts import MODEL_FILE, MODEL_JSON, load_model
from transferlab.export._deps import require
from transferlab.export.onnx_export import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, ExportError, export_onnx, file_sha256

__all__ = ["CALIBRATIONS", "FORMATS", "INT8_FILE", "MAX_ACCURACY_DROP", "MIN_AGREEMENT", "QuantizeResult",
           "quantize_int8"]

INT8_FILE = "model.int8.onnx"
FORMATS = ("qdq", "qoperator")
CALIBRATIONS = ("minmax", "entropy", "percentile")
#: int8 must pick the fp32 model's top-1 class on at least this fraction of the test images ...
MIN_AGREEMENT = 0.99
#: ... and lose at most this much test accuracy (0.005 = half a point).
MAX_ACCURACY_DROP = 0.005


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_int8` wrote and how the int8 model compares with fp32 on the test split.

    Example:
        >>> QuantizeResult(Path("r/model.int8.onnx"), "qdq", True, "minmax", 128, 0.997, 0.96, 0.962, 340, 9.0).ok
        True
    """

    path: Path
    format: str
    per_channel: bool
    calibration: str
    n_calibration: int
    top1_agreement: float
    test_accuracy: float
    test_accuracy_fp32: float
    n_test: int
    seconds: float

    @property
    def accuracy_drop(self) -> float:
        return self.test_accuracy_fp32 - self.test_accuracy

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= MIN_AGREEMENT and self.accuracy_drop <= MAX_ACCURACY_DROP + 1e-12

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["accuracy_drop"] = round(self.accuracy_drop, 6)
        return d


def _split_images(run: Path, part: str, n: int | None, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images and labels of the run's ``part`` split (``n``: a seeded, class-stratified subset)."""
    lm = load_model(run)
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    if not cfg.get("data"):
        raise ConfigError(f"{run}: no config.json with the training data; int8 calibration needs the run's images")
    try:
        from transferlab.experiments.train import config_data

        source = open_dataset(config_data(cfg), validate=False)
        idx = np.asarray(getattr(load_split(run, source), part), dtype=np.int64)
    except TransferlabError as exc:
        raise ConfigError(f"cannot read the run's {part} images from {cfg['data']} ({exc})") from None
    if n is not None and n < len(idx):
        from transferlab.experiments.compare import stratified_subset

        idx = stratified_subset(source, idx, n, seed=seed)
    tf, draft = lm.transform(), lm.preprocessing.resize_size
    xs = np.stack([tf(source.load(int(i), draft_size=draft)).numpy() for i in idx]).astype(np.float32)
    return xs, source.labels[idx].astype(np.int64)


def _logits(session: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch]})[0]
                           for i in range(0, len(x), batch)])


def session(blob_or_path: bytes | str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session (``threads``: intra-op threads, None: the library's default)."""
    ort = require("onnxruntime", extra="export", feature="int8 export")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    src = blob_or_path if isinstance(blob_or_path, bytes) else os.fspath(blob_or_path)
    return ort.InferenceSession(src, sess_options=options, providers=["CPUExecutionProvider"])


def quantize_bytes(fp32: Path, calibration: np.ndarray, *, fmt: str = "qdq", per_channel: bool = True,
                   method: str = "minmax") -> bytes:
    """The int8 model (bytes) of the fp32 ONNX file ``fp32``, calibrated on the float32 batch ``calibration``.

    Example:
        >>> blob = quantize_bytes(Path("runs/ft/model.onnx"), x_train[:128])  # doctest: +SKIP
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--quant-format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if method not in CALIBRATIONS:
        raise ConfigError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got {method!r}")
    q = require("onnxruntime.quantization", extra="export", feature="int8 export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([calibration[i : i + 16] for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="transferlab-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quiet = io.StringIO()  # the calibrators print progress on stdout (it would break `export --json`)
        with contextlib.redirect_stdout(quiet):
            quant_pre_process(str(fp32), str(pre))  # shape inference + graph optimisation, as ORT recommends
            q.quantize_static(str(pre), str(out), Reader(),
                              quant_format=q.QuantFormat.QDQ if fmt == "qdq" else q.QuantFormat.QOperator,
                              per_channel=per_channel, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, calibrate_method=methods[method])
        return out.read_bytes()


def quantize_int8(run_dir: str | os.PathLike[str], *, fmt: str = "qdq", per_channel: bool = True,
                  calibration: str = "minmax", n_calibration: int = 128, seed: int = 0) -> QuantizeResult:
    """Write ``RUN_DIR/model.int8.onnx`` after its parity check against fp32 on the test split.

    Example:
        >>> r = quantize_int8("runs/ft")  # doctest: +SKIP
        >>> r.top1_agreement >= 0.99, r.path.name  # doctest: +SKIP
        (True, 'model.int8.onnx')
    """
    if not (isinstance(n_calibration, int) and n_calibration >= 1):
        raise ConfigError(f"--calibration-images: expected an integer >= 1, got {n_calibration!r}")
    if fmt not in FORMATS or calibration not in CALIBRATIONS:
        raise ConfigError(f"--quant-format must be one of {', '.join(FORMATS)} and --calibration one of "
                          f"{', '.join(CALIBRATIONS)}; got {fmt!r} and {calibration!r}")
    ort = require("onnxruntime", extra="export", feature="int8 export")
    t0 = time.perf_counter()
    run = Path(run_dir)
    meta = json.loads((run / MODEL_JSON).read_text()) if (run / MODEL_JSON).is_file() else {}
    if "onnx" not in meta or not (run / ONNX_FILE).is_file() or \
            meta["onnx"].get("weights_sha256") != file_sha256(run / MODEL_FILE):
        export_onnx(run)  # the fp32 model, checked against PyTorch, is what int8 is measured against
        meta = json.loads((run / MODEL_JSON).read_text())
    x_cal, _ = _split_images(run, "train", n_calibration, seed=seed)
    blob = quantize_bytes(run / ONNX_FILE, x_cal, fmt=fmt, per_channel=per_channel, method=calibration)
    x_test, y_test = _split_images(run, "test", None)
    if len(x_test) == 0:
        raise ConfigError(f"{run}: the run's test split is empty; nothing to check the int8 model on")
    ref = _logits(session(run / ONNX_FILE), x_test).argmax(1)
    got = _logits(session(blob), x_test).argmax(1)
    result = QuantizeResult(
        path=run / INT8_FILE, format=fmt, per_channel=per_channel, calibration=calibration,
        n_calibration=int(len(x_cal)), top1_agreement=round(float((ref == got).mean()), 6),
        test_accuracy=round(float((got == y_test).mean()), 6), test_accuracy_fp32=round(float((ref == y_test).mean()), 6),
        n_test=int(len(y_test)), seconds=round(time.perf_counter() - t0, 3))
    if not result.ok:
        raise ExportError(f"int8 ({fmt}, per-channel {per_channel}, {calibration}) misses the parity bar on "
                          f"{result.n_test} test images: top-1 agreement {result.top1_agreement:.4f} (need >= "
                          f"{MIN_AGREEMENT}), accuracy {result.test_accuracy:.4f} vs fp32 {result.test_accuracy_fp32:.4f} "
                          f"(drop <= {MAX_ACCURACY_DROP} allowed); {INT8_FILE} not written")
    atomic_write_bytes(run / INT8_FILE, blob)
    meta["onnx_int8"] = {
        "file": INT8_FILE, "input": INPUT_NAME, "output": OUTPUT_NAME, "format": fmt, "per_channel": per_channel,
        "calibration": {"method": calibration, "images": result.n_calibration, "split": "train", "seed": seed},
        "activations": "uint8 (asymmetric)", "weights": "int8 (symmetric)",
        "parity": {"split": "test", "images": result.n_test, "top1_agreement": result.top1_agreement,
                   "test_accuracy_int8": result.test_accuracy, "test_accuracy_fp32": result.test_accuracy_fp32,
                   "min_agreement": MIN_AGREEMENT, "max_accuracy_drop": MAX_ACCURACY_DROP},
        "weights_sha256": file_sha256(run / MODEL_FILE), "onnx_sha256": hashlib.sha256(blob).hexdigest(),
        "fp32_onnx_sha256": meta["onnx"]["onnx_sha256"], "onnxruntime": ort.__version__, "torch": torch.__version__,
    }
    atomic_write_text(run / MODEL_JSON, json.dumps(meta, indent=2))
    return result
