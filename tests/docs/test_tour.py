"""docs/tour.ipynb runs headless (nbclient) and shows what the Python API promises."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_tour_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERLAB_OFFLINE", "1")
    nb = nbformat.read(REPO / "docs" / "tour.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()
    outputs = {i: c.outputs for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    texts = {i: "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outs)
             for i, outs in outputs.items()}
    htmls = [o["data"]["text/html"] for outs in outputs.values() for o in outs if "text/html" in o.get("data", {})]
    assert any("<table>" in h and "test accuracy" in h for h in htmls)  # Run._repr_html_ and the compare table
    printed = next(t for t in texts.values() if t.startswith("Run feature-extraction on mobilenet_v2"))
    assert len(printed.splitlines()) <= 4
    assert any("TrainedModel(" in t for t in texts.values())
    assert any("('model.torchscript.pt', True)" in t for t in texts.values())
    assert any(t.startswith("compare on mobilenet_v2, 1 seeds") for t in texts.values())
