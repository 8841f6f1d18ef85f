"""benchmarks/vs_fastai.py hands fastai exactly transferlab's split (no fastai needed for this)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from tests.conftest import make_image_folder
from transferlab.data import make_split, open_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vs_fastai.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_vs_fastai", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fastai_items_are_transferlabs_split(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ first: undone after the test
    bench = _script()
    source = open_dataset(str(make_image_folder(tmp_path / "data", classes=3, per_class=8)), quiet=True)
    full = make_split(source, fractions=(0.5, 0.25, 0.25), seed=0)
    assert bench.limited_split(source) == full
    small = bench.limited_split(source, limit_per_class=1)
    assert small.sizes() == {"train": 3, "val": 3, "test": 3}
    for name in ("train", "val", "test"):
        part, whole = getattr(small, name), getattr(full, name)
        assert np.isin(part, whole).all()
        assert sorted(source.labels[part].tolist()) == [0, 1, 2]
        items = bench.labelled_items(source, part)
        assert [p for p, _ in items] == [source.identity(int(i)) for i in part]
        assert [Path(p).parent.name for p, _ in items] == [c for _, c in items]  # class folder = label
