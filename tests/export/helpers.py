"""Trained runs for the export and serve tests: a tiny synthetic one, and one on real flowers17 photos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_image_folder
from transferlab.cli import main

REPO = Path(__file__).resolve().parents[2]
FLOWERS17 = REPO.parent / "shared" / "datasets" / "flowers17"
_SESSION_RUNS: dict[str, Path] = {}


def _train(args: list[str], root: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERLAB_CACHE", str(root / "cache"))
        assert main(["train", *args, "--quiet"]) == 0


def session_run(factory: pytest.TempPathFactory, kind: str) -> Path:
    """One trained run per kind ("tiny", "tiny-onnx", "flowers-onnx") per test session, shared by test folders."""
    if kind not in _SESSION_RUNS:
        if kind == "tiny":
            _SESSION_RUNS[kind] = train_tiny_run(factory.mktemp("tiny-run"))
        elif kind == "tiny-onnx":
            run = copy_run(session_run(factory, "tiny"), factory.mktemp("tiny-onnx") / "run")
            _export(run)
            _SESSION_RUNS[kind] = run
        elif kind == "flowers-onnx":
            run = train_flowers_run(factory.mktemp("flowers"))
            _export(run)
            _SESSION_RUNS[kind] = run
        else:
            raise KeyError(kind)
    return _SESSION_RUNS[kind]


def _export(run: Path) -> None:
    from transferlab.export import export_onnx

    result = export_onnx(run)
    assert result.max_abs_diff < 1e-4


def train_tiny_run(root: Path) -> Path:
    """mobilenet_v2 cut after stage 3 + logistic regression on 3 synthetic classes (seconds)."""
    data = make_image_folder(root / "data", classes=3, per_class=8)
    run = root / "run"
    _train([str(data), "--backbone", "mobilenet_v2", "--cut", "3", "--strategy", "linear-probe", "--out", str(run)],
           root)
    return run


def flowers_subset(root: Path, *, per_class: int = 6) -> Path:
    """Symlinks to the first ``per_class`` photos of each flowers17 class, or skip when the data is absent."""
    if not FLOWERS17.is_dir():
        pytest.skip(f"real dataset flowers17 not found at {FLOWERS17} (integration data absent)")
    out = root / "flowers"
    for cdir in sorted(p for p in FLOWERS17.iterdir() if p.is_dir()):
        (out / cdir.name).mkdir(parents=True)
        for f in sorted(cdir.iterdir())[:per_class]:
            os.symlink(f, out / cdir.name / f.name)
    return out


def train_flowers_run(root: Path) -> Path:
    """Full mobilenet_v2 + logistic regression on 6 photos per flowers17 class (about half a minute)."""
    data = flowers_subset(root)
    run = root / "flowers-run"
    _train([str(data), "--backbone", "mobilenet_v2", "--strategy", "linear-probe", "--out", str(run)], root)
    return run


def copy_run(run: Path, dest: Path, *, with_onnx: bool = True) -> Path:
    """A copy of a run directory (optionally without its export) that a test may modify."""
    shutil.copytree(run, dest, ignore=None if with_onnx else shutil.ignore_patterns("model.onnx"))
    return dest
