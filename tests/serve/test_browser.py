"""The web page in a real browser: headless Debian chromium driven by Playwright, a real flowers17 photo."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.export.helpers import copy_run, session_run
from tests.serve.conftest import png_bytes
from tests.serve.live import live_server

CHROMIUM = Path(os.environ.get("TRANSFERLAB_CHROMIUM", "/usr/bin/chromium"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: `make setup` installs Debian's chromium when apt is usable as root")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the 'test' extra) is not installed")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: chromium refuses to start as root with its sandbox (CI runs as root).
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory: pytest.TempPathFactory, browser: object) -> Path:
    """The session's flowers17 run (trained and exported here), copied with a report to link to."""
    run = copy_run(session_run(tmp_path_factory, "flowers-onnx"), tmp_path_factory.mktemp("page") / "run")
    (run / "report.html").write_text("<html><body><h1>report of this run</h1></body></html>")
    (run / "figures").mkdir()
    (run / "figures" / "confusion.png").write_bytes(png_bytes((40, 30), (20, 90, 200)))
    return run


def _correct_test_photo(run: Path) -> tuple[Path, str]:
    """A photo of the run's test split that the model (PyTorch) classifies correctly, with its class."""
    from transferlab.data import load_image
    from transferlab.export import open_predictor

    pred = open_predictor(run, runtime="torch")
    for line in (run / "split_test.txt").read_text().splitlines():
        ident, cname = line.split("\t")
        top = pred.predict([load_image(ident, draft_size=pred.draft_size)], top=1)[0][0]
        if top["label"] == cname:
            return Path(ident), cname
    raise AssertionError("the flowers17 model classifies none of its test photos correctly")


def test_page_uploads_a_flowers17_photo_and_shows_its_class(browser, flowers_run: Path, tmp_path: Path) -> None:
    photo, label = _correct_test_photo(flowers_run)
    meta = json.loads((flowers_run / "model.json").read_text())
    assert meta["onnx"]["parity"]["max_abs_diff"] < 1e-4  # real photos, full mobilenet_v2
    upload = tmp_path / f"upload{photo.suffix}"
    shutil.copyfile(photo, upload)
    with live_server(flowers_run, "--runtime", "onnx", log=tmp_path / "server.log") as (base, proc):
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('mobilenet_v2')")
        assert "17 classes" in page.inner_text("#model-name")

        # Pick a file: the top-1 class appears, with five probability bars.
        page.set_input_files("#file-input", str(upload))
        card = page.wait_for_selector(".result[data-top1]", timeout=60_000)
        assert card.get_attribute("data-top1") == label
        assert page.locator(".result .bar").count() == 5
        assert page.locator(".result .bar .label").first.inner_text() == label
        assert label in page.inner_text("#results")
        width = page.locator(".result .bar .fill").first.evaluate("e => parseFloat(e.style.width)")
        assert 5.0 < width <= 100.0
        assert "Classified 1 of 1" in page.inner_text("#status")

        # Drop a file on the drop zone: a second card, same class.
        data = base64.b64encode(upload.read_bytes()).decode()
        dt = page.evaluate_handle(
            """([b64, name]) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
                return dt; }""",
            [data, "dropped.jpg"])
        page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
        page.wait_for_function("document.querySelectorAll('.result').length === 2")
        assert page.locator(".result").first.get_attribute("data-file") == "dropped.jpg"
        assert page.locator(".result").first.get_attribute("data-top1") == label

        # A file that is not an image: the page shows the server's 4xx message, no new card.
        bogus = tmp_path / "bogus.jpg"
        bogus.write_bytes(b"definitely not a jpeg")
        page.set_input_files("#file-input", str(bogus))
        page.wait_for_function("document.getElementById('status').classList.contains('error')")
        assert "Error 422 (not_an_image)" in page.inner_text("#status")
        assert page.locator(".result").count() == 2

        # The run's report is linked and its figures embedded.
        assert page.get_attribute("#report-html", "href") == "/report"
        page.wait_for_function("Array.from(document.querySelectorAll('#report-figures img'))"
                               ".every(i => i.complete && i.naturalWidth === 40)")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert errors == [] and proc.poll() is None

        # The OpenAPI docs render without internet (Swagger UI comes from the app, not a CDN).
        page.goto(base + "/docs")
        op = page.wait_for_selector(".opblock-summary-path[data-path='/predict']", timeout=30_000)
        assert op.inner_text().strip() == "/predict"
        page.screenshot(path=str(tmp_path / "docs.png"))
