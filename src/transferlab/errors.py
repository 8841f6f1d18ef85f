"""Errors that the CLI reports as one line, Keras-style: what was expected, what was received."""

from __future__ import annotations


class TransferlabError(Exception):
    """Base class for user-facing errors (bad option, bad data, missing weights).

    The CLI prints ``error: <message>`` and exits with status 2; the Python API raises it.
    """


class ConfigError(TransferlabError, ValueError):
    """An option or plan has an invalid value."""


class DataError(TransferlabError):
    """A dataset cannot be used as given (empty, single class, unknown layout, ...)."""


class WeightsNotFoundError(TransferlabError):
    """No source of pretrained weights worked; the message lists every source tried."""


class TrainingError(TransferlabError):
    """Training cannot go on (for example a NaN loss)."""


class BadFileError(TransferlabError):
    """A file (run artifact, checkpoint, weights, cache entry) is corrupt, truncated or not what it claims.

    ``str()`` is one line: the file, what is wrong, and what to do.

    Example:
        >>> str(BadFileError("runs/a/model.json", "not JSON (line 1)", "train the run again"))
        'runs/a/model.json: not JSON (line 1); train the run again'
    """

    def __init__(self, path: object, problem: str, hint: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{self.path}: {problem}; {hint}")


def first_line(exc: BaseException, *, limit: int = 160) -> str:
    """``"Type: first line of the message"`` (just the type when the message is empty), at most ``limit`` chars.

    Example:
        >>> first_line(EOFError()), first_line(ValueError("bad\\nmore"))
        ('EOFError', 'ValueError: bad')
    """
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
