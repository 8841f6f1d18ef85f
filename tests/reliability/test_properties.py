"""Property tests (Hypothesis, bounded): the decoder, the scanner and the option parser never crash.

Whatever bytes, image sizes, folder trees with symlinks or option values they are given, they
either succeed with the documented result or raise the documented one-line error.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from transferlab.data.images import DecodeLimits, ImageDecodeError, decode_image, image_files_under, image_size
from transferlab.errors import ConfigError

FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def _encoded(size: tuple[int, int], mode: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    im = Image.new(mode, size, 128 if mode in ("L", "P", "1", "I;16") else (10, 200, 30) if mode == "RGB" else
                   (10, 200, 30, 100))
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if fmt in ("GIF", "WEBP", "BMP") and mode == "I;16":
        im = im.convert("L")
    im.save(buf, fmt)
    return buf.getvalue()


@FAST
@given(w=st.integers(1, 300), h=st.integers(1, 300), mode=st.sampled_from(["RGB", "RGBA", "L", "P", "1", "I;16"]),
       fmt=st.sampled_from(FORMATS), draft=st.one_of(st.none(), st.integers(1, 256)),
       cut=st.one_of(st.none(), st.floats(0, 1)), max_pixels=st.integers(1, 100_000),
       ratio=st.floats(1, 50))
def test_decoder_returns_rgb_within_limits_or_raises_decode_error(w: int, h: int, mode: str, fmt: str,
                                                                  draft: int | None, cut: float | None,
                                                                  max_pixels: int, ratio: float) -> None:
    data = _encoded((w, h), mode, fmt)
    if cut is not None:
        data = data[: int(len(data) * cut)]  # truncated anywhere, down to nothing
    limits = DecodeLimits(max_pixels=max_pixels, max_aspect_ratio=ratio)
    try:
        img = decode_image(data, name="x", draft_size=draft, limits=limits)
    except ImageDecodeError as exc:
        assert str(exc).startswith("x: ") and exc.kind in (
            "corrupt", "not_an_image", "too_many_pixels", "extreme_aspect_ratio")
        return
    assert img.mode == "RGB"
    assert img.width * img.height <= max_pixels
    assert max(img.size) / min(img.size) <= ratio
    assert image_size(data, name="x", draft_size=draft, limits=limits) == (img.height, img.width)[::-1]


@FAST
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a",
                                                              b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]))
def test_decoder_on_random_bytes_never_raises_anything_else(data: bytes, prefix: bytes) -> None:
    try:
        img = decode_image(prefix + data, name="r")
    except ImageDecodeError:
        return
    assert img.mode == "RGB"


# -- scanner: random trees of folders, files and symlinks (loops, cross links, dangling)
_NAMES = st.sampled_from(["a", "b", "c", "d"])
_OPS = st.lists(st.tuples(st.sampled_from(["dir", "img", "link", "txt"]), st.lists(_NAMES, min_size=1, max_size=3),
                          st.lists(_NAMES, min_size=0, max_size=3)), min_size=1, max_size=14)


def _build(root: Path, ops: list[tuple[str, list[str], list[str]]]) -> None:
    for kind, where, target in ops:
        p = root.joinpath(*where)
        if p.exists() or p.is_symlink():
            continue
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue
        if kind == "dir":
            p.mkdir()
        elif kind == "img":
            Image.new("RGB", (2, 2)).save(p.with_suffix(".png"))
        elif kind == "txt":
            p.with_suffix(".txt").write_text("x")
        else:
            p.symlink_to(os.path.relpath(root.joinpath(*target), p.parent) if target else ".")


@FAST
@given(ops=_OPS)
def test_scanner_terminates_and_finds_each_real_file_once_per_walk(ops: list) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        _build(root, ops)
        images, others = image_files_under(root)
        reals = [os.path.realpath(p) for p in images]
        assert len(reals) == len(set(reals))  # no loops, no repeats
        assert images == sorted(images) and all(p.suffix == ".png" for p in images)
        direct = {os.path.realpath(p) for p in root.rglob("*.png") if not any(
            q.is_symlink() for q in [p, *p.parents] if q != root and root in q.parents)}
        assert direct <= set(reals)  # every file in a real folder is found
    finally:
        shutil.rmtree(root)


# -- options: every numeric option accepts its range and refuses the rest with one line
_NUMBERS = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([0, 1, -1, 0.0, 1.0, float("nan"), float("inf"), -0.0]))


@FAST
@given(field=st.sampled_from(["lr", "finetune_lr", "dropout", "warmup", "weight_decay", "label_smoothing",
                              "feature_cache_gb", "batch_size", "epochs", "patience", "cut", "views", "workers",
                              "seed", "unfreeze", "train_per_class"]),
       value=_NUMBERS)
def test_option_values_are_accepted_in_range_or_refused_in_one_line(field: str, value: float) -> None:
    import dataclasses
    import math

    from transferlab.options import DataOptions, TrainOptions

    cls = DataOptions if field in {f.name for f in dataclasses.fields(DataOptions)} else TrainOptions
    try:
        options = cls(**{field: value})
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith("--" + field.replace("_", "-"))
        return
    got = getattr(options, field)
    assert isinstance(got, (int, float)) and math.isfinite(got)
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[field]
    assert meta["lo"] is None or got >= meta["lo"]


@FAST
@given(argv=st.lists(st.sampled_from(["--lr", "--top", "--workers", "--epochs", "nan", "-1", "0", "1e309", "abc",
                                      "3", "--feature-cache-gb", "--batch-size", "inf", "--cut"]), max_size=6))
def test_cli_option_parsing_never_raises_a_traceback(argv: list[str]) -> None:
    """argparse's usage error (exit 2) or a ConfigError the CLI prints as one line: nothing else."""
    import contextlib

    from transferlab.cli import build_parser, user_error_line
    from transferlab.options import DataOptions, TrainOptions, options_from_args

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(["train", "data", "--out", "o", *argv])
        options_from_args(DataOptions, args)
        options_from_args(TrainOptions, args)
    except SystemExit as exc:
        assert exc.code == 2
    except ConfigError as exc:
        assert user_error_line(exc) is not None and "\n" not in str(exc)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_lr_like_floats_refused(value: str) -> None:
    from transferlab.options import TrainOptions

    with pytest.raises(ConfigError, match="--lr"):
        TrainOptions(lr=float(value))
