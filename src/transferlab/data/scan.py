"""Validate image files once and remember the verdicts in a small JSON cache.

The cache lives in ``$TRANSFERLAB_CACHE/scan/`` (default ``~/.cache/transferlab/scan/``), one file
per dataset root, keyed by (absolute path, size, mtime_ns): a changed file is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL

from transferlab.data.atomic import atomic_write_text
from transferlab.data.images import ImageDecodeError, load_image

__all__ = ["VALIDATE_DRAFT_SIZE", "scan_cache_dir", "validate_files"]

logger = logging.getLogger("transferlab.data")

#: JPEGs are validated at a reduced scale (shorter side >= this); every byte is still decoded.
VALIDATE_DRAFT_SIZE = 32
_CACHE_FORMAT = 1
# A new Pillow may decode files that an old one could not (and vice versa): verdicts are per version.
_VALIDATOR = f"load_image/2 pillow/{PIL.__version__}"  # 2: aspect-ratio bound
_PARALLEL_MIN = 64


def scan_cache_dir() -> Path:
    """Folder of the verdict caches: ``$TRANSFERLAB_CACHE/scan`` or ``~/.cache/transferlab/scan``.

    Example:
        >>> scan_cache_dir().name
        'scan'
    """
    base = os.environ.get("TRANSFERLAB_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "transferlab"
    return root / "scan"


def _verdict(path: str) -> str | None:
    try:
        load_image(path, draft_size=VALIDATE_DRAFT_SIZE)
    except ImageDecodeError as exc:
        return exc.reason
    return None


def validate_files(
    paths: list[str], *, cache_key: str, quiet: bool = True
) -> tuple[list[str | None], dict[str, int]]:
    """Decode each file once (or reuse a cached verdict) and return (reasons, stats).

    ``reasons[i]`` is None when ``paths[i]`` decodes, else why it does not. ``stats`` counts
    ``decoded`` and ``cached`` verdicts.

    Example:
        >>> reasons, stats = validate_files(["/data/cat/1.jpg"], cache_key="/data")  # doctest: +SKIP
        >>> reasons, stats  # doctest: +SKIP
        ([None], {'decoded': 1, 'cached': 0})
    """
    cache_file = scan_cache_dir() / (hashlib.sha256(cache_key.encode()).hexdigest()[:24] + ".json")
    old = _read_cache(cache_file, cache_key)
    entries: dict[str, list] = {}
    reasons: list[str | None] = [None] * len(paths)
    todo: list[int] = []
    hits = 0
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError as exc:
            reasons[i] = f"cannot stat file ({exc.strerror})"
            continue
        hit = old.get(p)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            reasons[i] = hit[2]
            entries[p] = hit
            hits += 1
        else:
            entries[p] = [st.st_size, st.st_mtime_ns, None]
            todo.append(i)
    if todo:
        if not quiet:
            print(f"validating {len(todo)} image files (once; verdicts are cached)", file=sys.stderr)
        todo_paths = [paths[i] for i in todo]
        if len(todo) >= _PARALLEL_MIN and (os.cpu_count() or 1) > 1:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                verdicts = list(pool.map(_verdict, todo_paths))
        else:
            verdicts = [_verdict(p) for p in todo_paths]
        for i, reason in zip(todo, verdicts):
            reasons[i] = reason
            entries[paths[i]][2] = reason
    if todo or set(entries) != set(old):
        _write_cache(cache_file, cache_key, entries)
    stats = {"decoded": len(todo), "cached": hits}
    return reasons, stats


def _read_cache(cache_file: Path, cache_key: str) -> dict[str, list]:
    if not cache_file.is_file():
        return {}
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("scan cache %s unreadable (%s); validating again", cache_file, exc)
        return {}
    if (
        not isinstance(data, dict)
        or data.get("format") != _CACHE_FORMAT
        or data.get("validator") != _VALIDATOR
        or data.get("key") != cache_key
        or not isinstance(data.get("entries"), dict)
    ):
        return {}
    return {
        p: e for p, e in data["entries"].items()
        if isinstance(e, list) and len(e) == 3 and (e[2] is None or isinstance(e[2], str))
    }


def _write_cache(cache_file: Path, cache_key: str, entries: dict[str, list]) -> None:
    payload = {"format": _CACHE_FORMAT, "validator": _VALIDATOR, "key": cache_key, "entries": entries}
    try:
        atomic_write_text(cache_file, json.dumps(payload, separators=(",", ":")))
    except OSError as exc:
        logger.warning("cannot write scan cache %s (%s); the next open validates again", cache_file, exc)
