"""PEP 562 lazy attributes: a package names what it exports, the defining module loads on first use.

Example:
    >>> import types
    >>> mod = types.ModuleType("demo")
    >>> mod.__getattr__ = lazy_attributes(mod, {"dumps": "json"})
    >>> mod.__getattr__("dumps")({"a": 1})
    '{"a": 1}'
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any


def lazy_attributes(module: types.ModuleType | str, table: dict[str, str], *,
                    renamed: dict[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``table[name]`` and returns its ``name`` (or ``renamed[name]``)."""
    import sys

    def __getattr__(name: str) -> Any:
        mod = sys.modules[module] if isinstance(module, str) else module
        if name not in table:
            raise AttributeError(f"module {mod.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name]), (renamed or {}).get(name, name))
        setattr(mod, name, value)
        return value

    return __getattr__
