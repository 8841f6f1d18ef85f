"""Activations of pretrained, never-trained layers, kept on disk between runs.

An entry is keyed by everything that decides its values: backbone name, the weights file's sha256,
the boundary (stage index the activations enter), the preprocessing and normalisation, and the
identity of every image (path, size, mtime). Anything changed gives another key, so a stale entry
is never used. Entries are ``.npy`` files written row by row as they are computed (memory stays
flat), renamed into place when complete, and read back memory-mapped. ``max_bytes`` bounds the
folder: the least recently used entries go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("transferlab.engine")

CACHE_VERSION = 1


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

    @staticmethod
    def key(*, fingerprint: dict[str, Any], boundary: int, items: list[str]) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"v": CACHE_VERSION, "fp": fingerprint, "boundary": boundary}, sort_keys=True).encode())
        for item in items:
            h.update(item.encode())
            h.update(b"\n")
        return h.hexdigest()[:40]

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def load(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        arr = np.load(path, mmap_mode="c")  # copy-on-write: writable for torch, never written back
        os.utime(path)  # recency for the size limit
        self.hits += 1
        return torch.from_numpy(np.asarray(arr))

    def writer(self, key: str, *, n: int, shape: tuple[int, ...]) -> "_Writer":
        return _Writer(self, key, n=n, shape=shape)

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("*.npy")) if self.root.is_dir() else []

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def clear(self) -> int:
        """Delete every entry; returns how many bytes were freed."""
        freed = self.size_bytes()
        if self.root.is_dir():
            shutil.rmtree(self.root)
        return freed

    def enforce_limit(self) -> None:
        files = sorted(self.entries(), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.max_bytes:
            victim = files.pop(0)
            total -= victim.stat().st_size
            victim.unlink(missing_ok=True)
            log.info("feature cache over %d MB: evicted %s", self.max_bytes >> 20, victim.name)


class _Writer:
    """Rows go into a temporary memory-mapped .npy; ``commit`` renames it into place."""

    def __init__(self, cache: FeatureCache, key: str, *, n: int, shape: tuple[int, ...]) -> None:
        cache.root.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        self.key = key
        self.tmp = cache.root / f".{key}.{os.getpid()}.{time.time_ns()}.npy"
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=(n, *shape))
        self.filled = 0

    def write(self, rows: torch.Tensor) -> None:
        k = len(rows)
        self.array[self.filled : self.filled + k] = rows.detach().cpu().float().numpy()
        self.filled += k

    def commit(self) -> torch.Tensor:
        if self.filled != len(self.array):
            raise RuntimeError(f"feature cache entry {self.key}: {self.filled} of {len(self.array)} rows written")
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.cache._path(self.key))
        out = self.cache.load(self.key)  # mapped before any eviction: stays valid even if evicted
        self.cache.hits -= 1  # the load right after a write is not a hit
        self.cache.enforce_limit()
        if out is None:
            raise RuntimeError(f"feature cache entry {self.key} vanished right after it was written")
        return out

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)
