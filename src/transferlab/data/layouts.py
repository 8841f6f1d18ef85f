"""``open_dataset``: detect a dataset layout on disk and build an :class:`ImageSource`."""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, IDX_FILES, find_idx_files, read_idx
from transferlab.data.images import image_files_under, is_image_file
from transferlab.data.scan import validate_files
from transferlab.data.source import ImageSource
from transferlab.errors import ConfigError, DataError

__all__ = ["open_dataset", "SPLIT_FOLDERS"]

logger = logging.getLogger("transferlab.data")

#: Sub-folder names of the split-folders layout, and the split each one stands for.
SPLIT_FOLDERS: dict[str, str] = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_PET_NAME = re.compile(r"^(?P<breed>.+)_(?P<number>\d+)$")
_LAYOUTS_HELP = (
    "class sub-folders, train/ + val/|validation/|test/ folders of class folders, Oxford-IIIT Pet "
    "(images/ + annotations/list.txt), Fashion-MNIST IDX files, or a CSV file with header path,label"
)


def open_dataset(
    source: str | os.PathLike[str],
    *,
    csv_root: str | os.PathLike[str] | None = None,
    validate: bool = True,
    quiet: bool = True,
) -> ImageSource:
    """Open a dataset folder, CSV file or ``"fashion-mnist"`` and detect its layout.

    Layouts: (a) class sub-folders (ImageFolder); (b) ``train/`` with ``val/`` or ``validation/``
    and/or ``test/``, each holding class folders (kept as ``given_split``); (c) Oxford-IIIT Pet
    (``images/`` + ``annotations/list.txt``; given split ``trainval``/``test``); (d) Fashion-MNIST
    IDX files (the string ``"fashion-mnist"`` means Debian's ``/usr/share/datasets/fashion-mnist``;
    pass ``./fashion-mnist`` for a local folder); (e) a CSV file with header ``path,label`` (relative
    paths resolved against the CSV's folder, or ``csv_root``).

    With ``validate`` every image file is decoded once (verdicts cached, see
    :func:`transferlab.data.scan.validate_files`); undecodable files go to ``skipped`` with the
    reason and a warning on the ``transferlab.data`` logger. ``quiet=False`` prints progress and a
    summary line to stderr.

    Example:
        >>> src = open_dataset("../shared/datasets/flowers17")  # doctest: +SKIP
        >>> len(src.classes), len(src)  # doctest: +SKIP
        (17, 1360)
    """
    if csv_root is not None and not str(source).lower().endswith(".csv"):
        raise ConfigError(f"csv_root applies to a .csv source only, got source {os.fspath(source)}")
    if isinstance(source, str) and source == "fashion-mnist":
        src = _open_idx(FASHION_MNIST_DIR, given=source, debian=True)
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: dataset path does not exist")
        if path.is_file():
            if path.suffix.lower() != ".csv":
                raise DataError(f"{path}: unknown dataset layout: expected a folder or a .csv file, got a file")
            src = _open_csv(path, csv_root=Path(csv_root) if csv_root is not None else None, validate=validate,
                            quiet=quiet)
        else:
            src = _open_folder(path, validate=validate, quiet=quiet)
    for identity, reason in src.skipped:
        logger.warning("%s: skipped %s: %s", src.name, identity, reason)
    if not quiet:  # once: the "transferlab" logger prints INFO to stderr (setup_logging); --quiet silences it
        logger.info("%s", src.describe())
    return src


# -- folders --------------------------------------------------------------------------------
def _open_folder(root: Path, *, validate: bool, quiet: bool) -> ImageSource:
    entries = sorted(root.iterdir())
    visible = [e for e in entries if not e.name.startswith(".")]
    if not visible:
        raise DataError(f"{root}: empty folder; expected {_LAYOUTS_HELP}")
    subdirs = [e for e in visible if e.is_dir()]
    names = {d.name for d in subdirs}
    if "images" in names and "annotations" in names:
        if not (root / "annotations" / "list.txt").is_file():
            raise DataError(f"{root}: looks like Oxford-IIIT Pet (images/, annotations/) but annotations/list.txt is missing")
        return _open_pets(root, validate=validate, quiet=quiet)
    split_dirs = [d for d in subdirs if d.name in SPLIT_FOLDERS]
    if split_dirs:
        others = sorted(names - set(SPLIT_FOLDERS))
        if others:
            raise DataError(
                f"{root}: ambiguous layout: split folders ({', '.join(sorted(d.name for d in split_dirs))}) "
                f"next to other folders ({', '.join(others)}); expected only train/val/test or only class folders"
            )
        if "train" not in names:
            raise DataError(f"{root}: expected a train/ folder next to {', '.join(sorted(names))}, found none")
        if {"val", "validation"} <= names:
            raise DataError(f"{root}: expected one of val/ or validation/, found both")
        return _open_split_folders(root, split_dirs, validate=validate, quiet=quiet)
    idx = find_idx_files(root)
    if idx:
        return _open_idx(root, given=str(root), debian=False)
    if not subdirs:
        raise DataError(f"{root}: unknown dataset layout ({len(visible)} files, no sub-folders); expected {_LAYOUTS_HELP}")
    return _open_class_folders(root, validate=validate, quiet=quiet)


@dataclass
class _Candidates:
    """Files found by a layout, before validation."""

    paths: list[str] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # index into group_names (class folder, CSV class...)
    extra: list[int] = field(default_factory=list)  # layout-specific tag per file (split id)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def ignore(self, path: Path | str) -> None:
        self.ignored.append(os.path.abspath(path))

    def add(self, path: Path | str, group: int, extra: int = 0) -> None:
        self.paths.append(os.path.abspath(path))
        self.groups.append(group)
        self.extra.append(extra)


def _validated(cand: _Candidates, *, cache_key: str, validate: bool, quiet: bool) -> tuple[np.ndarray, dict[str, int]]:
    """Boolean mask of usable candidates (all True without validation), plus scan stats.

    A file reached twice (symlinked folders, a CSV listing it twice) is used once: see
    :func:`_first_of_each_file`.
    """
    key_path = Path(cache_key)
    unique = _first_of_each_file(cand, root=key_path if key_path.is_dir() else key_path.parent)
    if not validate:
        return unique, {"decoded": 0, "cached": 0}
    todo = [p for p, u in zip(cand.paths, unique) if u]
    reasons_unique, stats = validate_files(todo, cache_key=cache_key, quiet=quiet)
    it = iter(reasons_unique)
    reasons = [next(it) if u else None for u in unique]
    keep = np.array([u and r is None for u, r in zip(unique, reasons)], dtype=bool)
    cand.skipped.extend((p, r) for p, r in zip(cand.paths, reasons) if r is not None)
    return keep, stats


def _first_of_each_file(cand: _Candidates, *, root: Path) -> np.ndarray:
    """Mask keeping one candidate per real file; the others go to ``cand.skipped``, with one log line.

    Each path is resolved once (``os.path.realpath``). Of the paths reaching the same file, the one
    without a symlink below ``root`` (the file in its own folder) is kept, else the first found:
    a class folder symlinked into another class never duplicates images across classes or splits.
    """
    real_root = os.path.realpath(root)
    reals = [os.path.realpath(p) for p in cand.paths]
    direct = [_is_direct(p, r, root, real_root) for p, r in zip(cand.paths, reals)]
    chosen: dict[str, int] = {}
    for i, real in enumerate(reals):
        j = chosen.get(real)
        if j is None or (direct[i] and not direct[j]):
            chosen[real] = i
    keep = np.zeros(len(cand.paths), dtype=bool)
    keep[list(chosen.values())] = True
    dups = [(p, f"the same file as {cand.paths[chosen[r]]} (reached through a symlink or listed twice); used once")
            for p, r, k in zip(cand.paths, reals, keep) if not k]
    if dups:
        cand.skipped.extend(dups)
        logger.warning("%s: %d paths reach a file already found (symlinks or repeats); each file is used once",
                       root, len(dups))
    return keep


def _inside(path: str, root: Path) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root)
    except ValueError:
        return False


def _is_direct(path: str, real: str, root: Path, real_root: str) -> bool:
    """True when ``path`` reaches its file without a symlink below ``root``."""
    if not _inside(path, root):
        return real == path
    return real == os.path.join(real_root, os.path.relpath(path, root))


def _require_usable(cand: _Candidates, keep: np.ndarray, group_names: list[str]) -> None:
    """Error naming the first group (class folder, breed, CSV class) left without a usable image."""
    groups = np.asarray(cand.groups, dtype=np.int64)
    total = np.bincount(groups, minlength=len(group_names))
    usable = np.bincount(groups[keep], minlength=len(group_names))
    for g, name in enumerate(group_names):
        if usable[g] == 0:
            found = f"{total[g]} image files, none decodable" if total[g] else "no image files"
            raise DataError(f"{name} has no usable image ({found})")


def _require_two_classes(classes: list[str], root: Path) -> None:
    if len(classes) < 2:
        found = classes[0] if classes else "none"
        raise DataError(f"{root}: only one class ({found}); expected at least 2 classes")


def _class_dirs(folder: Path, cand: _Candidates) -> list[Path]:
    """Visible sub-folders of ``folder``; its other entries (hidden, loose files) are ignored."""
    dirs = []
    for e in sorted(folder.iterdir()):
        if e.is_dir() and not e.name.startswith("."):
            dirs.append(e)
        else:
            cand.ignore(e)
    return dirs


def _open_class_folders(root: Path, *, validate: bool, quiet: bool) -> ImageSource:
    cand = _Candidates()
    class_dirs = _class_dirs(root, cand)
    classes = [d.name for d in class_dirs]
    for label, d in enumerate(class_dirs):
        images, others = image_files_under(d)
        cand.ignored.extend(os.path.abspath(p) for p in others)
        for p in images:
            cand.add(p, label)
    _require_two_classes(classes, root)
    keep, stats = _validated(cand, cache_key=str(root.resolve()), validate=validate, quiet=quiet)
    _require_usable(cand, keep, [f"{d}: class folder" for d in class_dirs])
    return ImageSource(
        name=root.resolve().name, root=str(root), layout="imagefolder", classes=classes,
        labels=np.asarray(cand.groups, dtype=np.int64)[keep], paths=[p for p, k in zip(cand.paths, keep) if k],
        skipped=cand.skipped, ignored=cand.ignored, scan_stats=stats,
    )


def _open_split_folders(root: Path, split_dirs: list[Path], *, validate: bool, quiet: bool) -> ImageSource:
    order = {"train": 0, "val": 1, "test": 2}
    split_dirs = sorted(split_dirs, key=lambda d: order[SPLIT_FOLDERS[d.name]])
    cand = _Candidates()
    for e in sorted(root.iterdir()):
        if e.name.startswith(".") or not e.is_dir():
            cand.ignore(e)
    per_split = [(d, _class_dirs(d, cand)) for d in split_dirs]
    classes = sorted({c.name for _, dirs in per_split for c in dirs})
    _require_two_classes(classes, root)
    folder_names: list[str] = []
    for split_id, (split_dir, dirs) in enumerate(per_split):
        for d in dirs:
            group = len(folder_names)
            folder_names.append(str(d))
            images, others = image_files_under(d)
            cand.ignored.extend(os.path.abspath(p) for p in others)
            for p in images:
                cand.add(p, group, split_id)
    keep, stats = _validated(cand, cache_key=str(root.resolve()), validate=validate, quiet=quiet)
    _require_usable(cand, keep, [f"{f}: class folder" for f in folder_names])
    label_of_folder = np.array([classes.index(Path(f).name) for f in folder_names], dtype=np.int64)
    groups = np.asarray(cand.groups, dtype=np.int64)[keep]
    split_ids = np.asarray(cand.extra, dtype=np.int64)[keep]
    given = {
        SPLIT_FOLDERS[d.name]: np.flatnonzero(split_ids == sid) for sid, (d, _) in enumerate(per_split)
    }
    return ImageSource(
        name=root.resolve().name, root=str(root), layout="split-folders", classes=classes,
        labels=label_of_folder[groups], paths=[p for p, k in zip(cand.paths, keep) if k],
        given_split=given, skipped=cand.skipped, ignored=cand.ignored, scan_stats=stats,
    )


# -- Oxford-IIIT Pet ------------------------------------------------------------------------
def _read_pet_list(path: Path) -> list[tuple[str, int]]:
    """(image name, class id) per line of an Oxford-IIIT Pet annotation file."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit() or not _PET_NAME.match(parts[0]):
            raise DataError(f"{path}:{lineno}: expected 'BREED_NUMBER CLASS-ID SPECIES BREED-ID', got {line.strip()!r}")
        rows.append((parts[0], int(parts[1])))
    return rows


def _open_pets(root: Path, *, validate: bool, quiet: bool) -> ImageSource:
    images_dir, ann = root / "images", root / "annotations"
    listed = _read_pet_list(ann / "list.txt")
    breed_id: dict[str, int] = {}
    for name, cid in listed:
        breed = _PET_NAME.match(name).group("breed")  # type: ignore[union-attr]
        breed_id[breed] = min(cid, breed_id.get(breed, cid))
    cand = _Candidates()
    files: list[tuple[Path, str]] = []
    for e in sorted(images_dir.iterdir()):
        if e.name.startswith(".") or not e.is_file() or not is_image_file(e.name):
            cand.ignore(e)
            continue
        m = _PET_NAME.match(e.stem)
        if m is None:
            cand.skipped.append((os.path.abspath(e), "file name is not BREED_NUMBER.ext"))
            continue
        files.append((e, m.group("breed")))
    # Layout order: the annotation class ids; breeds found only among the files come after, sorted.
    classes = sorted(breed_id, key=lambda b: (breed_id[b], b))
    classes += sorted({b for _, b in files} - set(breed_id))
    _require_two_classes(classes, root)
    stems_present = {p.stem for p, _ in files}
    for name, _ in listed:
        if name not in stems_present:
            cand.skipped.append((os.path.abspath(images_dir / f"{name}.jpg"),
                                 "listed in annotations/list.txt but not found in images/"))
    for p, breed in files:
        cand.add(p, classes.index(breed))
    keep, stats = _validated(cand, cache_key=str(root.resolve()), validate=validate, quiet=quiet)
    _require_usable(cand, keep, [f"{images_dir}: breed {c!r}" for c in classes])
    paths = [p for p, k in zip(cand.paths, keep) if k]
    stems = [Path(p).stem for p in paths]
    given: dict[str, np.ndarray] = {}
    seen: dict[str, str] = {}
    for split in ("trainval", "test"):
        f = ann / f"{split}.txt"
        if not f.is_file():
            continue
        names = {n for n, _ in _read_pet_list(f)}
        for n in names:
            if n in seen:
                raise DataError(f"{f}: {n} is also listed in {seen[n]}.txt; expected disjoint trainval/test")
            seen[n] = split
        given[split] = np.array([i for i, s in enumerate(stems) if s in names], dtype=np.int64)
    return ImageSource(
        name=root.resolve().name, root=str(root), layout="oxford-pets", classes=classes,
        labels=np.asarray(cand.groups, dtype=np.int64)[keep], paths=paths, given_split=given or None,
        skipped=cand.skipped, ignored=cand.ignored, scan_stats=stats,
    )


# -- Fashion-MNIST IDX -----------------------------------------------------------------------
def _open_idx(folder: Path, *, given: str, debian: bool) -> ImageSource:
    found = find_idx_files(folder) if folder.is_dir() else {}
    missing = [IDX_FILES[k] + "[.gz]" for k in IDX_FILES if k not in found]
    if missing:
        hint = " (install Debian's dataset-fashion-mnist, or pass a folder)" if debian else ""
        raise DataError(f"{folder}: expected the 4 Fashion-MNIST IDX files, missing {', '.join(missing)}{hint}")
    pixels, labels, ids, given_split, start = [], [], [], {}, 0
    for split in ("train", "test"):
        imgs = read_idx(found[(split, "images")], ndim=3)
        labs = read_idx(found[(split, "labels")], ndim=1)
        if len(imgs) != len(labs):
            raise DataError(
                f"{found[(split, 'labels')]}: expected {len(imgs)} labels to match "
                f"{found[(split, 'images')].name}, got {len(labs)}"
            )
        if labs.size and labs.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{found[(split, 'labels')]}: expected labels 0..9, got {labs.max()}")
        pixels.append(imgs)
        labels.append(labs.astype(np.int64))
        ids.extend(f"fashion-mnist:{split}:{j}" for j in range(len(imgs)))
        given_split[split] = np.arange(start, start + len(imgs), dtype=np.int64)
        start += len(imgs)
    return ImageSource(
        name="fashion-mnist", root=given, layout="idx", classes=FASHION_MNIST_CLASSES,
        labels=np.concatenate(labels), pixels=np.concatenate(pixels), identities=ids, given_split=given_split,
    )


# -- CSV --------------------------------------------------------------------------------------
def _open_csv(path: Path, *, csv_root: Path | None, validate: bool, quiet: bool) -> ImageSource:
    base = csv_root if csv_root is not None else path.parent
    if not base.is_dir():
        raise DataError(f"{base}: csv_root for {path} is not a folder")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty CSV; expected a header path,label")
        header = [h.strip() for h in header]
        if "path" not in header or "label" not in header:
            raise DataError(f"{path}: expected a header with columns path,label, got {','.join(header)}")
        ip, il = header.index("path"), header.index("label")
        rows: list[tuple[int, str, str]] = []
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            lineno = reader.line_num
            if len(row) <= max(ip, il) or not row[ip].strip() or not row[il].strip():
                raise DataError(f"{path}:{lineno}: expected a path and a label, got {','.join(row)!r}")
            rows.append((lineno, row[ip].strip(), row[il].strip()))
    if not rows:
        raise DataError(f"{path}: CSV has a header but no rows")
    classes = sorted({label for _, _, label in rows})
    _require_two_classes(classes, path)
    cand = _Candidates()
    seen: dict[str, int] = {}
    for lineno, rel, label in rows:
        full = os.path.abspath(base / rel)
        if full in seen:
            raise DataError(f"{path}:{lineno}: {rel} is already listed on line {seen[full]}")
        seen[full] = lineno
        if not os.path.isfile(full):
            cand.skipped.append((full, f"file not found (listed on line {lineno} of {path.name})"))
            continue
        cand.add(full, classes.index(label))
    keep, stats = _validated(cand, cache_key=str(path.resolve()), validate=validate, quiet=quiet)
    _require_usable(cand, keep, [f"{path}: class {c!r}" for c in classes])
    return ImageSource(
        name=path.stem, root=str(path), layout="csv", classes=classes,
        labels=np.asarray(cand.groups, dtype=np.int64)[keep], paths=[p for p, k in zip(cand.paths, keep) if k],
        skipped=cand.skipped, ignored=cand.ignored, scan_stats=stats,
    )
