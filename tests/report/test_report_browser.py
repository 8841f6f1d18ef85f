"""The report in a real browser: headless Chromium via Playwright loads it, every image renders,
and the console stays clean. Skipped when Playwright or a Chromium binary is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import make_image_folder
from transferlab.experiments.compare import compare
from transferlab.options import DataOptions, TrainOptions
from transferlab.report import build_report

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                             "(pip install playwright)")
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary on PATH (apt-get install chromium)")


def test_report_renders_in_headless_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERLAB_OFFLINE", "1")
    out = tmp_path / "cmp"
    compare(str(make_image_folder(tmp_path / "data", size=32, seed=3)), strategies="scratch,feature-extraction", seeds=1, out=out,
            data_options=DataOptions(quiet=True),
            train_options=TrainOptions(backbone="mobilenet_v2", cut=2, epochs=2, scratch_epochs=2))
    page_path = build_report(out)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.id, i.complete, i.naturalWidth])")
        title = page.title()
        browser.close()
    assert title.startswith("transferlab compare")
    assert len(widths) >= 4  # learning curves, three benefits, confusion, timings (+ misclassified)
    assert all(complete and width > 0 for _, complete, width in widths), widths
    assert errors == []
