"""Export a trained run to TorchScript (``model.torchscript.pt``), parity-checked like ONNX.

The model is traced (``torch.jit.trace``) on real check images, the serialized module is loaded
back and run at the full batch and at batch 1; it is kept only when ``max |logit diff|`` is under
the tolerance and the top-1 classes agree with the eager model (else :class:`ExportError`, nothing
written). ``model.json`` gains a ``"torchscript"`` entry with the parity numbers.

Example:
    >>> r = export_torchscript("runs/flowers")  # doctest: +SKIP
    >>> r.path.name, r.max_abs_diff < 1e-4  # doctest: +SKIP
    ('model.torchscript.pt', True)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from transferlab.data import atomic_write_bytes, atomic_write_text
from transferlab.errors import ConfigError
from transferlab.experiments.artifacts import MODEL_FILE, MODEL_JSON, load_model
from transferlab.export.onnx_export import PARITY_TOLERANCE, ExportError, _check_inputs, file_sha256

TORCHSCRIPT_FILE = "model.torchscript.pt"


@dataclass(frozen=True)
class TorchScriptResult:
    """What :func:`export_torchscript` wrote and how it checked it."""

    path: Path
    max_abs_diff: float
    n_images: int
    batch_sizes: tuple[int, ...]
    seconds: float
    images: list[str]
    tolerance: float = PARITY_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["batch_sizes"] = str(self.path), list(self.batch_sizes)
        return d


def export_torchscript(run_dir: str | os.PathLike[str], *, check_images: Sequence[str | os.PathLike[str]] | None = None,
                       n_check: int = 4, tolerance: float = PARITY_TOLERANCE) -> TorchScriptResult:
    """Write ``RUN_DIR/model.torchscript.pt`` (float32 NCHW normalised input -> logits), checked on real images."""
    if not (isinstance(n_check, int) and n_check >= 1):
        raise ConfigError(f"n_check: expected an integer >= 1, got {n_check!r}")
    t0 = time.perf_counter()
    run = Path(run_dir)
    lm = load_model(run)
    model = lm.model.eval()
    x, names = _check_inputs(lm, run, check_images, n_check)
    example = x if len(x) >= 2 else x.repeat(2, 1, 1, 1)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings (and TorchScript's deprecation notice)
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, buf, _extra_files={"transferlab.json": json.dumps(
                {"classes": lm.classes, "preprocessing": lm.preprocessing.to_dict(),
                 "normalization": lm.norm.to_dict(), "backbone": lm.meta["backbone"]})})
    except Exception as exc:  # the tracer raises many types; one line
        raise ExportError(f"torch.jit.trace failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    blob = buf.getvalue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()
    with torch.no_grad():
        ref = model(x)
        full, single = loaded(x), loaded(x[:1])
    diff = float(max((full - ref).abs().max(), (single - ref[:1]).abs().max()))
    if not diff < tolerance:
        raise ExportError(f"the TorchScript module disagrees with PyTorch: max |logit diff| {diff:.3g} >= "
                          f"{tolerance:g} on {len(x)} images; {TORCHSCRIPT_FILE} not written")
    if not torch.equal(full.argmax(1), ref.argmax(1)):
        raise ExportError(f"TorchScript and PyTorch pick different top-1 classes; {TORCHSCRIPT_FILE} not written")
    path = atomic_write_bytes(run / TORCHSCRIPT_FILE, blob)
    meta = json.loads((run / MODEL_JSON).read_text())
    meta["torchscript"] = {
        "file": TORCHSCRIPT_FILE, "load": "torch.jit.load(path); module(x) -> logits",
        "parity": {"max_abs_diff": diff, "tolerance": float(tolerance), "images": names, "batch_sizes": [1, len(x)]},
        "weights_sha256": file_sha256(run / MODEL_FILE), "torchscript_sha256": hashlib.sha256(blob).hexdigest(),
        "torch": torch.__version__,
    }
    atomic_write_text(run / MODEL_JSON, json.dumps(meta, indent=2))
    return TorchScriptResult(path=path, max_abs_diff=diff, n_images=len(x), batch_sizes=(1, len(x)),
                             seconds=round(time.perf_counter() - t0, 3), images=names, tolerance=float(tolerance))
