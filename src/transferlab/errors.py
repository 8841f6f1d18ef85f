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
