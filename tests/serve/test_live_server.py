"""The CLI's server as a real uvicorn process on 127.0.0.1: limits over real HTTP, slow clients, no crash."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import jpeg_bytes
from tests.serve.live import live_server


def _raw_request(port: int, head: bytes, body_parts: list[bytes], *, pause_s: float = 0.0,
                 read_timeout_s: float = 15.0) -> bytes:
    """Send a hand-made HTTP request (optionally stalling after the parts) and return the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout_s) as s:
        s.sendall(head)
        try:
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        time.sleep(pause_s)
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and b'"}' in b"".join(chunks):
                    break
        except ConnectionResetError:
            pass
        return b"".join(chunks)


@pytest.fixture(scope="module")
def server(exported_run: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("live") / "server.log"
    with live_server(exported_run, "--runtime", "onnx", "--max-upload-mb", "1", "--timeout", "3",
                     "--max-pixels", "1000000", log=log) as (base, proc):
        yield base, proc


def _good(base: str, good_png: tuple[str, bytes]) -> None:
    r = httpx.post(f"{base}/predict", files={"file": ("x.png", good_png[1], "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["top"][0]["label"] == good_png[0]


def test_binds_to_loopback_by_default(server: tuple[str, object]) -> None:
    """The kernel's table of listening sockets shows the port on 127.0.0.1 only (no --host given)."""
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    table = Path("/proc/net/tcp")
    if not table.is_file():
        pytest.skip("no /proc/net/tcp on this system to read listening sockets from")
    listening = set()
    for line in table.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            listening.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    assert listening == {"127.0.0.1"}


def test_bad_uploads_over_real_http_then_good_one(server: tuple[str, object], good_png: tuple[str, bytes]) -> None:
    base, proc = server
    cases = [
        (413, {"files": {"file": ("big.jpg", b"\xff\xd8" + b"0" * (1 << 21), "image/jpeg")}}),
        (422, {"files": {"file": ("n.png", b"GIF89a but not really", "image/png")}}),
        (422, {"files": {"file": ("t.jpg", jpeg_bytes((400, 300))[:3000], "image/jpeg")}}),
        (415, {"files": {"file": ("a.csv", b"a,b\n1,2\n", "text/csv")}}),
        (400, {"content": b"", "headers": {"content-type": "multipart/form-data; boundary=zz"}}),
    ]
    for status, kwargs in cases:
        r = httpx.post(f"{base}/predict", timeout=30, **kwargs)
        assert r.status_code == status, (status, r.text)
        assert set(r.json()) == {"error", "message"}
        _good(base, good_png)
    assert proc.poll() is None


def test_chunked_oversized_body_is_cut_off_with_413(server: tuple[str, object], good_png: tuple[str, bytes]) -> None:
    base, _ = server
    port = int(base.rsplit(":", 1)[1])
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n")
    block = b"0" * 65536
    parts = [b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
             b"Content-Type: image/png\r\n\r\n"]
    parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"%x\r\n%s\r\n" % (len(block), block)] * 24
    response = _raw_request(port, head, parts)
    assert response.startswith(b"HTTP/1.1 413") and b'"too_large"' in response
    _good(base, good_png)


def test_stalled_upload_times_out_with_408_while_others_are_served(server: tuple[str, object],
                                                                   good_png: tuple[str, bytes]) -> None:
    base, proc = server
    port = int(base.rsplit(":", 1)[1])
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n"
            b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n")
    import threading

    result: dict[str, bytes] = {}
    t = threading.Thread(target=lambda: result.update(r=_raw_request(port, head, [b"--zz\r\n"], read_timeout_s=20)))
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    _good(base, good_png)  # the stalled client does not block anyone
    t.join(timeout=25)
    assert result["r"].startswith(b"HTTP/1.1 408") and b'"timeout"' in result["r"], result
    assert 2.5 < time.monotonic() - t0 < 20
    _good(base, good_png)
    health = httpx.get(f"{base}/health", timeout=10).json()
    assert not any(k.startswith("status_5") for k in health["requests"]) and proc.poll() is None


def test_client_closing_mid_body_gets_400_and_no_500(server: tuple[str, object], good_png: tuple[str, bytes]) -> None:
    base, proc = server
    port = int(base.rsplit(":", 1)[1])
    before = httpx.get(f"{base}/health", timeout=10).json()["requests"].get("status_400", 0)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000\r\n"
                  b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n--zz\r\n")
        s.shutdown(socket.SHUT_WR)  # the client gives up: end of stream after 6 of 5000 bytes
        response = s.recv(65536)
    assert response == b"" or response.startswith(b"HTTP/1.1 400"), response
    _good(base, good_png)
    deadline = time.monotonic() + 10
    while True:  # the server counts the answer once its handler has run
        counts = httpx.get(f"{base}/health", timeout=10).json()["requests"]
        if counts.get("status_400", 0) > before or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counts.get("status_400", 0) == before + 1  # answered as incomplete_body, not as a crash
    assert not any(k.startswith("status_5") for k in counts) and proc.poll() is None


@pytest.mark.parametrize("header", [b"Content-Length: -5", b"Content-Length: 12abc", b"Transfer-Encoding: bogus"])
def test_malformed_http_gets_the_json_error_format(server: tuple[str, object], good_png: tuple[str, bytes],
                                                   header: bytes) -> None:
    """uvicorn's own 400 (its HTTP parser rejects the request before the app sees it) is JSON too (issue 17)."""
    base, proc = server
    port = int(base.rsplit(":", 1)[1])
    response = _raw_request(port, b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n\r\n", [])
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), response
    import json

    assert json.loads(body)["error"] == "bad_request"
    _good(base, good_png)
    assert proc.poll() is None
