"""Stratified, seeded train/val/test splits that respect a layout's own split."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.data.atomic import atomic_write_text
from transferlab.data.source import ImageSource
from transferlab.errors import ConfigError, DataError

__all__ = ["SPLIT_NAMES", "Split", "load_split", "make_split", "parse_fractions", "save_split"]

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
_GIVEN_KEYS = ("train", "val", "test", "trainval")


@dataclass
class Split:
    """Index arrays (int64, sorted, disjoint) into an :class:`ImageSource`.

    Example:
        >>> s = Split(train=[3, 1], val=[2], test=[0])
        >>> s.train.tolist(), s.sizes()
        ([1, 3], {'train': 2, 'val': 1, 'test': 1})
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            arr = np.sort(np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
            if arr.size > 1 and np.any(arr[1:] == arr[:-1]):
                raise DataError(f"split {name}: expected distinct indices, got duplicates")
            setattr(self, name, arr)
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = np.intersect1d(getattr(self, a), getattr(self, b))
            if shared.size:
                raise DataError(f"split: expected disjoint {a}/{b}, they share {shared.size} items (e.g. index {shared[0]})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in SPLIT_NAMES)

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def as_dict(self) -> dict[str, np.ndarray]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    def sizes(self) -> dict[str, int]:
        """Number of items per split."""
        return {name: int(getattr(self, name).size) for name in SPLIT_NAMES}


def parse_fractions(text: str, *, option: str = "fractions") -> tuple[float, float, float]:
    """Parse ``"0.5,0.25,0.25"`` into three positive fractions summing to 1 (±1e-6).

    Example:
        >>> parse_fractions("0.6,0.2,0.2")
        (0.6, 0.2, 0.2)
    """
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{option}: expected three comma-separated numbers train,val,test (e.g. 0.5,0.25,0.25), got {text!r}"
        ) from None
    return check_fractions(values, option=option)  # type: ignore[arg-type]


def check_fractions(fractions: tuple[float, float, float], *, option: str = "fractions") -> tuple[float, float, float]:
    """Validate train/val/test fractions: three finite numbers > 0 summing to 1 (±1e-6).

    Example:
        >>> check_fractions((0.5, 0.25, 0.25))
        (0.5, 0.25, 0.25)
    """
    try:
        values = tuple(float(v) for v in fractions)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}: expected three numbers train,val,test, got {fractions!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{option}: expected three positive numbers train,val,test, got {fractions!r}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"{option}: expected train,val,test fractions summing to 1, got {fractions!r} (sum {sum(values):.6g})")
    return values  # type: ignore[return-value]


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose]))


def _carve(
    source: ImageSource, pool: np.ndarray, parts: dict[str, float], rng: np.random.Generator, what: str
) -> dict[str, np.ndarray]:
    """Split ``pool`` per class into ``parts`` (name -> fraction; the first part gets the remainder)."""
    names = list(parts)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels = source.labels[pool]
    for c, cname in enumerate(source.classes):
        members = rng.permutation(pool[labels == c])
        n = members.size
        counts = {k: int(math.floor(n * parts[k] + 0.5)) for k in names[1:]}
        counts[names[0]] = n - sum(counts.values())
        for k in names:
            if counts[k] <= 0:
                spec = "/".join(f"{parts[x]:.3g}" for x in names)
                raise DataError(
                    f"class {cname!r} has {n} images in {what}: a {'/'.join(names)} = {spec} split leaves "
                    f"its {k} split empty; expected more images per class or other fractions"
                )
        start = 0
        for k in names:
            out[k].append(members[start:start + counts[k]])
            start += counts[k]
    return {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in out.items()}


def make_split(
    source: ImageSource,
    *,
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    train_per_class: int | None = None,
) -> Split:
    """Stratified, seeded train/val/test split of ``source``.

    Without a given split, each class is cut by ``fractions``. With one (``source.given_split``),
    given train/val/test are kept; a missing val and/or test is carved from train (or trainval),
    stratified, by the fractions' ratio (e.g. 0.6,0.2,0.2 with only trainval+test given:
    val = 0.2/(0.6+0.2) of trainval). Items outside every given split join that training pool.
    ``train_per_class=N`` then keeps N seeded training images per class. The seed only drives the
    split, independent of any training seed.

    Example:
        >>> src = ImageSource.from_arrays(np.zeros((8, 2, 2), np.uint8), [0, 1] * 4, classes=["a", "b"], name="t")
        >>> make_split(src, seed=1).sizes()
        {'train': 4, 'val': 2, 'test': 2}
    """
    f_train, f_val, f_test = check_fractions(fractions)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    rng = _rng(int(seed), 0)
    given = source.given_split
    if given is None:
        parts = _carve(source, np.arange(len(source), dtype=np.int64),
                       {"train": f_train, "val": f_val, "test": f_test}, rng, source.name)
        split = Split(**parts)
    else:
        split = _from_given(source, given, (f_train, f_val, f_test), rng)
    for name in SPLIT_NAMES:
        counts = source.class_counts(getattr(split, name))
        if counts.size and counts.min() == 0:
            c = int(np.argmin(counts))
            raise DataError(f"{source.root}: class {source.classes[c]!r} has no images in the {name} split")
    if train_per_class is not None:
        split = Split(train=_per_class(source, split.train, train_per_class, _rng(int(seed), 1)),
                      val=split.val, test=split.test)
    return split


def _from_given(
    source: ImageSource, given: dict[str, np.ndarray], fractions: tuple[float, float, float], rng: np.random.Generator
) -> Split:
    f_train, f_val, f_test = fractions
    unknown = sorted(set(given) - set(_GIVEN_KEYS))
    if unknown:
        raise DataError(f"{source.root}: given split names {unknown}; expected some of {list(_GIVEN_KEYS)}")
    if "trainval" in given and ("train" in given or "val" in given):
        raise DataError(f"{source.root}: given split has trainval together with train/val; expected one or the other")
    pool_key = "trainval" if "trainval" in given else "train"
    if pool_key not in given:
        raise DataError(f"{source.root}: given split {sorted(given)} has no train or trainval part")
    assigned = np.concatenate([np.asarray(v, np.int64) for v in given.values()])
    outside = np.setdiff1d(np.arange(len(source), dtype=np.int64), assigned)
    pool = np.union1d(given[pool_key], outside)
    missing = [k for k in ("val", "test") if k not in given]
    what = f"{source.name}'s given {pool_key} split"
    if not missing:
        return Split(train=pool, val=given["val"], test=given["test"])
    if missing == ["val", "test"]:
        parts = _carve(source, pool, {"train": f_train, "val": f_val, "test": f_test}, rng, what)
        return Split(**parts)
    k = missing[0]
    f_k = f_val if k == "val" else f_test
    parts = _carve(source, pool, {"train": f_train / (f_train + f_k), k: f_k / (f_train + f_k)}, rng, what)
    other = "test" if k == "val" else "val"
    return Split(**{"train": parts["train"], k: parts[k], other: given[other]})


def _per_class(source: ImageSource, train: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"train_per_class: expected a positive integer, got {n!r}")
    counts = source.class_counts(train)
    smallest = int(np.argmin(counts))
    if counts[smallest] < n:
        raise DataError(
            f"train_per_class={n} exceeds the smallest class {source.classes[smallest]!r} "
            f"({counts[smallest]} training images)"
        )
    labels = source.labels[train]
    picks = [rng.choice(train[labels == c], size=n, replace=False) for c in range(len(source.classes))]
    return np.sort(np.concatenate(picks))


def _split_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"split_{name}.txt"


def save_split(split: Split, source: ImageSource, run_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``split_{train,val,test}.txt`` (``identity<TAB>class_name`` per line) atomically.

    Example:
        >>> save_split(split, source, "runs/exp1")  # doctest: +SKIP
        [PosixPath('runs/exp1/split_train.txt'), ...]
    """
    run = Path(run_dir)
    written = []
    for name in SPLIT_NAMES:
        lines = []
        for i in getattr(split, name):
            ident, cname = source.identity(int(i)), source.classes[source.labels[i]]
            if any(ch in ident + cname for ch in "\t\n\r"):
                raise DataError(f"{ident}: cannot save a split entry containing a tab or newline ({cname!r})")
            lines.append(f"{ident}\t{cname}\n")
        written.append(atomic_write_text(_split_file(run, name), "".join(lines)))
    return written


def load_split(run_dir: str | os.PathLike[str], source: ImageSource) -> Split:
    """Read the files written by :func:`save_split` and map identities back to indices of ``source``.

    Example:
        >>> load_split("runs/exp1", open_dataset("data/flowers"))  # doctest: +SKIP
        Split(train=array([...]), val=array([...]), test=array([...]))
    """
    run = Path(run_dir)
    out: dict[str, np.ndarray] = {}
    for name in SPLIT_NAMES:
        f = _split_file(run, name)
        if not f.is_file():
            raise DataError(f"{f}: split file not found; expected split_train/val/test.txt in {run}")
        idx = []
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line:
                continue
            ident, sep, cname = line.partition("\t")
            if not sep:
                raise DataError(f"{f}:{lineno}: expected 'identity<TAB>class', got {line!r}")
            try:
                i = source.index_of(ident)
            except KeyError:
                raise DataError(f"{f}:{lineno}: {ident} is not in dataset {source.name} ({source.root})") from None
            have = source.classes[source.labels[i]]
            if cname != have:
                raise DataError(f"{f}:{lineno}: {ident} is class {cname!r} in the split but {have!r} in the dataset")
            idx.append(i)
        out[name] = np.asarray(idx, dtype=np.int64)
    return Split(**out)
