"""Issue 17's numbered findings, one test each (each failed before its fix): nothing lost, nothing crashes."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_image_folder
from tests.export.helpers import copy_run, session_run
from transferlab.cli import main
from transferlab.data import ImageDecodeError, load_image, open_dataset
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError

KEY = "ab" * 20


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# 1. cache eviction / clear never touch another process's in-progress entry; a killed write is not an entry
def test_1_eviction_and_clear_leave_in_progress_writes_alone(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "fc", max_bytes=0)
    writer = cache.writer(KEY, n=4, shape=(8,))  # "another run", mid-write
    writer.write(torch.ones(2, 8))
    other = FeatureCache(tmp_path / "fc", max_bytes=0)
    other.enforce_limit()
    other.clear()
    assert other.entries() == [] and writer.tmp.exists()
    writer.write(torch.ones(2, 8))
    assert torch.equal(writer.commit(), torch.ones(4, 8))  # used to die with FileNotFoundError
    killed = tmp_path / "fc" / f".{'cd' * 20}.{_dead_pid()}.1.part"
    killed.write_bytes(b"\x93NUMPY half")
    assert other.entries() == [] and other.temps()[1] == [killed]
    assert other.clear() > 0 and not killed.exists()


# 2. a 1 x 20000 strip is refused before decoding, everywhere (train's scan, predict)
def test_2_thin_strip_is_refused_before_decoding(tmp_path: Path, tiny_folder: Path) -> None:
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 20000), (9, 9, 9)).save(strip)
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio") as info:
        load_image(strip, draft_size=256)
    assert info.value.kind == "extreme_aspect_ratio"
    Image.new("RGB", (1, 20000)).save(tiny_folder / "class_0" / "strip.png")
    src = open_dataset(str(tiny_folder))
    assert any(p.endswith("strip.png") and "aspect ratio" in r for p, r in src.skipped)


# 4. symlinked folders never duplicate a file (no loops, no copies across classes)
def test_4_symlinked_folders_count_each_file_once(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", classes=2, per_class=4)
    (data / "class_0" / "selfloop").symlink_to(".")
    (data / "class_0" / "cross").symlink_to("../class_1")
    src = open_dataset(str(data))
    real = [os.path.realpath(src.identity(i)) for i in range(len(src))]
    assert len(src) == 8 == len(set(real))
    assert list(src.class_counts()) == [4, 4]


# 5. run folders: refused when they hold a run, locked while written, config.json only for a run that happens
def test_5_run_folder_refused_locked_overwritten(tmp_path: Path, tiny_folder: Path) -> None:
    from transferlab.experiments.rundir import RunDirLock, claim_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(ConfigError, match="--overwrite"):
        claim_run_dir(run)
    with RunDirLock(run):  # a concurrent writer
        with pytest.raises(ConfigError, match="in use by another transferlab process"):
            claim_run_dir(run, overwrite=True)
    claim_run_dir(run, overwrite=True).release()
    assert not (run / "history.jsonl").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_run_dir(tmp_path / "file")


def test_5_config_json_only_after_validation(tmp_path: Path, tiny_folder: Path) -> None:
    from transferlab.engine import ActivationStore
    from transferlab.experiments.train import run_training
    from transferlab.options import DataOptions, TrainOptions

    store = ActivationStore(None, device=torch.device("cpu"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shared activation store"):
        run_training(str(tiny_folder), data_options=DataOptions(quiet=True), out=tmp_path / "r", store=store,
                     train_options=TrainOptions(backbone="mobilenet_v2", cut=2, strategy="linear-probe",
                                                runtime="onnx"))
    assert not (tmp_path / "r" / "config.json").exists()


# 6. a full disk while writing a cache entry: one warning, the run goes on, no temp file left (never SIGBUS)
def test_6_disk_full_during_cache_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    from tests.engine.test_feature_cache import _store
    from transferlab.strategies import HeadConfig, TransferModel
    from transferlab.zoo import create_backbone

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(28, "No space left on device")

    data = make_image_folder(tmp_path / "d", classes=2, per_class=3)
    model = TransferModel(backbone=create_backbone("mobilenet_v2"), num_classes=2, head=HeadConfig(), cut=2)
    reference = _store(model, data, tmp_path / "ok")[0]
    expected = reference.get(_store(model, data, tmp_path / "ok")[1], 2)
    monkeypatch.setattr(os, "posix_fallocate", full)
    store, split = _store(model, data, tmp_path / "full")
    with caplog.at_level(logging.WARNING, logger="transferlab.engine"):
        got = store.get(split, 2)
    assert torch.equal(got, expected)
    assert "No space left on device" in caplog.text
    assert list((tmp_path / "full").iterdir()) == []


# 7. raw tracebacks -> one line, exit 2; silently accepted values refused
@pytest.mark.parametrize("argv,needle", [
    (["predict", "IMG", "--model", "RUN", "--top", "-1"], "expected an integer >= 1"),
    (["predict", "IMG", "--model", "RUN", "--top", "0"], "expected an integer >= 1"),
])
def test_7_bad_numbers_are_usage_errors(argv: list[str], needle: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("flags,needle", [
    (["--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
    (["--workers", "-1"], "--workers"),
    (["--feature-cache-gb", "-1"], "--feature-cache-gb"),
])
def test_7_bad_option_values_are_one_line(tiny_folder: Path, tmp_path: Path, flags: list[str], needle: str,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(tiny_folder), "--out", str(tmp_path / "r"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_run(tmp_path_factory, "tiny")


MODEL_JSON_DAMAGE = {
    "num_classes 1e12": lambda m: {**m, "num_classes": 10**12},
    "cut abc": lambda m: {**m, "cut": "abc"},
    "empty": lambda m: {},
    "format 999": lambda m: {**m, "format": 999},
    "classes shorter": lambda m: {**m, "classes": m["classes"][:-1]},
    "list": lambda m: [m],
    "unknown backbone": lambda m: {**m, "backbone": "nope"},
}


@pytest.mark.parametrize("case", sorted(MODEL_JSON_DAMAGE))
def test_7_planted_model_json_is_one_line(tiny_run: Path, tmp_path: Path, case: str,
                                          capsys: pytest.CaptureFixture) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps(MODEL_JSON_DAMAGE[case](meta)))
    img = next((Path(json.loads((run / "config.json").read_text())["data"]) / "class_0").glob("*.png"))
    assert main(["predict", str(img), "--model", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "model.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("target,payload", [
    ("model.safetensors", b"garbage"), ("model.safetensors", b""), ("model.json", b"{not json"),
    ("model.json", b"\xff\xfe"), ("config.json", b"[]"), ("config.json", b"{\"data\": 1}"),
    ("config.json", b"NaN"),
])
def test_7_corrupt_run_files_are_one_line(tiny_run: Path, tmp_path: Path, target: str, payload: bytes,
                                          capsys: pytest.CaptureFixture) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    (run / target).write_bytes(payload)
    img = next((Path(json.loads((tiny_run / "config.json").read_text())["data"]) / "class_0").glob("*.png"))
    if target == "config.json":
        argv = ["train", "--resume", str(run), "--quiet"]
    else:
        argv = ["predict", str(img), "--model", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and target in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("payload", [b"PK\x03\x04 truncated zip", b"", b"\x80\x04garbage", b"not a checkpoint"])
def test_7_corrupt_checkpoint_is_a_bad_file_error(tmp_path: Path, payload: bytes) -> None:
    from transferlab.engine.trainer import load_checkpoint
    from transferlab.errors import BadFileError

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(payload)
    with pytest.raises(BadFileError, match="checkpoint.pt: not a readable checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2], path)  # loads under weights_only, but is no checkpoint dict
    with pytest.raises(BadFileError, match="not a checkpoint dict"):
        load_checkpoint(path)


def test_7_os_errors_are_one_line_and_verbose_shows_traceback(tiny_folder: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["train", str(tiny_folder), "--out", str(tmp_path / "afile" / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "afile" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", str(tiny_folder), "--out", "/proc/transferlab-run", "--quiet"]) == 2
    assert "/proc/transferlab-run" in capsys.readouterr().err
    assert main(["-v", "train", str(tiny_folder), "--out", str(tmp_path / "afile" / "run"), "--quiet"]) == 2
    assert "Traceback" in capsys.readouterr().err
    garbage = tmp_path / "w.pth"
    garbage.write_bytes(b"\x80\x04garbage")
    assert main(["predict", "x.png", "--backbone", "mobilenet_v2", "--weights", str(garbage)]) == 2
    assert "w.pth" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "object array", "wrong shape", "nan", "wrong dtype"])
def test_7_bad_cache_entries_are_dropped_with_one_warning(tmp_path: Path, damage: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cache = FeatureCache(tmp_path / "fc")
    path = tmp_path / "fc" / f"{KEY}.npy"
    cache.root.mkdir(parents=True)
    good = np.ones((4, 8), np.float32)
    if damage == "truncated":
        buf = io.BytesIO()
        np.save(buf, good)
        path.write_bytes(buf.getvalue()[:-20])
    elif damage == "object array":
        np.save(path, np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    elif damage == "wrong shape":
        np.save(path, np.ones((3, 8), np.float32))
    elif damage == "nan":
        bad = good.copy()
        bad[2, 3] = np.nan
        np.save(path, bad)
    else:
        np.save(path, good.astype(np.float64))
    with caplog.at_level(logging.WARNING, logger="transferlab.engine"):
        assert cache.load(KEY, shape=(4, 8)) is None
    assert len([r for r in caplog.records if "dropped bad entry" in r.getMessage()]) == 1
    assert not path.exists() and cache.dropped == 1


# 9. a killed compare resumes: finished runs are kept, the interrupted one is trained
def test_9_compare_resume_keeps_finished_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlab.experiments.compare import compare
    from transferlab.options import DataOptions, TrainOptions

    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "d", classes=2, per_class=6, size=32)
    opts = dict(strategies="linear-probe,feature-extraction", seeds=1, out=tmp_path / "cmp",
                data_options=DataOptions(quiet=True), train_options=TrainOptions(backbone="mobilenet_v2", cut=2,
                                                                                  epochs=2))
    first = compare(str(data), **opts)
    done = tmp_path / "cmp" / "runs" / "linear-probe" / "seed0" / "model.json"
    stamp = done.stat().st_mtime_ns
    (tmp_path / "cmp" / "runs" / "feature-extraction" / "seed0" / "metrics.json").unlink()  # "killed" there
    with pytest.raises(ConfigError, match="--overwrite"):
        compare(str(data), **opts)  # not silently over the earlier compare
    again = compare(str(data), **opts, resume=True)
    assert done.stat().st_mtime_ns == stamp  # not trained again
    for name in ("linear-probe", "feature-extraction"):
        assert again["strategies"][name]["test_accuracy_mean"] == first["strategies"][name]["test_accuracy_mean"]
    with pytest.raises(ConfigError, match="differ"):
        compare(str(data), **{**opts, "seeds": 2}, resume=True)
