"""Fixtures for the server tests: an exported tiny run and test clients over it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="server tests need the 'serve' extra (make setup installs it)")
pytest.importorskip("multipart", reason="server tests need the 'serve' extra (python-multipart)")
pytest.importorskip("httpx", reason="server tests need httpx from the 'test' extra")
pytest.importorskip("onnxruntime", reason="server tests need the 'export' extra (make setup installs it)")
pytest.importorskip("onnxscript", reason="server tests need the 'export' extra (make setup installs it)")

from tests.export.helpers import session_run  # noqa: E402


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run with a checked model.onnx; copy it before modifying it."""
    return session_run(tmp_path_factory, "tiny-onnx")


@pytest.fixture(scope="session")
def good_png(exported_run: Path) -> tuple[str, bytes]:
    """(true class, PNG bytes) of one training-data image of the tiny run."""
    import json

    data = Path(json.loads((exported_run / "config.json").read_text())["data"])
    path = sorted((data / "class_2").glob("*.png"))[0]
    return "class_2", path.read_bytes()


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()
