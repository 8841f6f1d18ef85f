"""What runs the frozen prefix: PyTorch, or ONNX Runtime on the CPU after a parity check.

``auto`` (the default) picks ONNX Runtime on the CPU when it is installed and its output on the
first batch agrees with PyTorch's (every element within :data:`PARITY_ATOL` + :data:`PARITY_RTOL` x its
value + :data:`PARITY_SCALE_RTOL` x the batch's largest value), and
PyTorch on CUDA or when the check fails. A verdict for pretrained weights is remembered in
``<feature cache>/parity/`` (keyed by backbone, weights, boundary, preprocessing, normalisation and
the library versions), so the check runs once per combination; the ONNX graph itself is exported
once per process and prefix weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RUNTIMES = ("auto", "torch", "onnx")
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3
#: fp32 summation-order noise grows with the magnitude of what is summed, not of each result: a deep
#: prefix with activations up to ~260 (resnet50, random weights) differs by ~6e-4 on near-zero outputs
PARITY_SCALE_RTOL = 1e-4
#: ONNX Runtime runs a batch this many images at a time when the prefix's weights are small: the
#: activations of a chunk stay in the CPU's cache (a batch of 32 at 224 px is ~150 MB per wide layer of a
#: depthwise network), which took 13-17 % less CPU per image than whole batches of 32 (mobilenet_v2,
#: efficientnet_lite0). Each image's output is bit-identical whatever the chunk.
ORT_CHUNK = 4
#: ... but every chunk streams all the prefix's weights once more: above this many bytes of weights a
#: prefix runs whole batches (resnet50's 90 MiB took 20 % more CPU per image in chunks of 4).
ORT_CHUNK_MAX_WEIGHT_BYTES = 32 << 20
Runner = Callable[[torch.Tensor], torch.Tensor]
_SESSIONS: OrderedDict[tuple[str, int, int], Runner] = OrderedDict()  # (prefix digest, boundary, size)
_MAX_SESSIONS = 4
VERDICTS: dict[tuple[str, int], dict[str, Any]] = {}  # (prefix digest, boundary) -> verdict, this process


def machine_threads() -> int:
    """Cores this process may use, shared among the local torchrun ranks.

    Example:
        >>> machine_threads() >= 1
        True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


def session_options(*, threads: int | None = None, spinning: bool = False) -> Any:
    """ONNX Runtime ``SessionOptions`` for the CPU, shared by every session that runs a frozen prefix.

    ``threads`` intra-op threads (default :func:`machine_threads`), one inter-op thread, and (unless
    ``spinning``) idle pool threads that sleep instead of busy-waiting for the next op, so they do not
    take the cores from the decode worker that runs beside the model.

    Example:
        >>> o = session_options(threads=2)  # doctest: +SKIP
        >>> o.intra_op_num_threads, o.get_session_config_entry("session.intra_op.allow_spinning")  # doctest: +SKIP
        (2, '0')
    """
    from transferlab.export._deps import require

    ort = require("onnxruntime", extra="export", feature="ONNX Runtime feature extraction")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or machine_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def chunked(model: nn.Module, boundary: int) -> bool:
    """Whether ONNX Runtime runs the prefix in chunks of :data:`ORT_CHUNK` (its weights are small enough).

    Example:
        >>> m = nn.Module(); m.stages = nn.Sequential(nn.Linear(2, 2))
        >>> chunked(m, 1)
        True
    """
    stages = list(model.stages)[:boundary]  # type: ignore[attr-defined]
    size = sum(t.numel() * t.element_size() for stage in stages for t in [*stage.parameters(), *stage.buffers()])
    return size <= ORT_CHUNK_MAX_WEIGHT_BYTES


def onnx_available() -> bool:
    """True when onnx and onnxruntime can be imported (the ``export`` extra)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def prefix_digest(model: nn.Module, boundary: int) -> str:
    """SHA-256 over the parameters and buffers of stages ``0..boundary-1`` (what the prefix computes with).

    Example:
        >>> m = nn.Module(); m.stages = nn.Sequential(nn.Linear(2, 2))
        >>> len(prefix_digest(m, 1))
        64
    """
    h = hashlib.sha256(str(boundary).encode())
    for stage in list(model.stages)[:boundary]:  # type: ignore[attr-defined]
        for name, t in [*stage.named_parameters(), *stage.named_buffers()]:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def export_prefix(model: nn.Module, boundary: int) -> bytes:
    """Stages ``0..boundary-1`` as an ONNX graph (TorchScript exporter, batch size dynamic); flags restored.

    Example:
        >>> blob = export_prefix(model, 9)  # doctest: +SKIP
    """
    from transferlab.export._deps import require

    require("onnx", extra="export", feature="ONNX Runtime feature extraction")
    size = int(model.preprocessing.input_size)  # type: ignore[attr-defined]

    class Prefix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model.prefix(x, start=0, stop=boundary)  # type: ignore[operator]

    buf = io.BytesIO()
    flags = [(m, m.training) for m in model.modules()]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(Prefix().eval(), (torch.zeros(1, 3, size, size),), buf, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    finally:
        for m, flag in flags:
            m.training = flag
    return buf.getvalue()


def onnx_prefix(model: nn.Module, boundary: int, *, digest: str, threads: int | None = None) -> Runner:
    """Stages ``0..boundary-1`` exported to ONNX and run in ONNX Runtime (CPU); one session per weights.

    The session takes :func:`session_options`; a batch runs in chunks of :data:`ORT_CHUNK` images
    when :func:`chunked` says so.

    Example:
        >>> run = onnx_prefix(model, 9, digest=prefix_digest(model, 9))  # doctest: +SKIP
        >>> run(torch.zeros(2, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([2, 320, 7, 7])
    """
    size = int(model.preprocessing.input_size)  # type: ignore[attr-defined]
    key = (digest, boundary, size)
    if key in _SESSIONS:
        _SESSIONS.move_to_end(key)
        return _SESSIONS[key]
    from transferlab.export._deps import require

    ort = require("onnxruntime", extra="export", feature="ONNX Runtime feature extraction")
    blob = export_prefix(model, boundary)
    session = ort.InferenceSession(blob, session_options(threads=threads), providers=["CPUExecutionProvider"])
    small = chunked(model, boundary)

    def run(x: torch.Tensor) -> torch.Tensor:
        a = x.contiguous().numpy()
        step = ORT_CHUNK if small else max(len(a), 1)
        outs = [session.run(None, {"x": a[i : i + step]})[0] for i in range(0, max(len(a), 1), step)]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))

    _SESSIONS[key] = run
    while len(_SESSIONS) > _MAX_SESSIONS:
        _SESSIONS.popitem(last=False)
    return run


def parity(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, Any]:
    """How far ``candidate`` is from ``reference`` and whether it is within the parity tolerance.

    Example:
        >>> parity(torch.ones(2, 3), torch.ones(2, 3) + 1e-6)["ok"]
        True
        >>> big = torch.tensor([[260.0, 0.0]])  # 6e-4 off a zero next to 260: summation noise, not a bug
        >>> parity(big, big + torch.tensor([[0.0, 6e-4]]))["ok"], parity(big, big + torch.tensor([[0.0, 0.1]]))["ok"]
        (True, False)
    """
    ref, cand = reference.float(), candidate.float()
    finite = bool(torch.isfinite(cand).all())
    diff = float((ref - cand).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    ok = finite and ref.shape == cand.shape and bool(
        torch.allclose(cand, ref, atol=PARITY_ATOL + PARITY_SCALE_RTOL * scale, rtol=PARITY_RTOL))
    return {"ok": ok, "max_abs_diff": diff if finite else float("nan"), "max_abs_value": scale,
            "atol": PARITY_ATOL, "rtol": PARITY_RTOL, "scale_rtol": PARITY_SCALE_RTOL, "images": int(ref.shape[0])}


def parity_key(fingerprint: dict[str, Any], boundary: int) -> str:
    """File name of a remembered verdict: everything the ONNX/PyTorch agreement depends on."""
    import onnxruntime

    blob = json.dumps({"fp": fingerprint, "boundary": boundary, "torch": torch.__version__,
                       "onnxruntime": onnxruntime.__version__, "atol": PARITY_ATOL, "rtol": PARITY_RTOL,
                       "scale_rtol": PARITY_SCALE_RTOL},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


def load_verdict(path: Path) -> dict[str, Any] | None:
    try:
        verdict = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return verdict if isinstance(verdict, dict) and verdict.get("runtime") in ("torch", "onnx") else None


def save_verdict(path: Path, verdict: dict[str, Any]) -> None:
    from transferlab.data import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(verdict, indent=2))
