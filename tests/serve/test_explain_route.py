"""POST /explain (heatmap overlays) in-process, and the web page's heatmap toggle in headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.export.helpers import FLOWERS17
from tests.serve.conftest import png_bytes
from tests.serve.live import live_server
from transferlab.serve import ServeLimits, create_app

LIMITS = ServeLimits(max_upload_bytes=200_000, max_pixels=1_000_000, max_files=2, timeout_s=20)
CHROMIUM = Path(os.environ.get("TRANSFERLAB_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture(scope="module")
def client(exported_run: Path) -> TestClient:
    return TestClient(create_app(exported_run, runtime="onnx", limits=LIMITS))


def _decode(data_url: str) -> Image.Image:
    head, b64 = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_explain_returns_an_overlay_per_image(client: TestClient, good_png: tuple[str, bytes]) -> None:
    label, data = good_png
    r = client.post("/explain", files=[("files", ("a.png", data, "image/png")), ("files", ("b.png", data, "image/png"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "gradcam" and [e["file"] for e in body["explanations"]] == ["a.png", "b.png"]
    e = body["explanations"][0]
    assert e["predicted"] == e["target"] == label and 0 < e["probability"] <= 1
    size = client.get("/model").json()["preprocessing"]["input_size"]
    assert _decode(e["overlay"]).size == (size, size)
    r = client.post("/explain", params={"method": "gradcam++", "target": "class_0"},
                    files={"file": ("a.png", data, "image/png")})
    assert r.status_code == 200 and r.json()["explanations"][0]["target"] == "class_0"


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"files": [("files", (f"{i}.png", png_bytes((8, 8)), "image/png")) for i in range(3)]}, 400, "too_many_files"),
    ({"files": {"file": ("big.png", os.urandom(300_000), "image/png")}}, 413, "too_large"),
    ({"files": {"file": ("a.png", png_bytes((8, 8)), "image/png")}, "params": {"target": "nope"}}, 400,
     "bad_parameter"),
    ({"files": {"file": ("a.png", png_bytes((8, 8)), "image/png")}, "params": {"method": "lime"}}, 400,
     "bad_parameter"),
    ({"files": {"file": ("a.png", b"not an image", "image/png")}}, 422, "not_an_image"),
])
def test_explain_has_the_limits_and_errors_of_predict(client: TestClient, kwargs: dict, status: int,
                                                      code: str) -> None:
    r = client.post("/explain", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and len(body["message"].splitlines()) == 1


@pytest.mark.slow
def test_page_toggle_shows_the_heatmap_of_an_uploaded_photo(exported_run: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM}: `make setup` installs Debian's chromium when apt is usable as root")
    photos = sorted((FLOWERS17 / "01_daffodil").glob("*.jpg"))[:1] if FLOWERS17.is_dir() else []
    if not photos:
        pytest.skip(f"no flowers17 photo at {FLOWERS17}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the 'test' extra) is not installed")
    upload = tmp_path / "photo.jpg"
    shutil.copyfile(photos[0], upload)
    # --timeout 300: the first /explain loads the PyTorch model; on a crowded 2-core machine that is slow
    with sync_api.sync_playwright() as p, live_server(exported_run, "--runtime", "onnx", "--timeout", "300",
                                                      log=tmp_path / "server.log", startup_s=600) as (base, proc):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('mobilenet_v2')")
        page.set_input_files("#file-input", str(upload))
        page.wait_for_selector(".result[data-top1]", timeout=120_000)
        assert not page.locator(".result img.overlay").is_visible()  # toggle off: the photo
        page.check("#heatmap")
        page.wait_for_function("(() => { const i = document.querySelector('.result img.overlay');"
                               " return i && i.complete && i.naturalWidth > 0; })()", timeout=300_000)
        overlay = page.locator(".result img.overlay")
        assert overlay.is_visible() and not page.locator(".result img.photo").is_visible()
        assert overlay.get_attribute("src").startswith("data:image/png;base64,")
        assert "gradcam heatmap of" in page.inner_text(".result .heat-note")
        page.screenshot(path=str(tmp_path / "heatmap.png"), full_page=True)
        page.uncheck("#heatmap")
        assert page.locator(".result img.photo").is_visible() and not overlay.is_visible()
        browser.close()
        assert errors == [] and proc.poll() is None
