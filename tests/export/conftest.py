"""Fixtures: a tiny trained run, and a copy of it exported to ONNX, each made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="ONNX export tests need the 'export' extra (make setup installs it)")
pytest.importorskip("onnxscript", reason="ONNX export tests need the 'export' extra (make setup installs it)")

from tests.export.helpers import session_run  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Never modify it: copy it with ``copy_run`` first."""
    return session_run(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Never modify it: copy it with ``copy_run`` first."""
    return session_run(tmp_path_factory, "tiny-onnx")
