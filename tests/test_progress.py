"""Progress output: bars only on a terminal or in a notebook (TRANSFERLAB_PROGRESS overrides)."""

from __future__ import annotations

import io

import pytest

from transferlab.progress import Counter, bar, bars_enabled


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bars_into_a_file_bars_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRANSFERLAB_PROGRESS", raising=False)
    plain = io.StringIO()
    assert list(bar(range(4), desc="x", unit="batch", stream=plain)) == [0, 1, 2, 3]
    assert plain.getvalue() == ""
    tty = _Tty()
    assert list(bar(range(4), desc="x", unit="batch", stream=tty)) == [0, 1, 2, 3]
    assert "0/4" in tty.getvalue()  # a bar was drawn (leave=False clears it at the end)
    monkeypatch.setenv("TRANSFERLAB_PROGRESS", "lines")
    assert not bars_enabled(stream=_Tty())
    monkeypatch.setenv("TRANSFERLAB_PROGRESS", "bars")
    assert bars_enabled(stream=io.StringIO())


def test_counter_counts_without_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRANSFERLAB_PROGRESS", raising=False)
    out = io.StringIO()
    c = Counter(total=3, desc="compare", unit="run", stream=out)
    for name in "abc":
        c.update(name)
    c.close()
    assert (c.done, c.drawing, out.getvalue()) == (3, False, "")
