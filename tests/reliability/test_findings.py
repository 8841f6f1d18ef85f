"""Issue 17's numbered findings, one test each: nothing lost, nothing crashes.

Every test reaches the behaviour through the surface that existed before the fixes (the CLI, the
feature cache's writer/entries/clear, ``open_dataset``, ``load_image``, ``load_checkpoint``,
``compare``), so each one fails on the pre-fix code by what it does, not by a missing name;
benchmarks/results/hostile_findings.json records how each failed there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import transferlab
from tests.conftest import make_image_folder
from tests.export.helpers import copy_run, session_run
from transferlab.cli import main
from transferlab.data import open_dataset
from transferlab.data.images import ImageDecodeError, load_image
from transferlab.engine.feature_cache import FeatureCache
from transferlab.errors import ConfigError, TransferlabError

KEY = "ab" * 20
REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(transferlab.__file__).parents[1]), str(REPO)]),
                  "OMP_NUM_THREADS": "1", "TRANSFERLAB_OFFLINE": "1"}


def _exit_code(argv: list[str]) -> int:
    """``main(argv)``'s exit status, also when argparse exits (a usage error)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=SUBPROCESS_ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=600)


# 1. cache eviction / clear never touch another process's in-progress entry; a killed write is not an entry
def test_1_eviction_and_clear_leave_in_progress_writes_alone(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "fc", max_bytes=0)
    writer = cache.writer(KEY, n=4, shape=(8,))  # "another run", mid-write
    writer.write(torch.ones(2, 8))
    other = FeatureCache(tmp_path / "fc", max_bytes=0)
    other.enforce_limit()
    other.clear()
    assert other.entries() == []
    writer.write(torch.ones(2, 8))
    assert torch.equal(writer.commit(), torch.ones(4, 8))  # used to die with FileNotFoundError


def test_1_a_killed_write_is_no_entry_and_clear_removes_it(tmp_path: Path) -> None:
    killed = _python("import os, sys, signal, torch\n"
                     "from pathlib import Path\n"
                     "from transferlab.engine.feature_cache import FeatureCache\n"
                     "w = FeatureCache(Path(sys.argv[1])).writer('cd' * 20, n=4, shape=(8,))\n"
                     "w.write(torch.ones(2, 8))\n"
                     "os.kill(os.getpid(), signal.SIGKILL)\n", str(tmp_path / "fc"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [p for p in (tmp_path / "fc").iterdir()]
    assert left, "the killed writer left nothing to test"
    cache = FeatureCache(tmp_path / "fc")
    assert cache.entries() == [] and cache.size_bytes() == 0  # used to list (and count) the temp file
    cache.clear()
    assert not any(p.exists() for p in left)


# 2. a 1 x 20000 strip is refused before decoding, everywhere (train's scan, predict)
def test_2_thin_strip_is_refused_before_decoding(tmp_path: Path, tiny_folder: Path) -> None:
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 20000), (9, 9, 9)).save(strip)
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio"):
        load_image(strip, draft_size=256)  # used to decode it, then resize it to 224 x 4.5M pixels (6.5 GB)
    Image.new("RGB", (1, 20000)).save(tiny_folder / "class_0" / "strip.png")
    src = open_dataset(str(tiny_folder))
    assert any(p.endswith("strip.png") and "aspect ratio" in r for p, r in src.skipped)


# 3 and 8 (the server) are in tests/serve/test_server_hostile.py.


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
TINY_TRAIN = ["--backbone", "mobilenet_v2", "--cut", "2", "--strategy", "linear-probe", "--quiet", "--workers", "0"]


def test_5_a_finished_run_is_not_overwritten_silently(tmp_path: Path, tiny_folder: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text('{"epoch": 1}\n')  # an earlier run's curves
    (run / "checkpoint.pt").write_bytes(b"old")
    assert _exit_code(["train", str(tiny_folder), "--out", str(run), *TINY_TRAIN]) == 2  # used to exit 0
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == b"old" and not (run / "model.json").exists()
    assert _exit_code(["train", str(tiny_folder), "--out", str(run), *TINY_TRAIN, "--overwrite"]) == 0
    assert (run / "model.json").is_file() and not (run / "checkpoint.pt").exists()  # nothing of the old run mixed in
    assert not (run / "history.jsonl").exists() or (run / "history.jsonl").read_text() != '{"epoch": 1}\n'


def test_5_a_second_writer_to_one_run_folder_is_refused(tmp_path: Path, tiny_folder: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # another process writing the folder holds its lock (flock on RUN_DIR/.lock)
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)", str(run / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert _exit_code(["train", str(tiny_folder), "--out", str(run), *TINY_TRAIN]) == 2  # used to exit 0
        assert "in use by another transferlab process" in capsys.readouterr().err
        assert not (run / "model.json").exists() and not (run / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "file").write_text("x")
    assert _exit_code(["train", str(tiny_folder), "--out", str(tmp_path / "file"), *TINY_TRAIN]) == 2
    assert "is a file" in capsys.readouterr().err


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
FULL_DISK = """
import resource, sys
from pathlib import Path
import torch
from tests.engine.test_feature_cache import _store
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone

model = TransferModel(backbone=create_backbone("mobilenet_v2"), num_classes=2, head=HeadConfig(), cut=2)
store, split = _store(model, Path(sys.argv[1]), Path(sys.argv[2]))
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
rows = store.get(split, 2)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
torch.save(rows.clone(), sys.argv[3])
"""


def test_6_a_write_the_disk_refuses_during_a_cache_write(tmp_path: Path) -> None:
    """The file system refuses the entry (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC)."""
    from tests.engine.test_feature_cache import _store
    from transferlab.strategies import HeadConfig, TransferModel
    from transferlab.zoo import create_backbone

    data = make_image_folder(tmp_path / "d", classes=2, per_class=3)
    model = TransferModel(backbone=create_backbone("mobilenet_v2"), num_classes=2, head=HeadConfig(), cut=2)
    store, split = _store(model, data, tmp_path / "ok")
    expected = store.get(split, 2)
    proc = _python(FULL_DISK, str(data), str(tmp_path / "full"), str(tmp_path / "rows.pt"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]  # used to die
    assert "feature cache not written" in proc.stderr and "File too large" in proc.stderr
    assert torch.equal(torch.load(tmp_path / "rows.pt", weights_only=True), expected)  # computed in memory
    left = [p.name for p in (tmp_path / "full").iterdir() if p.is_file()]  # (parity/ holds the runtime verdicts)
    assert left == []  # no temp file keeps the disk full


# 7. raw tracebacks -> one line, exit 2; silently accepted values refused
@pytest.mark.parametrize("flags,needle", [
    (["--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
    (["--workers", "-1"], "--workers"),
    (["--feature-cache-gb", "-1"], "--feature-cache-gb"),
])
def test_7_bad_option_values_are_one_line(tiny_folder: Path, tmp_path: Path, flags: list[str], needle: str,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(tiny_folder), "--out", str(tmp_path / "r"), *TINY_TRAIN, *flags]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_run(tmp_path_factory, "tiny")


def _an_image(run: Path) -> Path:
    return next((Path(json.loads((run / "config.json").read_text())["data"]) / "class_0").glob("*.png"))


@pytest.mark.parametrize("top", ["-1", "0"])
def test_7_predict_top_below_one_is_a_usage_error(tiny_run: Path, top: str, capsys: pytest.CaptureFixture) -> None:
    # -1 used to be a traceback, 0 silently accepted
    assert _exit_code(["predict", str(_an_image(tiny_run)), "--model", str(tiny_run), "--top", top]) == 2
    err = capsys.readouterr().err
    assert "expected an integer >= 1" in err and "Traceback" not in err


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
    assert main(["predict", str(_an_image(run)), "--model", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "model.json" in err, err  # the line names the file


@pytest.mark.parametrize("target,payload", [
    ("model.safetensors", b"garbage"), ("model.safetensors", b""), ("model.json", b"{not json"),
    ("model.json", b"\xff\xfe"), ("config.json", b"[]"), ("config.json", b"{\"data\": 1}"),
    ("config.json", b"NaN"),
])
def test_7_corrupt_run_files_are_one_line(tiny_run: Path, tmp_path: Path, target: str, payload: bytes,
                                          capsys: pytest.CaptureFixture) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    (run / target).write_bytes(payload)
    img = _an_image(tiny_run)
    if target == "config.json":
        argv = ["train", "--resume", str(run), "--quiet"]
    else:
        argv = ["predict", str(img), "--model", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert target in err, err  # the line names the file


@pytest.mark.parametrize("payload", [b"PK\x03\x04 truncated zip", b"", b"\x80\x04garbage", b"not a checkpoint"])
def test_7_corrupt_checkpoint_is_a_bad_file_error(tmp_path: Path, payload: bytes) -> None:
    from transferlab.engine.trainer import load_checkpoint

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(payload)
    with pytest.raises(TransferlabError, match="checkpoint.pt: not a readable checkpoint"):  # used to be raw
        load_checkpoint(path)
    torch.save([1, 2], path)  # loads under weights_only, but is no checkpoint dict
    with pytest.raises(TransferlabError, match="not a checkpoint dict"):
        load_checkpoint(path)


def test_7_os_errors_are_one_line_and_verbose_shows_traceback(tiny_folder: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["train", str(tiny_folder), "--out", str(tmp_path / "afile" / "run"), *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert "afile" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", str(tiny_folder), "--out", "/proc/transferlab-run", *TINY_TRAIN]) == 2
    assert "/proc/transferlab-run" in capsys.readouterr().err
    assert main(["-v", "train", str(tiny_folder), "--out", str(tmp_path / "afile" / "run"), *TINY_TRAIN]) == 2
    assert "Traceback" in capsys.readouterr().err
    garbage = tmp_path / "w.pth"
    garbage.write_bytes(b"\x80\x04garbage")
    assert main(["predict", "x.png", "--backbone", "mobilenet_v2", "--weights", str(garbage)]) == 2
    assert "w.pth" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "object array", "wrong shape", "nan", "wrong dtype"])
def test_7_bad_cache_entries_are_dropped_with_one_warning(tmp_path: Path, damage: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A damaged entry is dropped with one warning and computed again (it used to fail every later run)."""
    from tests.engine.test_feature_cache import _store
    from transferlab.strategies import HeadConfig, TransferModel
    from transferlab.zoo import create_backbone

    data = make_image_folder(tmp_path / "d", classes=2, per_class=2, size=32)
    model = TransferModel(backbone=create_backbone("mobilenet_v2"), num_classes=2, head=HeadConfig(), cut=1)
    store, split = _store(model, data, tmp_path / "fc")
    good = store.get(split, 1).numpy().copy()
    (path,) = (tmp_path / "fc").glob("*.npy")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "object array":
        np.save(path, np.array([{"a": 1}] * len(good), dtype=object), allow_pickle=True)
    elif damage == "wrong shape":
        np.save(path, good[:-1])
    elif damage == "nan":
        bad = good.copy()
        bad.flat[3] = np.nan
        np.save(path, bad)
    else:
        np.save(path, good.astype(np.float64))
    again, split2 = _store(model, data, tmp_path / "fc")
    with caplog.at_level(logging.WARNING, logger="transferlab.engine"):
        got = again.get(split2, 1)
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), good)
    assert len([r for r in caplog.records if "dropped bad entry" in r.getMessage()]) == 1
    assert np.array_equal(np.load(path), good)  # written again, whole


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
        compare(str(data), **opts)  # used to start over, training the finished run again
    assert done.stat().st_mtime_ns == stamp
    again = compare(str(data), **opts, resume=True)
    assert done.stat().st_mtime_ns == stamp  # not trained again
    for name in ("linear-probe", "feature-extraction"):
        assert again["strategies"][name]["test_accuracy_mean"] == first["strategies"][name]["test_accuracy_mean"]
    with pytest.raises(ConfigError, match="differ"):
        compare(str(data), **{**opts, "seeds": 2}, resume=True)
