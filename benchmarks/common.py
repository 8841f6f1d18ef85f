"""What every benchmark script shares: the machine's description, a text table and the JSON file.

Example:
    >>> print(table(["name", "img/s"], [["naive", 7.25]]))
    name  img/s
    naive  7.25
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from transferlab.data import atomic_write_text
from transferlab.experiments.compare import machine_info


def machine() -> dict[str, Any]:
    """The compare report's machine description plus what a benchmark table quotes: torch, python, load."""
    return {**machine_info(), "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return "" if v is None else str(v)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A left-aligned first column and right-aligned others, floats rounded for reading."""
    cells = [headers] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in cells)


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    """Write ``results`` atomically to ``path`` (nothing with ``path=None``)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(results, indent=2))
