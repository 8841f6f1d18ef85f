"""Importing the package, its errors and building the CLI's --help load neither torch, timm nor scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys, contextlib, io
import transferlab, transferlab.errors, transferlab.tasks, transferlab.strategies
from transferlab.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "timm", "sklearn") if m in sys.modules))
"""


def test_help_and_errors_are_cheap():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
