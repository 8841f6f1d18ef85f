"""The prediction server: FastAPI app factory, upload handling, web page, ``serve`` entry point."""

# No ``from __future__ import annotations``: FastAPI resolves the handlers' annotations at runtime.
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from transferlab.errors import ConfigError
from transferlab.explain import METHODS as EXPLAIN_METHODS
from transferlab.explain.service import ExplainService
from transferlab.export._deps import require
from transferlab.export.runtime import Predictor, open_predictor
from transferlab.serve.limits import ACCEPTED_PART_TYPES, ERRORS, ApiError, ServeLimits, decode_request

__all__ = ["create_app", "serve"]

_FIGURE_NAME = re.compile(r"^[\w.-]+\.png$")
_STATIC = ("index.html", "app.js")


def _metrics_summary(run_dir: Path) -> dict[str, Any]:
    """Scalar metrics of the run (test/val accuracy, macro F1, ...), without matrices."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    out: dict[str, Any] = {k: m[k] for k in ("task", "strategy", "backbone", "best_epoch") if k in m}
    for split in ("test", "val"):
        if isinstance(m.get(split), dict):
            out[split] = {k: v for k, v in m[split].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def _report_files(run_dir: Path) -> tuple[Path | None, dict[str, Path]]:
    html = run_dir / "report.html"
    fig_dir = run_dir / "figures"
    figures = {}
    if fig_dir.is_dir():
        figures = {p.name: p for p in sorted(fig_dir.iterdir()) if _FIGURE_NAME.match(p.name) and p.is_file()}
    return (html if html.is_file() else None), figures


_ERROR_SCHEMA = {"type": "object", "required": ["error", "message"], "additionalProperties": False,
                 "properties": {"error": {"type": "string", "enum": sorted(ERRORS)}, "message": {"type": "string"}}}


def _openapi_upload_body(max_files: int) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    by_status: dict[int, list[str]] = {}
    for code, (status, why) in ERRORS.items():
        by_status.setdefault(status, []).append(f"{code}: {why}")
    errors = {str(status): {"description": "; ".join(whys),
                            "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
              for status, whys in sorted(by_status.items())}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": {
                "type": "object",
                "properties": {"file": {**binary, "description": "one image"},
                               "files": {"type": "array", "items": binary, "maxItems": max_files,
                                         "description": "several images"}},
                "anyOf": [{"required": ["file"]}, {"required": ["files"]}],
            }}},
        },
        "responses": errors,
    }


def create_app(run_dir: str | os.PathLike[str], *, runtime: str = "torch", threads: int | None = None,
               limits: ServeLimits | None = None, predictor: Predictor | None = None,
               onnx_model: str = "auto", tta: str = "none") -> Any:
    """The FastAPI app for a trained run: ``/predict``, ``/explain``, ``/health``, ``/model``, ``/`` (web page), ``/docs``.

    Errors are JSON ``{"error": code, "message": ...}`` with the status in
    :data:`transferlab.serve.limits.ERRORS`; a bad upload never causes a 500.

    Example:
        >>> from fastapi.testclient import TestClient  # doctest: +SKIP
        >>> client = TestClient(create_app("runs/flowers", runtime="onnx"))  # doctest: +SKIP
        >>> client.get("/health").json()["status"]  # doctest: +SKIP
        'ok'
    """
    require("fastapi", extra="serve", feature="transferlab serve")
    require("multipart", extra="serve", feature="transferlab serve")
    # Swagger UI and ReDoc from the package instead of a CDN: /docs works on a machine without internet.
    offline = require("fastapi_offline", extra="serve", feature="transferlab serve's offline /docs")
    from fastapi import Depends
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect, Request
    from starlette.datastructures import UploadFile

    limits = limits or ServeLimits()
    run = Path(run_dir)
    pred = predictor or open_predictor(run, runtime=runtime, threads=threads, onnx_model=onnx_model, tta=tta)
    report_html, figures = _report_files(run)
    explainer = ExplainService(run)
    static = {name: (resources.files("transferlab.serve") / "static" / name).read_bytes() for name in _STATIC}
    # One inference thread bounds CPU use on small machines; two decoding threads bound memory.
    pools: dict[str, ThreadPoolExecutor] = {}

    def _pool(name: str) -> ThreadPoolExecutor:
        if name not in pools:
            pools[name] = ThreadPoolExecutor(max_workers=1 if name == "infer" else 2,
                                             thread_name_prefix=f"transferlab-{name}")
        return pools[name]
    stats: Counter[str] = Counter()
    started = time.time()
    model_info = {
        "run_dir": str(run),
        "backbone": pred.meta.get("backbone"),
        "cut": pred.meta.get("cut"),
        "strategy": pred.meta.get("strategy"),
        "task": pred.task.name,
        "classes": pred.classes,
        "num_classes": len(pred.classes),
        "runtime": pred.runtime,
        "tta": pred.tta,
        "temperature": pred.meta.get("temperature"),
        "preprocessing": pred.preprocessing.to_dict(),
        "normalization": pred.norm.to_dict(),
        "model_file": pred.model_file,
        "onnx": pred.meta.get("onnx") if pred.runtime == "onnx" else None,
        "onnx_int8": pred.meta.get("onnx_int8") if pred.model_file.endswith(".int8.onnx") else None,
        "metrics": _metrics_summary(run),
        "limits": limits.to_dict(),
        "report": {"html": "/report" if report_html else None,
                   "figures": [f"/report/figures/{name}" for name in figures]},
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncGenerator[None, None]:
        yield
        for name in list(pools):
            pools.pop(name).shutdown(wait=False, cancel_futures=True)

    async def _known_query(request: Request) -> None:
        """An API route answers 400 to a query parameter it does not take (a typo is never ignored)."""
        route = request.scope.get("route")
        if route is None or not getattr(route, "include_in_schema", False):
            return  # the page, its script and the report take no parameters but keep links working
        known = {f.alias for f in route.dependant.query_params}
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise ApiError("bad_parameter", f"unknown query parameter {unknown[0]!r} for {route.path}; expected "
                                            f"{', '.join(sorted(known)) or 'none'}")

    app = offline.FastAPIOffline(
        dependencies=[Depends(_known_query)],
        lifespan=lifespan,
        title="transferlab prediction server",
        version="1",
        description=f"Classifies images with the trained run `{run.name}` ({pred.meta.get('backbone')}, "
                    f"{len(pred.classes)} classes, {pred.runtime} runtime). Errors are JSON "
                    '`{"error": code, "message": text}`.',
    )

    def _error(status: int, code: str, message: str) -> Any:
        stats[f"status_{status}"] += 1
        return JSONResponse({"error": code, "message": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Any:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_parameter")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Any:
        return _error(500, "internal", f"{type(exc).__name__}: {exc}".splitlines()[0])

    app.add_middleware(_ConcurrencyLimit, limit=limits.max_concurrency, on_busy=_error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, "bad_parameter", f"{where}: {first.get('msg', 'invalid value')}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: status, runtime, uptime and counts of answered requests by status."""
        return {"status": "ok", "runtime": pred.runtime, "num_classes": len(pred.classes),
                "uptime_s": round(time.time() - started, 1), "requests": dict(stats)}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The model: classes, backbone, strategy, preprocessing, metrics, limits and report links."""
        return model_info

    async def _limited_body(request: Request) -> AsyncGenerator[bytes, None]:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limits.max_upload_bytes:
                raise ApiError("too_large", f"request body exceeds the limit of {limits.max_upload_bytes} bytes")
            yield chunk
        if n == 0:
            raise ApiError("empty_body", "the request has no body; send multipart/form-data with a 'file' field")

    async def _read_uploads(request: Request, deadline: float) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError("unsupported_media_type",
                           f"expected Content-Type multipart/form-data, got {ctype or 'none'!r}")
        length = request.headers.get("content-length")
        if length is not None and length.strip().isdigit():
            if int(length) > limits.max_upload_bytes:
                raise ApiError("too_large", f"request body of {int(length)} bytes exceeds the limit of "
                                            f"{limits.max_upload_bytes} bytes")
            if int(length) == 0:
                raise ApiError("empty_body", "the request has no body; send multipart/form-data with a 'file' field")
        parser = MultiPartParser(request.headers, _limited_body(request), max_files=limits.max_files,
                                 max_fields=limits.max_files + 8)
        try:
            form = await asyncio.wait_for(parser.parse(), timeout=max(deadline - time.monotonic(), 0.001))
        except MultiPartException as exc:
            msg = str(exc.message if hasattr(exc, "message") else exc)
            if "Too many files" in msg:
                raise ApiError("too_many_files", f"at most {limits.max_files} files per request") from None
            raise ApiError("bad_multipart", msg) from None
        except asyncio.TimeoutError:
            raise ApiError("timeout", f"the request body did not arrive within {limits.timeout_s:g} s") from None
        except ClientDisconnect:
            raise ApiError("incomplete_body",
                           "the client closed the connection before the whole body arrived") from None
        try:
            parts = [*form.getlist("file"), *form.getlist("files")]
            if not parts:
                raise ApiError("missing_file", "no image in the form fields 'file' or 'files'")
            if len(parts) > limits.max_files:
                raise ApiError("too_many_files", f"{len(parts)} files; at most {limits.max_files} per request")
            uploads = []
            for i, part in enumerate(parts):
                if not isinstance(part, UploadFile):
                    raise ApiError("missing_file", "the fields 'file' and 'files' must be file uploads, not text")
                name = part.filename or f"file{i}"
                ptype = (part.content_type or "application/octet-stream").lower()
                if not ptype.startswith(ACCEPTED_PART_TYPES):
                    raise ApiError("unsupported_media_type",
                                   f"{name}: content type {ptype!r} is not image/* or application/octet-stream")
                data = await part.read()
                if not data:
                    raise ApiError("empty_file", f"{name}: the file is empty (0 bytes)")
                uploads.append((name, data))
            return uploads
        finally:
            await form.close()

    def _decode_all(uploads: list[tuple[str, bytes]]) -> list[Image.Image]:
        return decode_request(uploads, limits=limits, draft_size=pred.draft_size)

    @app.post("/predict", openapi_extra=_openapi_upload_body(limits.max_files))
    async def predict(request: Request, top: int = 5) -> dict[str, Any]:
        """Top-k classes for the images uploaded as multipart fields ``file`` (one) or ``files`` (several)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + limits.timeout_s
        if not 1 <= top <= 1000:
            raise ApiError("bad_parameter", f"top: expected 1..1000, got {top}")
        uploads = await _read_uploads(request, deadline)
        loop = asyncio.get_running_loop()
        images = await loop.run_in_executor(_pool("decode"), _decode_all, uploads)
        try:
            tops = await asyncio.wait_for(loop.run_in_executor(_pool("infer"), lambda: pred.predict(images, top=top)),
                                          timeout=max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise ApiError("busy", f"inference did not finish within {limits.timeout_s:g} s; retry later") from None
        stats["status_200"] += 1
        return {"runtime": pred.runtime, "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2),
                "predictions": [{"file": name, "width": im.width, "height": im.height,
                                 **({"top": t} if isinstance(t, list) else t)}
                                for (name, _), im, t in zip(uploads, images, tops)]}

    @app.post("/explain", openapi_extra=_openapi_upload_body(limits.max_files))
    async def explain(request: Request, method: str = "gradcam", target: str | None = None) -> dict[str, Any]:
        """Heatmap overlays (PNG data URLs) of the predicted class, or of ``target``, for the uploaded images;
        the same fields, limits and errors as ``/predict``. ``method``: gradcam, gradcam++ or scorecam."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + limits.timeout_s
        if method not in EXPLAIN_METHODS:
            raise ApiError("bad_parameter", f"method: expected one of {', '.join(EXPLAIN_METHODS)}, got {method!r}")
        uploads = await _read_uploads(request, deadline)
        loop = asyncio.get_running_loop()
        images = await loop.run_in_executor(_pool("decode"), _decode_all, uploads)

        def run() -> list[dict[str, Any]]:
            try:
                return explainer.explain(images, names=[n for n, _ in uploads], method=method, target=target)
            except ConfigError as exc:
                raise ApiError("bad_parameter", str(exc)) from None
        try:
            items = await asyncio.wait_for(loop.run_in_executor(_pool("infer"), run),
                                           timeout=max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise ApiError("busy", f"the heatmaps did not finish within {limits.timeout_s:g} s; retry later") from None
        stats["status_200"] += 1
        return {"method": method, "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2), "explanations": items}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Any:
        return HTMLResponse(static["index.html"])

    @app.get("/static/app.js", include_in_schema=False)
    async def app_js() -> Any:
        return Response(static["app.js"], media_type="text/javascript")

    @app.get("/report", include_in_schema=False)
    async def report() -> Any:
        if report_html is None:
            raise ApiError("not_found", f"{run} has no report.html; run `transferlab report {run}`")
        return FileResponse(report_html, media_type="text/html")

    @app.get("/report/figures/{name}", include_in_schema=False)
    async def report_figure(name: str) -> Any:
        if name not in figures:
            raise ApiError("not_found", f"no report figure named {name!r}")
        return FileResponse(figures[name], media_type="image/png")

    return app


class _ConcurrencyLimit:
    """ASGI middleware: beyond ``limit`` requests in flight, answer the JSON 503 ``busy`` (counted in /health).

    uvicorn's own ``limit_concurrency`` (plain text) stays as a backstop above this limit.
    """

    def __init__(self, app: Any, *, limit: int, on_busy: Any) -> None:
        self.app = app
        self.limit = limit
        self.on_busy = on_busy
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            response = self.on_busy(503, "busy", f"more than {self.limit} requests in flight; retry later")
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _json_error_protocol() -> type:
    """uvicorn's h11 protocol whose own 400 (malformed HTTP, e.g. a negative Content-Length) is JSON."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorH11Protocol(H11Protocol):  # type: ignore[misc]
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": "bad_request", "message": msg}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonErrorH11Protocol


def serve(run_dir: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 8000, runtime: str = "torch",
          threads: int | None = None, limits: ServeLimits | None = None, onnx_model: str = "auto",
          tta: str = "none") -> None:
    """Run the server with uvicorn until interrupted (binds to this machine only by default).

    Example:
        >>> serve("runs/flowers", runtime="onnx", port=8000)  # doctest: +SKIP
    """
    uvicorn = require("uvicorn", extra="serve", feature="transferlab serve")
    limits = limits or ServeLimits()
    app = create_app(run_dir, runtime=runtime, threads=threads, limits=limits, onnx_model=onnx_model, tta=tta)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"warning: binding to {host} makes the server reachable from other machines", file=sys.stderr)
    print(f"transferlab serve: http://{host}:{port}/ ({runtime} runtime; API docs at /docs)", file=sys.stderr)
    # The app answers JSON 503s at max_concurrency; uvicorn's plain-text limit is a backstop above it.
    uvicorn.run(app, host=host, port=port, limit_concurrency=2 * limits.max_concurrency + 8, timeout_keep_alive=5,
                log_level="warning", http=_json_error_protocol())
