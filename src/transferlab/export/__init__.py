"""Standard-format export of trained runs (ONNX) and runtime-independent prediction.

Example:
    >>> from transferlab.export import export_onnx, open_predictor  # doctest: +SKIP
    >>> export_onnx("runs/flowers").max_abs_diff < 1e-4  # doctest: +SKIP
    True
    >>> open_predictor("runs/flowers", runtime="onnx").classes[:1]  # doctest: +SKIP
    ['01_daffodil']
"""

from transferlab.export._deps import MissingExtraError, require
from transferlab.export.onnx_export import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    ExportError,
    ExportResult,
    export_onnx,
    file_sha256,
)
from transferlab.export.quantize import INT8_FILE, QuantizeResult, quantize_int8
from transferlab.export.runtime import RUNTIMES, Predictor, open_predictor, predict_files, softmax

__all__ = [
    "INPUT_NAME",
    "INT8_FILE",
    "ONNX_FILE",
    "OUTPUT_NAME",
    "PARITY_TOLERANCE",
    "RUNTIMES",
    "ExportError",
    "ExportResult",
    "MissingExtraError",
    "Predictor",
    "QuantizeResult",
    "export_onnx",
    "file_sha256",
    "open_predictor",
    "predict_files",
    "quantize_int8",
    "require",
    "softmax",
]
