"""The prediction server in-process (TestClient): routes, every documented 4xx, and serving on after each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.export.helpers import copy_run
from tests.serve.conftest import jpeg_bytes, png_bytes
from transferlab.export import open_predictor
from transferlab.serve import ERRORS, ServeLimits, create_app

LIMITS = ServeLimits(max_upload_bytes=200_000, max_pixels=1_000_000, max_files=4, timeout_s=10)


@pytest.fixture(scope="module")
def client(exported_run: Path) -> TestClient:
    return TestClient(create_app(exported_run, runtime="onnx", limits=LIMITS))


def _assert_good(client: TestClient, good_png: tuple[str, bytes]) -> dict[str, Any]:
    label, data = good_png
    r = client.post("/predict", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"][0]["top"][0]["label"] == label
    return body


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_good_upload_both_runtimes_agree(exported_run: Path, good_png: tuple[str, bytes], runtime: str) -> None:
    c = TestClient(create_app(exported_run, runtime=runtime, limits=LIMITS))
    body = _assert_good(c, good_png)
    pred = body["predictions"][0]
    assert body["runtime"] == runtime and pred["file"] == "x.png" and (pred["width"], pred["height"]) == (48, 48)
    probs = [t["probability"] for t in pred["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    # Same numbers as the library's predictor on the same decoded image.
    ref = open_predictor(exported_run, runtime="torch")
    from transferlab.serve import decode_upload

    expected = ref.predict([decode_upload(good_png[1], name="x", max_pixels=10**6)], top=3)[0]
    assert np.allclose(probs, [t["probability"] for t in expected], atol=1e-5)


def test_several_files_top_k_and_octet_stream(client: TestClient, good_png: tuple[str, bytes]) -> None:
    label, data = good_png
    files = [("files", ("a.png", data, "image/png")), ("files", ("b.jpg", jpeg_bytes((64, 40)), "image/jpeg")),
             ("files", ("c.bin", data, "application/octet-stream"))]
    r = client.post("/predict", params={"top": 1}, files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["file"] for p in preds] == ["a.png", "b.jpg", "c.bin"]
    assert [len(p["top"]) for p in preds] == [1, 1, 1]
    assert preds[0]["top"][0]["label"] == preds[2]["top"][0]["label"] == label
    assert (preds[1]["width"], preds[1]["height"]) == (64, 40)


BAD_UPLOADS: dict[str, tuple[int, str, dict[str, Any]]] = {
    "oversized": (413, "too_large", {"files": {"file": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}}),
    "too many pixels": (413, "too_many_pixels",
                        {"files": {"file": ("huge.png", png_bytes((1100, 1000)), "image/png")}}),
    "extreme aspect ratio": (422, "extreme_aspect_ratio",
                             {"files": {"file": ("strip.png", png_bytes((1, 2000)), "image/png")}}),
    "non-image": (422, "not_an_image", {"files": {"file": ("notes.png", b"these are not pixels", "image/png")}}),
    "wrong content type": (415, "unsupported_media_type", {"files": {"file": ("a.txt", b"hello", "text/plain")}}),
    "json body": (415, "unsupported_media_type", {"json": {"file": "x"}}),
    "no content type": (415, "unsupported_media_type", {"content": b"abc"}),
    "empty body": (400, "empty_body", {"content": b"",
                                       "headers": {"content-type": "multipart/form-data; boundary=b0undary"}}),
    "no boundary": (400, "bad_multipart", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}),
    "no file field": (400, "missing_file", {"files": {"image": ("a.png", png_bytes((8, 8)), "image/png")}}),
    "text instead of file": (400, "missing_file", {"data": {"file": "abc"}, "files": {"x": ("x", b"1", "image/png")}}),
    "empty file": (400, "empty_file", {"files": {"file": ("a.png", b"", "image/png")}}),
    "too many files": (400, "too_many_files", {"files": [("files", ("a.png", png_bytes((8, 8)), "image/png"))] * 5}),
    "bad top": (400, "bad_parameter", {"params": {"top": "many"}, "files": {"file": ("a.png", b"x", "image/png")}}),
    "zero top": (400, "bad_parameter", {"params": {"top": 0}, "files": {"file": ("a.png", b"x", "image/png")}}),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_gets_documented_json_4xx_and_server_keeps_serving(
        client: TestClient, good_png: tuple[str, bytes], case: str) -> None:
    status, code, kwargs = BAD_UPLOADS[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code and ERRORS[code][0] == status and body["message"]
    _assert_good(client, good_png)
    assert client.get("/health").json()["status"] == "ok"


def test_truncated_image_is_422_for_png_and_jpeg(client: TestClient, good_png: tuple[str, bytes]) -> None:
    for name, data, ctype in (("cut.png", good_png[1], "image/png"), ("cut.jpg", jpeg_bytes((300, 200)), "image/jpeg")):
        r = client.post("/predict", files={"file": (name, data[: len(data) // 2], ctype)})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "not_an_image" and "truncated" in r.json()["message"]
        _assert_good(client, good_png)


def test_no_5xx_was_answered(client: TestClient, good_png: tuple[str, bytes]) -> None:
    _assert_good(client, good_png)
    counts = client.get("/health").json()["requests"]
    assert counts["status_200"] >= 1 and not any(k.startswith("status_5") for k in counts)


def test_slow_inference_answers_503_busy_and_recovers(exported_run: Path, good_png: tuple[str, bytes]) -> None:
    pred = open_predictor(exported_run, runtime="onnx")
    real_predict = pred.predict
    delays = [1.5]

    def slow_predict(images: Any, *, top: int = 5) -> Any:
        time.sleep(delays.pop() if delays else 0)
        return real_predict(images, top=top)

    pred.predict = slow_predict  # type: ignore[method-assign]
    c = TestClient(create_app(exported_run, predictor=pred, limits=ServeLimits(timeout_s=0.5)))
    r = c.post("/predict", files={"file": ("x.png", good_png[1], "image/png")})
    assert r.status_code == 503 and r.json()["error"] == "busy"
    time.sleep(1.2)  # the single inference thread finishes the slow call
    _assert_good(c, good_png)


def test_model_health_docs_and_page(client: TestClient, exported_run: Path) -> None:
    info = client.get("/model").json()
    assert info["classes"] == ["class_0", "class_1", "class_2"] and info["backbone"] == "mobilenet_v2"
    assert info["runtime"] == "onnx" and info["onnx"]["parity"]["max_abs_diff"] < 1e-4
    assert info["metrics"]["test"]["accuracy"] == pytest.approx(1.0) and info["limits"]["max_files"] == 4
    assert info["report"] == {"html": None, "figures": []}
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["properties"]) == {"file", "files"}
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text  # Swagger UI served by the app: works offline
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="file-input"' in page.text and "/static/app.js" in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/predict" in js.text and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/report").json()["error"] == "not_found"
    assert client.get("/nowhere").status_code == 404 and client.get("/predict").status_code == 405


def test_report_and_figures_are_served_from_a_whitelist(exported_run: Path, tmp_path: Path) -> None:
    run = copy_run(exported_run, tmp_path / "run")
    (run / "report.html").write_text("<html><body>the report</body></html>")
    (run / "figures").mkdir()
    (run / "figures" / "confusion.png").write_bytes(png_bytes((10, 10)))
    (run / "figures" / "notes.txt").write_text("not served")
    c = TestClient(create_app(run, runtime="onnx"))
    assert c.get("/model").json()["report"] == {"html": "/report", "figures": ["/report/figures/confusion.png"]}
    assert "the report" in c.get("/report").text
    fig = c.get("/report/figures/confusion.png")
    assert fig.status_code == 200 and fig.headers["content-type"] == "image/png"
    for bad in ("notes.txt", "..%2Fmodel.json", "%2E%2E%2Fconfig.json"):
        r = c.get(f"/report/figures/{bad}")
        assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_limits_are_validated() -> None:
    from transferlab.errors import ConfigError

    with pytest.raises(ConfigError, match="max_upload_bytes"):
        ServeLimits(max_upload_bytes=0)
    with pytest.raises(ConfigError, match="timeout_s"):
        ServeLimits(timeout_s=float("nan"))
