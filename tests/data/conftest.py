"""Fixtures for the data-layer tests: an isolated scan cache and the real data paths."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _isolated_scan_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own $TRANSFERLAB_CACHE so verdicts never leak between tests."""
    cache = tmp_path_factory.mktemp("tlcache")
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(cache))
    return cache


@pytest.fixture
def shared_dataset():
    """Path of a real dataset in ../shared/datasets, or skip saying it is absent."""

    def get(name: str) -> Path:
        path = SHARED_DATASETS / name
        if not path.is_dir():
            pytest.skip(f"real dataset {name} not found at {path} (integration data absent)")
        return path

    return get
