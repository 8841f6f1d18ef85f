"""Activations of pretrained, never-trained layers, kept on disk between runs.

An entry is keyed by everything that decides its values: backbone name, the weights file's sha256,
the boundary (stage index the activations enter), the preprocessing and normalisation, and the
identity of every image (path, size, mtime). Anything changed gives another key, so a stale entry
is never used. Entries are ``KEY.npy`` files (``KEY`` 40 hex digits) written row by row as they are
computed (memory stays flat) into a temporary ``.KEY.PID.NS.part`` file whose whole size is reserved
first (``posix_fallocate``: a full disk is an ``OSError`` up front, never a SIGBUS, and nothing is
written through a memory map), renamed into place when complete, and read back memory-mapped
(read-only pages, copy-on-write). Only committed entries are listed, counted or evicted: another
process's temporary file is never touched; a temporary file whose writer died is removed.
``max_bytes`` bounds the folder: the least recently used entries go first. A loaded entry is
validated (no pickle, dtype, shape, finite values); a bad one is dropped with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("transferlab.engine")

#: 2: the eval transform resizes uint8 tensors (features within 0.7 % of version 1's, but not equal)
CACHE_VERSION = 2
_ENTRY = re.compile(r"^[0-9a-f]{40}\.npy$")
_TEMP = re.compile(r"^\.(?P<key>[0-9a-f]{40})\.(?P<pid>\d+)\.(?P<ns>\d+)\.part$")
_STALE_S = 24 * 3600  # a temporary file this old is stale even if its PID is alive again (reused)
_CHECK_ROWS_BYTES = 64 << 20


def default_cache_root() -> Path:
    return Path(os.environ.get("TRANSFERLAB_CACHE", Path.home() / ".cache" / "transferlab")) / "features"


class FeatureCache:
    """A folder of cached activation arrays.

    Example:
        >>> cache = FeatureCache(Path("/tmp/fc"), max_bytes=1 << 30)
        >>> key = cache.key(fingerprint={"backbone": "mobilenet_v2"}, boundary=9, items=["a.jpg|10|1.0"])
        >>> cache.load(key) is None
        True
    """

    def __init__(self, root: Path | None = None, *, max_bytes: int = 20 << 30) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.dropped = 0

    @staticmethod
    def key(*, fingerprint: dict[str, Any], boundary: int, items: list[str]) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"v": CACHE_VERSION, "fp": fingerprint, "boundary": boundary}, sort_keys=True).encode())
        for item in items:
            h.update(item.encode())
            h.update(b"\n")
        return h.hexdigest()[:40]

    def _path(self, key: str) -> Path:
        if not _ENTRY.match(f"{key}.npy"):
            raise ValueError(f"feature cache key must be 40 hex digits (FeatureCache.key), got {key!r}")
        return self.root / f"{key}.npy"

    def load(self, key: str, *, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """The entry as a (memory-mapped) float32 tensor, or None (missing, or bad and dropped).

        ``shape`` is the full expected shape; an entry of another shape, dtype, with NaN/inf, or
        that does not parse as a plain ``.npy`` is deleted with one warning and counts as a miss.
        """
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            arr = np.load(path, mmap_mode="c", allow_pickle=False)  # copy-on-write: never written back
            problem = _problem(arr, shape)
        except (ValueError, OSError, EOFError) as exc:
            problem = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if problem is not None:
            self._drop(path, problem)
            self.misses += 1
            return None
        try:
            os.utime(path)  # recency for the size limit
        except OSError:
            pass  # evicted meanwhile by another process: the mapping stays valid
        self.hits += 1
        return torch.from_numpy(np.asarray(arr))

    def _drop(self, path: Path, problem: str) -> None:
        self.dropped += 1
        log.warning("feature cache: dropped bad entry %s (%s); computing it again", path.name, problem)
        path.unlink(missing_ok=True)

    def writer(self, key: str, *, n: int, shape: tuple[int, ...]) -> "_Writer":
        """A writer for ``n`` rows of ``shape``; raises OSError (e.g. ENOSPC) if the space cannot be reserved."""
        self._path(key)  # a malformed key would write an entry the listing never sees
        self.remove_stale_temps()
        return _Writer(self, key, n=n, shape=shape)

    def entries(self) -> list[Path]:
        """Committed entries only (never another process's temporary file)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _ENTRY.match(p.name))

    def temps(self) -> tuple[list[Path], list[Path]]:
        """Temporary files as (being written by a live process, stale: their writer died)."""
        live: list[Path] = []
        stale: list[Path] = []
        if not self.root.is_dir():
            return live, stale
        for p in sorted(self.root.iterdir()):
            m = _TEMP.match(p.name)
            if m:
                (stale if _is_stale(p, int(m["pid"])) else live).append(p)
        return live, stale

    def remove_stale_temps(self) -> int:
        """Delete temporary files whose writer died (killed mid-write); returns how many."""
        _, stale = self.temps()
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.info("feature cache: removed %d temporary file(s) left by killed writers", len(stale))
        return len(stale)

    def size_bytes(self) -> int:
        return sum(_size(p) for p in self.entries())

    def clear(self) -> int:
        """Delete every committed entry and stale temporary file; returns the bytes freed.

        Files being written by running processes are left alone (they commit or abort themselves).
        """
        freed = 0
        _, stale = self.temps()
        for p in [*self.entries(), *stale]:
            freed += _size(p)
            p.unlink(missing_ok=True)
        return freed

    def enforce_limit(self) -> None:
        sized = [(p, _mtime(p), _size(p)) for p in self.entries()]
        files = sorted((x for x in sized if x[1] is not None), key=lambda x: x[1])  # type: ignore[arg-type,return-value]
        total = sum(size for _, _, size in files)
        while files and total > self.max_bytes:
            victim, _, size = files.pop(0)
            total -= size
            victim.unlink(missing_ok=True)
            log.info("feature cache over %d MB: evicted %s", self.max_bytes >> 20, victim.name)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:  # removed by another process meanwhile
        return 0


def _mtime(p: Path) -> float | None:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return None


def _is_stale(p: Path, pid: int) -> bool:
    mtime = _mtime(p)
    if mtime is None or time.time() - mtime > _STALE_S:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _problem(arr: np.ndarray, shape: tuple[int, ...] | None) -> str | None:
    """Why a loaded array is not a usable entry, or None."""
    if arr.dtype != np.float32:
        return f"dtype {arr.dtype}, expected float32"
    if arr.ndim < 1:
        return f"shape {arr.shape}, expected rows"
    if shape is not None and tuple(arr.shape) != tuple(shape):
        return f"shape {tuple(arr.shape)}, expected {tuple(shape)}"
    rows = max(1, _CHECK_ROWS_BYTES // max(1, arr[0].nbytes if len(arr) else 1))
    for i in range(0, len(arr), rows):
        if not np.isfinite(arr[i : i + rows]).all():
            return "holds NaN or inf"
    return None


class _Writer:
    """Rows go into a temporary ``.npy`` of reserved size (plain writes); ``commit`` renames it into place."""

    def __init__(self, cache: FeatureCache, key: str, *, n: int, shape: tuple[int, ...]) -> None:
        cache.root.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        self.key = key
        self.n = n
        self.row_shape = tuple(shape)
        self.tmp = cache.root / f".{key}.{os.getpid()}.{time.time_ns()}.part"
        self.filled = 0
        self._fh = open(self.tmp, "xb")
        try:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (n, *self.row_shape)}
            np.lib.format.write_array_header_1_0(self._fh, header)
            self._fh.flush()
            self.size = self._fh.tell() + n * int(np.prod(self.row_shape, dtype=np.int64)) * 4
            _reserve(self._fh.fileno(), self.size)
        except BaseException:
            self.abort()
            raise

    def write(self, rows: torch.Tensor) -> None:
        block = np.ascontiguousarray(rows.detach().cpu().float().numpy())
        if block.shape[1:] != self.row_shape or self.filled + len(block) > self.n:
            raise ValueError(f"feature cache entry {self.key}: rows of shape {block.shape} do not fit "
                             f"{self.n} x {self.row_shape} after {self.filled} rows")
        self._fh.write(memoryview(block).cast("B"))
        self.filled += len(block)

    def commit(self) -> torch.Tensor:
        if self.filled != self.n:
            raise RuntimeError(f"feature cache entry {self.key}: {self.filled} of {self.n} rows written")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.cache._path(self.key))
        out = self.cache.load(self.key, shape=(self.n, *self.row_shape))  # mapped before any eviction
        self.cache.hits -= 1  # the load right after a write is not a hit
        self.cache.enforce_limit()
        if out is None:
            raise RuntimeError(f"feature cache entry {self.key} vanished right after it was written")
        return out

    def abort(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


def _reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes on disk now, so a full disk fails here (ENOSPC) and not mid-write."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: the file system cannot reserve; writes decide
                raise
