"""One writer per run folder: an advisory lock, and no silent overwrite of an earlier run.

A run folder is claimed with :func:`claim_run_dir` before anything is written into it: a second
process writing the same folder is refused (the lock is ``fcntl.flock`` on ``RUN_DIR/.lock``, freed
by the kernel when the holder exits, even by SIGKILL); a folder that already holds files is refused
unless the run is being resumed or ``overwrite`` is given, which empties it first (so an old
``history.jsonl`` or ``checkpoint.pt`` can never be mixed into the new run).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from transferlab.errors import ConfigError

__all__ = ["LOCK_FILE", "RunDirLock", "claim_run_dir"]

log = logging.getLogger("transferlab")
LOCK_FILE = ".lock"


class RunDirLock:
    """An exclusive, non-blocking lock on a run folder; :meth:`release` (or exit) frees it.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> lock = RunDirLock(d)
        >>> RunDirLock(d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: ... is in use by another transferlab process (pid ...); wait for it to finish or choose another folder
        >>> lock.release(); RunDirLock(d).release()
    """

    def __init__(self, run_dir: Path) -> None:
        self._fd: int | None = None
        self.path = Path(run_dir) / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{run_dir} is in use by another transferlab process (pid {holder}); wait for it to "
                              f"finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if getattr(self, "_fd", None) is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor frees the flock

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_run_dir(run_dir: str | os.PathLike[str], *, resume: bool = False, overwrite: bool = False) -> RunDirLock:
    """Create and lock ``run_dir``; refuse a non-empty folder unless ``resume`` or ``overwrite`` (which empties it).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "run"
        >>> with claim_run_dir(d):
        ...     _ = (d / "model.json").write_text("{}")
        >>> claim_run_dir(d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        transferlab.errors.ConfigError: ... already holds a run (1 file: model.json); pass --overwrite to replace it, --resume to continue it, or choose another folder
        >>> claim_run_dir(d, overwrite=True).release(); sorted(p.name for p in d.iterdir())
        ['.lock']
    """
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d} exists and is a file, not a run folder; choose another folder")
    d.mkdir(parents=True, exist_ok=True)
    lock = RunDirLock(d)
    try:
        contents = sorted(p for p in d.iterdir() if p.name != LOCK_FILE)
        if contents and not resume:
            if not overwrite:
                names = ", ".join(p.name for p in contents[:4]) + (", ..." if len(contents) > 4 else "")
                raise ConfigError(f"{d} already holds a run ({len(contents)} file{'s' if len(contents) != 1 else ''}: "
                                  f"{names}); pass --overwrite to replace it, --resume to continue it, or choose "
                                  f"another folder")
            for p in contents:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            log.info("--overwrite: removed %d entries of the earlier run in %s", len(contents), d)
    except BaseException:
        lock.release()
        raise
    return lock
