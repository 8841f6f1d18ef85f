"""Optional dependencies: a one-line error naming the extra to install, never a silent fallback."""

from __future__ import annotations

import importlib
from types import ModuleType

from transferlab.errors import TransferlabError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(TransferlabError):
    """A feature needs a package from an optional extra that is not installed."""


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the pip extra.

    Example:
        >>> require("json", extra="export", feature="ONNX export").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the Python package {module.split('.')[0]!r} ({exc}); "
            f"install it with: pip install 'transferlab[{extra}]'"
        ) from None
