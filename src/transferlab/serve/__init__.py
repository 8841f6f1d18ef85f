"""HTTP prediction server and web page for a trained run (FastAPI + uvicorn, the ``serve`` extra).

Example:
    >>> from transferlab.serve import ServeLimits, serve  # doctest: +SKIP
    >>> serve("runs/flowers", runtime="onnx", limits=ServeLimits(max_upload_bytes=5 << 20))  # doctest: +SKIP
"""

from transferlab.serve.app import create_app, serve
from transferlab.serve.limits import ERRORS, ApiError, ServeLimits, decode_upload

__all__ = ["ERRORS", "ApiError", "ServeLimits", "create_app", "decode_upload", "serve"]
