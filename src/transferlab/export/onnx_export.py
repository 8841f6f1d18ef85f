"""Export a trained run to ONNX and check it against PyTorch with ONNX Runtime before keeping it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data import atomic_write_bytes, atomic_write_text, load_image, load_split, open_dataset
from transferlab.errors import ConfigError, TransferlabError
from transferlab.experiments.artifacts import MODEL_FILE, MODEL_JSON, LoadedModel, load_model
from transferlab.export._deps import require

__all__ = [
    "INPUT_NAME",
    "ONNX_FILE",
    "OUTPUT_NAME",
    "PARITY_TOLERANCE",
    "ExportError",
    "ExportResult",
    "export_onnx",
    "file_sha256",
]

ONNX_FILE = "model.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Largest accepted ``max |logit_onnx - logit_torch|`` on the check images.
PARITY_TOLERANCE = 1e-4
DEFAULT_OPSET = 18


class ExportError(TransferlabError):
    """The exported model could not be produced or disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how it checked it.

    Example:
        >>> ExportResult(Path("r/model.onnx"), 3e-6, 4, (1, 4), 18, 2.5, ["a.jpg"]).ok
        True
    """

    path: Path
    max_abs_diff: float
    n_images: int
    batch_sizes: tuple[int, ...]
    opset: int
    seconds: float
    images: list[str]
    tolerance: float = PARITY_TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < self.tolerance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["batch_sizes"] = list(self.batch_sizes)
        return d


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (used to tie ``model.onnx`` to the ``model.safetensors`` it came from).

    Example:
        >>> import tempfile; p = Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"")
        >>> file_sha256(p)[:8]
        'e3b0c442'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_inputs(lm: LoadedModel, run_dir: Path, images: Sequence[str | os.PathLike[str]] | None,
                  n: int) -> tuple[torch.Tensor, list[str]]:
    """Preprocessed real images: the given files, or up to ``n`` of the run's test split (classes interleaved)."""
    tf, draft = lm.transform(), lm.draft_size
    if images:
        names = [os.fspath(p) for p in images]
        return torch.stack([tf(load_image(p, draft_size=draft)) for p in names]), names
    cfg_path = run_dir / "config.json"
    data = json.loads(cfg_path.read_text()).get("data") if cfg_path.is_file() else None
    hint = "pass check images explicitly (transferlab export RUN_DIR --check-images IMG [IMG ...])"
    if not data:
        raise ConfigError(f"{run_dir}: no config.json with the training data to take check images from; {hint}")
    try:
        source = open_dataset(data, validate=False)
        test = load_split(run_dir, source).test
    except TransferlabError as exc:
        raise ConfigError(f"cannot read the run's test images from {data} ({exc}); {hint}") from None
    if len(test) == 0:
        raise ConfigError(f"{run_dir}: the run's test split is empty; {hint}")
    by_class: dict[int, list[int]] = {}
    for i in test:
        by_class.setdefault(int(source.labels[i]), []).append(int(i))
    picked: list[int] = []
    while len(picked) < min(n, len(test)):
        for members in by_class.values():
            if members and len(picked) < n:
                picked.append(members.pop(0))
    try:
        xs = torch.stack([tf(source.load(i, draft_size=draft)) for i in picked])
    except TransferlabError as exc:
        raise ConfigError(f"cannot decode the run's test images ({exc}); {hint}") from None
    return xs, [source.identity(i) for i in picked]


def _to_onnx_bytes(model: torch.nn.Module, example: torch.Tensor, *, opset: int,
                   metadata: dict[str, str]) -> bytes:
    onnx = require("onnx", extra="export", feature="ONNX export")
    require("onnxscript", extra="export", feature="ONNX export")
    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; report it as one line
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(
    run_dir: str | os.PathLike[str],
    *,
    check_images: Sequence[str | os.PathLike[str]] | None = None,
    n_check: int = 4,
    tolerance: float = PARITY_TOLERANCE,
    opset: int = DEFAULT_OPSET,
) -> ExportResult:
    """Write ``RUN_DIR/model.onnx`` (dynamic batch, float32 NCHW normalised input -> the task's outputs).

    The graph is run with ONNX Runtime on real images (``check_images``, or ``n_check`` images
    of the run's test split) at the full batch and at batch 1 and compared with PyTorch; unless
    ``max |output diff| < tolerance`` (for a calibrated run: of the logits before the division by its
    temperature) and the task's check passes (classification: the top-1 classes agree), :class:`ExportError` is raised
    and nothing is written. On success ``model.json`` gains an ``"onnx"`` entry (file, input and
    output names, opset, parity numbers, SHA-256 of the weights it was exported from).

    Example:
        >>> r = export_onnx("runs/flowers")  # doctest: +SKIP
        >>> r.path.name, r.max_abs_diff < 1e-4  # doctest: +SKIP
        ('model.onnx', True)
    """
    if not (isinstance(n_check, int) and n_check >= 1):
        raise ConfigError(f"n_check: expected an integer >= 1, got {n_check!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ConfigError(f"tolerance: expected a positive number, got {tolerance!r}")
    ort = require("onnxruntime", extra="export", feature="ONNX export")
    t0 = time.perf_counter()
    run = Path(run_dir)
    lm = load_model(run)
    model = lm.scoring_model().eval()  # a calibrated run's graph divides the logits by its temperature
    x, names = _check_inputs(lm, run, check_images, n_check)
    example = x if len(x) >= 2 else x.repeat(2, 1, 1, 1)  # batch 2 keeps the batch axis symbolic
    metadata = {
        "transferlab.classes": json.dumps(lm.classes),
        "transferlab.preprocessing": json.dumps(lm.preprocessing.to_dict()),
        "transferlab.normalization": json.dumps(lm.norm.to_dict()),
        "transferlab.backbone": str(lm.meta["backbone"]),
        **({"transferlab.temperature": repr(lm.temperature)} if lm.temperature is not None else {}),
        "transferlab.task": lm.task.name,
    }
    blob = _to_onnx_bytes(model, example, opset=opset, metadata=metadata)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(blob, sess_options=options, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = model(x).numpy()
    full = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: x[:1].numpy()})[0]
    # A calibrated graph ends in logits / T: compare at the scale of the unscaled logits (x T), so the
    # tolerance means the same for every run.
    scale = lm.temperature or 1.0
    diff = float(max(np.abs(full - ref).max(), np.abs(single - ref[:1]).max())) * scale
    if not np.isfinite(diff) or diff >= tolerance:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch: max |logit diff| {diff:.3g} >= {tolerance:g} "
                          f"on {len(x)} images; {ONNX_FILE} not written")
    problem = lm.task.parity_problem(full, ref)
    if problem is not None:
        raise ExportError(f"{problem}; {ONNX_FILE} not written")
    batch_sizes = (1, len(x))
    path = atomic_write_bytes(run / ONNX_FILE, blob)
    result = ExportResult(path=path, max_abs_diff=diff, n_images=len(x), batch_sizes=batch_sizes, opset=opset,
                          seconds=round(time.perf_counter() - t0, 3), images=names, tolerance=float(tolerance))
    meta = json.loads((run / MODEL_JSON).read_text())
    meta["onnx"] = {
        "file": ONNX_FILE, "input": INPUT_NAME, "output": OUTPUT_NAME, "opset": opset,
        "input_spec": f"float32 [batch, 3, {lm.preprocessing.input_size}, {lm.preprocessing.input_size}], "
                      "RGB in [0, 1] after resize/center-crop, normalised as in 'normalization'",
        "output_spec": lm.task.onnx_output_spec(lm.meta) + (f"; already divided by the calibration temperature "
                                                         f"{lm.temperature:.4f}" if lm.temperature else ""),
        "parity": {"max_abs_diff": diff, "tolerance": float(tolerance), "images": names,
                   "batch_sizes": list(batch_sizes)},
        "weights_sha256": file_sha256(run / MODEL_FILE),
        "onnx_sha256": hashlib.sha256(blob).hexdigest(),
        "torch": torch.__version__, "onnxruntime": ort.__version__,
    }
    atomic_write_text(run / MODEL_JSON, json.dumps(meta, indent=2))
    return result
