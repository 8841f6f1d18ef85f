"""Hostile battery (issue 17): >= 200 bad inputs against the CLI, the library, the cache and the server.

Every input is classified: handled cleanly (exit 0, or exit 2 with one ``error:`` line / argparse's
usage error; a documented JSON 4xx from the server), a traceback, a crash (killed by a signal, or
an exit status other than 0/2), a 5xx (below the connection limit) or data lost (an earlier run's
files changed without ``--overwrite``, a finished compare run trained again, an image counted
twice). Prints the counts and writes ``benchmarks/results/hostile.json`` with every case. Also
measures the peak memory (VmHWM, Linux) of ``transferlab predict`` on a 1x20000 strip and on a
normal photo (flowers17 when present). Servers listen on 127.0.0.1 only.

    PYTHONPATH=src python benchmarks/hostile.py [--quick | --memory-only]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import machine, write_json  # noqa: E402
from tests.conftest import make_image_folder  # noqa: E402

FLOWERS = REPO.parent / "shared" / "datasets" / "flowers17"
OUTCOMES = ("handled", "traceback", "crash", "5xx", "data_lost")
TIMEOUT_S = 1200.0  # per process: generous, the machine this runs on may be shared
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TRANSFERLAB_OFFLINE": "1"}


class Battery:
    def __init__(self) -> None:
        self.cases: list[dict[str, Any]] = []

    def add(self, group: str, name: str, outcome: str, detail: str = "") -> None:
        assert outcome in OUTCOMES, outcome
        self.cases.append({"group": group, "case": name, "outcome": outcome, "detail": detail[-600:]})
        mark = "ok " if outcome == "handled" else "BAD"
        print(f"  {mark} {group}: {name}" + ("" if outcome == "handled" else f" -> {outcome}: {detail[-300:]}"),
              flush=True)

    def summary(self) -> dict[str, int]:
        c = Counter(x["outcome"] for x in self.cases)
        return {"tried": len(self.cases), **{k: c.get(k, 0) for k in OUTCOMES}}


def _clean_stderr(rc: int | None, err: str) -> tuple[str, str]:
    """Classify an exit status + stderr."""
    if "Traceback (most recent call last)" in err:
        return "traceback", err
    if rc is None or rc < 0:
        return "crash", f"signal {-rc if rc else '?'}: {err}"
    if rc == 0:
        return "handled", ""
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:") or ": error:" in ln]
        return ("handled", lines[-1] if lines else err) if lines else ("traceback", f"exit 2 without an error line: {err}")
    return "crash", f"exit {rc}: {err}"


def cli_inprocess(argv: list[str]) -> tuple[str, str]:
    """``transferlab ARGV`` in this process (fast), classified."""
    from transferlab.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc: int | None = main(argv)
        except SystemExit as exc:
            rc = int(exc.code) if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - this is what the battery measures
            return "traceback", traceback.format_exc()
    return _clean_stderr(rc, err.getvalue())


def cli_subprocess(argv: list[str], *, env: dict[str, str] | None = None,
                   timeout: float = TIMEOUT_S) -> tuple[str, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "transferlab", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env or ENV)
    outcome, detail = _finish(proc, timeout)
    return outcome, detail, proc.returncode


# ----------------------------------------------------------------------------- bad image files

def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    colour = {"L": 90, "P": 90, "1": 1, "I;16": 9000, "LA": (90, 128), "RGBA": (200, 30, 30, 128)}.get(mode, (200, 30, 30))
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 50).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_with_header_size(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w x h`` (a decompression bomb's header) with a tiny body."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def bad_image_payloads() -> dict[str, bytes]:
    """name -> bytes of ~100 hostile image files."""
    rng = np.random.default_rng(0)
    good_png, good_jpg = png((120, 90)), jpeg((160, 120))
    out: dict[str, bytes] = {}
    for frac in np.linspace(0.0, 0.95, 20):
        out[f"truncated_png_{frac:.2f}.png"] = good_png[: int(len(good_png) * frac)]
        out[f"truncated_jpg_{frac:.2f}.jpg"] = good_jpg[: int(len(good_jpg) * frac)]
    for i in range(10):
        out[f"random_{i}.jpg"] = rng.integers(0, 256, size=int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
    for n in (26, 100, 1000, 20000, 65500):
        out[f"strip_1x{n}.png"] = png((1, n))
        out[f"strip_{n}x1.png"] = png((n, 1))
    for w, h in ((100_000, 100_000), (65535, 65535), (1, 2**31 - 1), (30000, 30000), (0, 10)):
        out[f"header_bomb_{w}x{h}.png"] = png_with_header_size(w, h)
    for mode in ("L", "P", "1", "I;16", "RGBA", "LA"):
        out[f"mode_{mode.replace(';', '')}.png"] = png((40, 30), mode)
    out["empty.jpg"] = b""
    out["text.png"] = b"these are not pixels"
    out["html.jpg"] = b"<html><body>hello</body></html>"
    out["gif_header_only.gif"] = b"GIF89a\x10\x00\x10\x00"
    out["jpeg_soi_only.jpg"] = b"\xff\xd8\xff"
    out["png_sig_only.png"] = b"\x89PNG\r\n\x1a\n"
    out["bmp_lying.bmp"] = b"BM" + b"\xff" * 60
    out["tiff_lying.tif"] = b"II*\x00" + b"\x00" * 40
    out["webp_lying.webp"] = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20
    return out


def image_cases(b: Battery, work: Path, run: Path) -> None:
    from transferlab.data import ImageDecodeError, load_image

    folder = work / "bad_images"
    folder.mkdir()
    payloads = bad_image_payloads()
    for name, data in payloads.items():
        (folder / name).write_bytes(data)
    (folder / "a_folder.jpg").mkdir()
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    names = sorted(p.name for p in folder.iterdir())
    for name in names:  # the library's decoder, as train/predict/evaluate call it
        try:
            load_image(folder / name, draft_size=256)
            b.add("decode", name, "handled")
        except ImageDecodeError:
            b.add("decode", name, "handled")
        except BaseException:  # noqa: BLE001
            b.add("decode", name, "traceback", traceback.format_exc())
    sample = [n for i, n in enumerate(names) if i % 6 == 0] + ["strip_1x20000.png", "header_bomb_100000x100000.png"]
    for name in sample:  # the real CLI, end to end
        outcome, detail = cli_inprocess(["predict", str(folder / name), "--model", str(run)])
        b.add("predict", name, outcome, detail)


# ----------------------------------------------------------------------------- options

def option_cases(b: Battery, work: Path, data: Path, run: Path) -> None:
    img = str(next((data / "class_0").glob("*.png")))
    (work / "a_file").write_text("x")
    ro = work / "readonly"
    ro.mkdir()
    os.chmod(ro, 0o500)
    train = ["train", str(data), "--backbone", "mobilenet_v2", "--cut", "2", "--strategy", "linear-probe", "--quiet"]
    cases: dict[str, list[str]] = {
        "--lr nan": [*train, "--out", str(work / "o1"), "--lr", "nan"],
        "--lr inf": [*train, "--out", str(work / "o2"), "--lr", "inf"],
        "--lr -1": [*train, "--out", str(work / "o3"), "--lr", "-1"],
        "--lr abc": [*train, "--out", str(work / "o4"), "--lr", "abc"],
        "--workers -1": [*train, "--out", str(work / "o5"), "--workers", "-1"],
        "--feature-cache-gb -1": [*train, "--out", str(work / "o6"), "--feature-cache-gb", "-1"],
        "--feature-cache-gb nan": [*train, "--out", str(work / "o7"), "--feature-cache-gb", "nan"],
        "--batch-size 0": [*train, "--out", str(work / "o8"), "--batch-size", "0"],
        "--epochs -3": [*train, "--out", str(work / "o9"), "--epochs", "-3"],
        "--dropout 1.5": [*train, "--out", str(work / "o10"), "--dropout", "1.5"],
        "--cut 99": [*train[:-2], "--out", str(work / "o11"), "--cut", "99"],
        "--cut 0": [*train[:-2], "--out", str(work / "o12"), "--cut", "0"],
        "--split 2,2,2": [*train, "--out", str(work / "o13"), "--split", "2,2,2"],
        "--split abc": [*train, "--out", str(work / "o14"), "--split", "abc"],
        "--label-smoothing 1": [*train, "--out", str(work / "o15"), "--label-smoothing", "1"],
        "--warmup 2": [*train, "--out", str(work / "o16"), "--warmup", "2"],
        "--hidden a,b": [*train, "--out", str(work / "o17"), "--head", "dense", "--hidden", "a,b"],
        "--train-per-class 0": [*train, "--out", str(work / "o18"), "--train-per-class", "0"],
        "--out an existing file": [*train, "--out", str(work / "a_file")],
        "--out under a file": [*train, "--out", str(work / "a_file" / "run")],
        "--out under /proc": [*train, "--out", "/proc/transferlab-hostile"],
        "--out unwritable": [*train, "--out", str(ro / "run")],
        "--out empty string": [*train, "--out", ""],
        "DATA missing": ["train", str(work / "nope"), "--out", str(work / "o19")],
        "DATA a file": ["train", str(work / "a_file"), "--out", str(work / "o20")],
        "DATA empty dir": ["train", str(ro), "--out", str(work / "o21")],
        "--resume not a run": ["train", "--resume", str(work)],
        "--resume missing": ["train", "--resume", str(work / "nope")],
        "--weights garbage": ["predict", img, "--backbone", "mobilenet_v2", "--weights", str(work / "a_file")],
        "--weights missing": ["predict", img, "--backbone", "mobilenet_v2", "--weights", str(work / "nope.pth")],
        "--backbone unknown": ["predict", img, "--backbone", "resnet9000"],
        "predict --top -1": ["predict", img, "--model", str(run), "--top", "-1"],
        "predict --top 0": ["predict", img, "--model", str(run), "--top", "0"],
        "predict --top abc": ["predict", img, "--model", str(run), "--top", "abc"],
        "predict missing image": ["predict", str(work / "nope.png"), "--model", str(run)],
        "predict --model not a run": ["predict", img, "--model", str(work)],
        "predict --runtime onnx unexported": ["predict", img, "--model", str(run), "--runtime", "onnx"],
        "evaluate other classes": ["evaluate", str(run), str(work / "other_classes")],
        "serve --port 0": ["serve", str(run), "--port", "0", "--max-files", "0"],
        "serve --timeout nan": ["serve", str(run), "--timeout", "nan"],
        "compare --seeds 0": ["compare", str(data), "--out", str(work / "c0"), "--seeds", "0"],
        "compare unknown strategy": ["compare", str(data), "--out", str(work / "c1"), "--strategies", "magic"],
        "cache clear --dir a file": ["cache", "clear", "--dir", str(work / "a_file")],
        "export not a run": ["export", str(work)],
        "report missing": ["report", str(work / "nope")],
    }
    make_image_folder(work / "other_classes", classes=2, per_class=3, size=32)
    for name, argv in cases.items():
        outcome, detail = cli_inprocess(argv)
        b.add("options", name, outcome, detail)
    os.chmod(ro, 0o700)


# ----------------------------------------------------------------------------- run artifacts

def artifact_cases(b: Battery, work: Path, run: Path, data: Path) -> None:
    img = str(next((data / "class_0").glob("*.png")))
    meta = json.loads((run / "model.json").read_text())
    model_json: dict[str, Any] = {
        "num_classes 1e12": {**meta, "num_classes": 10**12},
        "num_classes float": {**meta, "num_classes": 3.5},
        "num_classes -1": {**meta, "num_classes": -1},
        "cut abc": {**meta, "cut": "abc"},
        "cut 10**9": {**meta, "cut": 10**9},
        "empty object": {},
        "a list": [meta],
        "format 999": {**meta, "format": 999},
        "no format": {k: v for k, v in meta.items() if k != "format"},
        "classes shorter": {**meta, "classes": meta["classes"][:-1]},
        "classes longer": {**meta, "classes": [*meta["classes"], "extra"]},
        "classes not strings": {**meta, "classes": [1, 2, 3]},
        "backbone unknown": {**meta, "backbone": "resnet9000"},
        "backbone number": {**meta, "backbone": 7},
        "input_size 10**6": {**meta, "preprocessing": {**meta["preprocessing"], "input_size": 10**6}},
        "std zero": {**meta, "normalization": {**meta["normalization"], "std": [0, 0, 0]}},
        "head kind unknown": {**meta, "head": {**meta["head"], "kind": "transformer"}},
        "head hidden huge": {**meta, "head": {**meta["head"], "kind": "dense", "hidden": [2**40]}},
        "dropout 5": {**meta, "head": {**meta["head"], "dropout": 5}},
    }
    raw_model_json = {"not json": b"{not json", "binary": b"\xff\xfe\x00", "empty file": b"", "NaN": b"NaN",
                      "deep nesting": b"[" * 100_000 + b"]" * 100_000}
    for name, content in [*((k, json.dumps(v).encode()) for k, v in model_json.items()), *raw_model_json.items()]:
        bad = work / "artifacts" / f"mj_{len(b.cases)}"
        shutil.copytree(run, bad)
        (bad / "model.json").write_bytes(content)
        outcome, detail = cli_inprocess(["predict", img, "--model", str(bad)])
        b.add("model.json", name, outcome, detail)
    weights = (run / "model.safetensors").read_bytes()
    for name, content in {"garbage": b"garbage", "empty": b"", "truncated": weights[: len(weights) // 2],
                          "header only": weights[:64], "a pickle": b"\x80\x04K\x01."}.items():
        bad = work / "artifacts" / f"st_{len(b.cases)}"
        shutil.copytree(run, bad)
        (bad / "model.safetensors").write_bytes(content)
        outcome, detail = cli_inprocess(["predict", img, "--model", str(bad)])
        b.add("model.safetensors", name, outcome, detail)
    cfg = json.loads((run / "config.json").read_text())
    for name, content in {"a list": b"[]", "data a number": json.dumps({**cfg, "data": 1}).encode(),
                          "NaN": b"NaN", "unknown option": json.dumps({**cfg, "train_options": {
                              **cfg["train_options"], "warp": 9}}).encode(),
                          "lr nan in file": json.dumps({**cfg, "train_options": {**cfg["train_options"],
                                                                                  "lr": "nan"}}).encode(),
                          "truncated": (run / "config.json").read_bytes()[:40]}.items():
        bad = work / "artifacts" / f"cfg_{len(b.cases)}"
        shutil.copytree(run, bad)
        (bad / "config.json").write_bytes(content)
        outcome, detail = cli_inprocess(["train", "--resume", str(bad), "--quiet"])
        b.add("config.json", name, outcome, detail)
    from transferlab.engine.trainer import load_checkpoint
    from transferlab.errors import TransferlabError

    for name, content in {"garbage": b"garbage", "empty": b"", "zip header": b"PK\x03\x04" + b"\x00" * 30,
                          "planted pickle (os.system)": b"cos\nsystem\n(S'echo pwned'\ntR."}.items():
        path = work / "artifacts" / f"ck_{len(b.cases)}.pt"
        path.write_bytes(content)
        try:
            load_checkpoint(path)
            b.add("checkpoint.pt", name, "data_lost", "a damaged checkpoint loaded")
        except TransferlabError:
            b.add("checkpoint.pt", name, "handled")
        except BaseException:  # noqa: BLE001
            b.add("checkpoint.pt", name, "traceback", traceback.format_exc())


# ----------------------------------------------------------------------------- feature cache

def cache_cases(b: Battery, work: Path) -> None:
    import torch

    from transferlab.engine.feature_cache import FeatureCache

    for name, make in {
        "truncated": lambda p: p.write_bytes(_npy(np.ones((4, 8), np.float32))[:-10]),
        "object array": lambda p: np.save(p, np.array([{"x": 1}] * 4, dtype=object), allow_pickle=True),
        "wrong shape": lambda p: np.save(p, np.ones((3, 8), np.float32)),
        "NaN": lambda p: np.save(p, np.full((4, 8), np.nan, np.float32)),
        "inf": lambda p: np.save(p, np.full((4, 8), np.inf, np.float32)),
        "float64": lambda p: np.save(p, np.ones((4, 8))),
        "not npy": lambda p: p.write_bytes(b"hello"),
        "empty": lambda p: p.write_bytes(b""),
    }.items():
        cache = FeatureCache(work / "fc" / name.replace(" ", "_"))
        cache.root.mkdir(parents=True)
        make(cache.root / f"{'ab' * 20}.npy")
        try:
            got = cache.load("ab" * 20, shape=(4, 8))
            b.add("cache entry", name, "handled" if got is None else "data_lost", "bad entry used")
        except BaseException:  # noqa: BLE001
            b.add("cache entry", name, "traceback", traceback.format_exc())
    # another process's in-progress write survives eviction and clear
    cache = FeatureCache(work / "fc" / "race", max_bytes=0)
    writer = cache.writer("cd" * 20, n=2, shape=(4,))
    writer.write(torch.ones(2, 4))
    FeatureCache(cache.root, max_bytes=0).enforce_limit()
    FeatureCache(cache.root).clear()
    try:
        writer.commit()
        b.add("cache race", "eviction + clear during a write", "handled")
    except BaseException:  # noqa: BLE001
        b.add("cache race", "eviction + clear during a write", "traceback", traceback.format_exc())


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ----------------------------------------------------------------------------- processes: races, disk full, kills

def process_cases(b: Battery, work: Path, data: Path, quick: bool) -> None:
    base = ["train", str(data), "--backbone", "mobilenet_v2", "--cut", "3", "--strategy", "linear-probe", "--quiet",
            "--workers", "0"]
    # 1. two runs evicting from one small cache at once (3 rounds)
    for k in range(1 if quick else 3):
        env = {**ENV, "TRANSFERLAB_CACHE": str(work / f"evict{k}")}
        procs = [subprocess.Popen([sys.executable, "-m", "transferlab", *base, "--feature-cache-gb", "0.0001",
                                   "--out", str(work / f"ev{k}_{i}")], env=env, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
        for i, p in enumerate(procs):
            outcome, detail = _finish(p)
            b.add("concurrent eviction", f"round {k} run {i}", outcome, detail)
    # 5. two writers to one --out: one runs, one is refused, the folder is the winner's
    env = {**ENV, "TRANSFERLAB_CACHE": str(work / "cache_w")}
    out = work / "shared_out"
    procs = [subprocess.Popen([sys.executable, "-m", "transferlab", *base, "--out", str(out)], env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for i, p in enumerate(procs):
        outcome, detail = _finish(p)
        results.append((p.returncode, detail))
        b.add("one --out, two writers", f"writer {i}", outcome, detail)
    ok = [rc for rc, _ in results if rc == 0]
    consistent = len(ok) >= 1 and (out / "metrics.json").is_file() and (out / "model.json").is_file()
    refused = any("in use by another" in err or "already holds a run" in err for _, err in results)
    b.add("one --out, two writers", "folder consistent, the other refused",
          "handled" if consistent and (refused or len(ok) == 1) else "data_lost", str(results)[-400:])
    # 5. training again into a finished run without --overwrite leaves it untouched
    before = _run_files(out)
    outcome, detail, _ = cli_subprocess([*base, "--out", str(out)], env=env)
    after = _run_files(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    b.add("existing --out", "train again without --overwrite", outcome if not changed else "data_lost",
          f"changed: {changed}; {detail}" if changed else detail)
    outcome, detail, _ = cli_subprocess([*base, "--out", str(out), "--overwrite"], env=env)
    history = out / "history.jsonl"
    stale = history.exists() and history.stat().st_mtime_ns == before.get("history.jsonl", (0, None))[1]
    b.add("existing --out", "--overwrite replaces the whole run", outcome if not stale else "data_lost", detail)
    # 6. a full disk (a 3 MiB tmpfs, root only) for the cache and for the run folder
    disk_full_cases(b, work, base)
    # 9. SIGKILL a compare after its first run; --resume keeps it
    compare_kill_case(b, work, data)
    # 4. symlinked folders: no image in two splits
    sym = make_image_folder(work / "sym", classes=3, per_class=6, size=32)
    (sym / "class_0" / "selfloop").symlink_to(".")
    (sym / "class_0" / "cross").symlink_to("../class_1")
    outcome, detail, _ = cli_subprocess(["train", str(sym), *base[2:], "--out", str(work / "symrun")], env=env)
    b.add("symlinks", "train on a self loop + cross link", outcome, detail)
    if outcome == "handled":
        split = [{os.path.realpath(sym / line.split("\t")[0])  # identity<TAB>class per line
                  for line in (work / "symrun" / f"split_{s}.txt").read_text().splitlines()}
                 for s in ("train", "val", "test")]
        overlap = (split[0] & split[1]) | (split[0] & split[2]) | (split[1] & split[2])
        b.add("symlinks", "no file in two splits", "handled" if not overlap else "data_lost", str(sorted(overlap))[:300])


def _run_files(run: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of a run folder's files; the lock file is no run data (each claim writes its pid there)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in run.iterdir() if p.name != ".lock"}


def _finish(p: subprocess.Popen, timeout: float = TIMEOUT_S) -> tuple[str, str]:
    """Wait for ``p``; a process still running after ``timeout`` is killed and counted as a crash (a hang)."""
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return "crash", f"hung: still running after {timeout:.0f}s: {err}"
    outcome, detail = _clean_stderr(p.returncode, err)
    return outcome, detail if outcome != "handled" else err


def disk_full_cases(b: Battery, work: Path, base: list[str]) -> None:
    mnt = work / "tiny_disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        print("  (disk-full cases skipped: mounting a tmpfs needs root)")
        return
    try:
        env = {**ENV, "TRANSFERLAB_CACHE": str(mnt / "cache")}
        (mnt / "filler").write_bytes(b"\0" * (2 << 20))  # leaves ~1 MiB: too small for the activations
        outcome, detail, rc = cli_subprocess([*base[:5], "1", *base[6:], "--out", str(work / "df_run")], env=env)
        b.add("disk full", "feature cache on a full disk", "crash" if rc == -signal.SIGBUS else outcome, detail)
        temps = list((mnt / "cache" / "features").glob(".*")) if (mnt / "cache" / "features").exists() else []
        b.add("disk full", "no temporary file left behind", "handled" if not temps else "data_lost", str(temps))
        outcome, detail, rc = cli_subprocess([*base, "--out", str(mnt / "run")],
                                             env={**ENV, "TRANSFERLAB_CACHE": str(work / "cache_df")})
        b.add("disk full", "run folder on a full disk", "crash" if rc == -signal.SIGBUS else outcome, detail)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def compare_kill_case(b: Battery, work: Path, data: Path) -> None:
    env = {**ENV, "TRANSFERLAB_CACHE": str(work / "cache_cmp")}
    out = work / "cmp"
    argv = [sys.executable, "-m", "transferlab", "compare", str(data), "--strategies", "linear-probe,feature-extraction",
            "--seeds", "1", "--out", str(out), "--backbone", "mobilenet_v2", "--cut", "3", "--epochs", "40",
            "--quiet", "--workers", "0"]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    first = out / "runs" / "linear-probe" / "seed0" / "metrics.json"
    deadline = time.monotonic() + TIMEOUT_S
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stamp = first.stat().st_mtime_ns if first.is_file() else None
    outcome, detail, _ = cli_subprocess(argv[3:] + ["--resume"], env=env)
    b.add("compare", "SIGKILL then --resume", outcome, detail)
    kept = stamp is not None and first.stat().st_mtime_ns == stamp
    b.add("compare", "the finished run is not trained again", "handled" if kept else "data_lost", str(stamp))
    outcome, detail, rc = cli_subprocess(argv[3:], env=env)
    b.add("compare", "again without --resume is refused", outcome if rc == 2 else "data_lost", detail)


# ----------------------------------------------------------------------------- the server

def server_cases(b: Battery, run: Path) -> None:
    from fastapi.testclient import TestClient

    from transferlab.serve import ServeLimits, create_app

    limits = ServeLimits(max_upload_bytes=2 << 20, max_pixels=40_000_000, max_files=16, timeout_s=20)
    c = TestClient(create_app(run, limits=limits), raise_server_exceptions=False)
    payloads = bad_image_payloads()
    names = sorted(payloads)
    uploads: list[tuple[str, dict[str, Any]]] = [
        (f"upload {n}", {"files": {"file": (n, payloads[n], "image/png")}}) for n in names if payloads[n]][:70]
    big = png((6300, 6300))
    uploads += [
        ("16 x 6300^2 PNGs (request pixel budget)", {"files": [("files", (f"{i}.png", big, "image/png"))
                                                                for i in range(16)]}),
        ("2 x 6300^2 PNGs", {"files": [("files", (f"{i}.png", big, "image/png")) for i in range(2)]}),
        ("17 files", {"files": [("files", (f"{i}.png", png((8, 8)), "image/png")) for i in range(17)]}),
        ("json body", {"json": {"file": "x"}}),
        ("no body", {"headers": {"content-type": "multipart/form-data; boundary=x"}}),
        ("bad boundary", {"content": b"--y\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}}),
        ("top=-1", {"params": {"top": -1}, "files": {"file": ("a.png", png((8, 8)), "image/png")}}),
        ("top=10**9", {"params": {"top": 10**9}, "files": {"file": ("a.png", png((8, 8)), "image/png")}}),
        ("top=nan", {"params": {"top": "nan"}, "files": {"file": ("a.png", png((8, 8)), "image/png")}}),
        ("text part", {"data": {"file": "abc"}, "files": {"x": ("x", b"1", "image/png")}}),
        ("text/plain part", {"files": {"file": ("a.txt", b"hello", "text/plain")}}),
        ("3 MiB body", {"files": {"file": ("big.png", b"\x89PNG" + b"0" * (3 << 20), "image/png")}}),
    ]
    for name, kwargs in uploads:
        try:
            r = c.post("/predict", **kwargs)
        except BaseException:  # noqa: BLE001
            b.add("server", name, "traceback", traceback.format_exc())
            continue
        json_body = r.headers.get("content-type", "").startswith("application/json")
        outcome = "5xx" if r.status_code >= 500 else "handled" if json_body else "traceback"
        b.add("server", name, outcome, f"{r.status_code} {r.text[:200]}")
    for path, method in (("/nowhere", "get"), ("/predict", "get"), ("/model", "post"), ("/report/figures/..%2F", "get")):
        r = getattr(c, method)(path)
        b.add("server", f"{method.upper()} {path}", "5xx" if r.status_code >= 500 else "handled", str(r.status_code))
    health = c.get("/health").json()["requests"]
    b.add("server", "/health counts every answer", "handled" if sum(health.values()) >= len(uploads) else "data_lost",
          json.dumps(health))
    live_server_cases(b, run)


def live_server_cases(b: Battery, run: Path) -> None:
    from tests.serve.live import live_server

    with tempfile.TemporaryDirectory() as tmp, live_server(run, "--max-concurrency", "8", log=Path(tmp) / "log",
                                                                startup_s=TIMEOUT_S) as (
            base, proc):
        port = int(base.rsplit(":", 1)[1])
        for name, head in {
            "negative Content-Length": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            "non-numeric Content-Length": b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
            "bogus Transfer-Encoding": b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zz\r\n\r\n",
            "garbage request line": b"\x16\x03\x01 not http\r\n\r\n",
            "header without colon": b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
        }.items():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head)
                data = b""
                with contextlib.suppress(OSError):
                    while chunk := s.recv(65536):
                        data += chunk
            status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else b"none"
            is_json = b"application/json" in data.split(b"\r\n\r\n", 1)[0].lower()
            outcome = "5xx" if status.startswith(b"5") else "handled" if is_json or not data else "traceback"
            b.add("live server", name, outcome, data[:200].decode(errors="replace"))
        socks = []
        for _ in range(12):  # beyond --max-concurrency 8: JSON 503s, no crash
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=z\r\n"
                      b"Content-Length: 100000\r\n\r\n--z\r\n")
            socks.append(s)
        time.sleep(1.0)
        import httpx

        r = httpx.post(f"{base}/predict", files={"file": ("a.png", png((8, 8)), "image/png")}, timeout=30)
        b.add("live server", "over the concurrency limit", "handled" if r.status_code in (200, 503) and
              r.headers.get("content-type", "").startswith("application/json") else "traceback", r.text[:200])
        for s in socks:
            s.close()
        time.sleep(0.5)
        counts = httpx.get(f"{base}/health", timeout=30).json()["requests"]
        b.add("live server", "still serving, 503s counted", "handled" if proc.poll() is None else "crash",
              json.dumps(counts))


# ----------------------------------------------------------------------------- memory

def peak_rss_mb(argv: list[str]) -> tuple[float, int]:
    """Peak RSS (MiB) of ``transferlab ARGV`` in a fresh process, and its exit status.

    Read from ``VmHWM`` in /proc/self/status (Linux): the high-water mark of the process's own
    memory. ``getrusage().ru_maxrss`` is no use here: Linux carries it across fork + exec, so a
    child of this (large) battery process reports the battery's own RSS whatever it decodes.
    """
    code = ("import sys, runpy; sys.argv = ['transferlab'] + sys.argv[1:]\n"
            "rc = 0\n"
            "try:\n    runpy.run_module('transferlab', run_name='__main__')\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
            "print('VMHWM_KB', hwm, rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=ENV, timeout=600)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("VMHWM_KB")]
    if not lines:
        raise RuntimeError(f"no peak memory reported by transferlab {' '.join(argv)}: {proc.stderr[-600:]}")
    _, kb, rc = lines[-1].split()
    return int(kb) / 1024, int(rc) if rc.lstrip("-").isdigit() else 2


def memory_case(work: Path, run: Path) -> dict[str, Any]:
    strip = work / "strip_1x20000.png"
    Image.new("RGB", (1, 20000), (10, 10, 10)).save(strip)
    photo = next(iter(sorted((FLOWERS / "01_daffodil").glob("*.jpg"))), None) if FLOWERS.is_dir() else None
    if photo is None:
        photo = work / "photo.jpg"
        Image.effect_noise((500, 375), 60).convert("RGB").save(photo, quality=90)
    out: dict[str, Any] = {"strip": str(strip), "photo": str(photo),
                           "how": "VmHWM (peak RSS of the process's own memory) of transferlab predict, a fresh process"}
    for label, argv in (("model", ["--model", str(run)]), ("backbone", ["--backbone", "mobilenet_v2"])):
        photo_mb, photo_rc = peak_rss_mb(["predict", str(photo), *argv])
        strip_mb, strip_rc = peak_rss_mb(["predict", str(strip), *argv])
        out[label] = {"photo_peak_mb": round(photo_mb, 1), "photo_exit": photo_rc, "strip_peak_mb": round(strip_mb, 1),
                      "strip_exit": strip_rc, "difference_mb": round(strip_mb - photo_mb, 1)}
        print(f"  predict {label}: photo {photo_mb:.0f} MiB (exit {photo_rc}), 1x20000 strip {strip_mb:.0f} MiB "
              f"(exit {strip_rc}): difference {strip_mb - photo_mb:+.0f} MiB", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one eviction round instead of three")
    ap.add_argument("--memory-only", action="store_true",
                    help="only predict's peak memory, strip vs photo (about 45 s of CPU)")
    ap.add_argument("--out", type=Path, help="JSON written (default benchmarks/results/hostile.json, "
                                             "with --memory-only hostile_memory.json)")
    args = ap.parse_args(argv)
    out = args.out or REPO / "benchmarks" / "results" / ("hostile_memory.json" if args.memory_only else "hostile.json")
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    os.environ["TRANSFERLAB_CACHE"] = str(work / "cache")
    os.environ["TRANSFERLAB_OFFLINE"] = "1"
    load_before = os.getloadavg()[0]
    try:
        data = make_image_folder(work / "data", classes=3, per_class=8, size=48)
        run = work / "run"
        outcome, detail, _ = cli_subprocess(["train", str(data), "--backbone", "mobilenet_v2", "--cut", "3",
                                             "--strategy", "linear-probe", "--quiet", "--out", str(run)],
                                            env={**ENV, "TRANSFERLAB_CACHE": str(work / "cache")})
        assert outcome == "handled", detail
        b = Battery()
        incomplete: list[str] = []
        steps: list[tuple[str, Callable[[], None]]] = [
            ("images", lambda: image_cases(b, work, run)),
            ("options", lambda: option_cases(b, work, data, run)),
            ("artifacts", lambda: artifact_cases(b, work, run, data)),
            ("cache", lambda: cache_cases(b, work)),
            ("server", lambda: server_cases(b, run)),
            ("processes", lambda: process_cases(b, work, data, args.quick)),
        ]
        for name, step in [] if args.memory_only else steps:
            print(f"[{name}]", flush=True)
            try:
                step()
            except Exception:  # a failure of the battery itself (e.g. a server that did not start in time)
                print(f"  battery step {name} did not complete:\n{traceback.format_exc()}", flush=True)
                incomplete.append(name)
        memory = memory_case(work, run)
    finally:
        subprocess.run(["umount", str(work / "tiny_disk")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    when = {"started": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "load_1m_start": round(load_before, 1), "load_1m_end": round(os.getloadavg()[0], 1),
            "wall_s": round(time.perf_counter() - t0, 1)}
    if args.memory_only:
        write_json(out, {"memory": memory, "machine": machine(), **when})
        return 0
    s = b.summary()
    print(f"\ntried {s['tried']}, handled cleanly {s['handled']}, tracebacks {s['traceback']}, crashes {s['crash']}, "
          f"5xx {s['5xx']}, data lost {s['data_lost']} ({when['wall_s']:.0f}s, load {when['load_1m_start']} "
          f"-> {when['load_1m_end']})")
    if incomplete:
        print(f"battery steps that did not complete: {', '.join(incomplete)}")
    write_json(out, {"summary": s, "incomplete_steps": incomplete, "memory": memory, "machine": machine(), **when,
                     "cases": b.cases})
    return 0 if s["handled"] == s["tried"] and not incomplete else 1

if __name__ == "__main__":
    raise SystemExit(main())
