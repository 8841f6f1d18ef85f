"""Progress output that suits where it goes: bars on a terminal or in Jupyter, nothing per batch in a log.

On a terminal (``sys.stderr.isatty()``) or in a Jupyter kernel, :func:`bar` wraps an iterable in a
``tqdm.auto`` bar (a widget in a notebook, text on a terminal). When stderr is a file or a pipe (CI
logs, ``2> log.txt``, ``nohup``), there are no bars and no escape codes: the callers log one line per
epoch / per extraction / per run instead. ``TRANSFERLAB_PROGRESS=bars`` or ``=lines`` overrides the
detection.

Example:
    >>> import io
    >>> bars_enabled(stream=io.StringIO())  # a file, not a terminal
    False
    >>> list(bar(range(3), desc="demo", unit="item", stream=io.StringIO()))
    [0, 1, 2]
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

ENV = "TRANSFERLAB_PROGRESS"


def in_notebook() -> bool:
    """True inside a Jupyter kernel that can draw tqdm.auto's widget (ipywidgets installed); without
    ipywidgets a notebook gets the per-epoch lines, as a log file does."""
    import importlib.util

    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    ip = shell.get_ipython()  # type: ignore[attr-defined]
    if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
        return False
    return importlib.util.find_spec("ipywidgets") is not None


def bars_enabled(*, stream: TextIO | None = None) -> bool:
    """Whether progress bars are drawn: stderr is a terminal, or a notebook runs us (env var wins)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bars", "lines"):
        return forced == "bars"
    s = stream if stream is not None else sys.stderr
    try:
        tty = bool(s.isatty())
    except (AttributeError, ValueError):
        tty = False
    return tty or in_notebook()


def bar(iterable: Iterable[T], *, desc: str, unit: str, total: int | None = None, leave: bool = False,
        enabled: bool = True, stream: TextIO | None = None) -> Iterable[T]:
    """``iterable`` with a ``tqdm.auto`` bar when bars are enabled here, else ``iterable`` itself."""
    if not enabled or not bars_enabled(stream=stream):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, leave=leave, file=stream)


class Counter:
    """A ``total``-step counter: a bar when bars are enabled, else nothing drawn (the caller logs).

    Example:
        >>> import io
        >>> c = Counter(total=2, desc="compare", unit="run", stream=io.StringIO())
        >>> c.update("a"); c.update("b"); c.close()
        >>> c.done
        2
    """

    def __init__(self, *, total: int, desc: str, unit: str, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        self.done = 0
        self.total = total
        self._bar: Any = None
        self._redirect = ExitStack()
        if enabled and bars_enabled(stream=stream):
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream)
            # log lines printed while the bar is drawn go above it instead of gluing onto it
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[logging.getLogger("transferlab")]))

    @property
    def drawing(self) -> bool:
        return self._bar is not None

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def update(self, text: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            if text:
                self._bar.set_postfix_str(text)
            self._bar.update(1)

    def close(self) -> None:
        self._redirect.close()
        if self._bar is not None:
            self._bar.close()
