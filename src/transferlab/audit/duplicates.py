"""Exact duplicates (hash of the decoded pixels), near-duplicates (embedding cosine) and leakage.

The near-duplicate threshold is calibrated on the data: a sample of images is altered the way
copies arise (downscaled to half size, re-encoded as JPEG at quality 40, cropped by 4 % on each
side) and embedded; the threshold is the 2nd percentile of the similarity between these known
copies and their originals (98 % of such copies are at least this similar), never below the
median nearest-neighbour similarity of the data set (most images are not copies; this guards a
backbone whose embeddings hardly move), see :func:`calibrate_threshold`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: how the calibration copies are made (cycled over the sample)
COPY_KINDS = ("resize", "jpeg", "crop")


def pixel_hash(image: Image.Image) -> str:
    """sha1 of the decoded RGB pixels and the size: equal images, whatever their file format.

    Example:
        >>> a = Image.new("RGB", (4, 4), (10, 20, 30))
        >>> pixel_hash(a) == pixel_hash(a.copy()), pixel_hash(a) == pixel_hash(Image.new("RGB", (4, 4)))
        (True, False)
    """
    rgb = image.convert("RGB")
    h = hashlib.sha1(f"{rgb.size[0]}x{rgb.size[1]}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    """A plausible near-copy of ``image``: downscaled, re-encoded as JPEG, or slightly cropped.

    Example:
        >>> near_copy(Image.new("RGB", (100, 80)), "crop").size
        (92, 74)
    """
    im = image.convert("RGB")
    w, h = im.size
    if kind == "resize":
        return im.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR)
    if kind == "jpeg":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=40)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "crop":
        dx, dy = round(w * 0.04), round(h * 0.04)
        return im.crop((dx, dy, w - dx, h - dy))
    raise ValueError(f"near_copy kind must be one of {COPY_KINDS}, got {kind!r}")


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_other(xn: np.ndarray, *, exclude: np.ndarray | None = None, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(index, cosine) of each row's most similar other row; rows with the same ``exclude`` id are skipped."""
    n = len(xn)
    best_j = np.full(n, -1, np.int64)
    best_s = np.full(n, -np.inf, np.float32)
    for a in range(0, n, chunk):
        s = xn[a : a + chunk] @ xn.T
        rows = np.arange(a, min(a + chunk, n))
        s[rows - a, rows] = -np.inf
        if exclude is not None:
            s[exclude[rows][:, None] == exclude[None, :]] = -np.inf
        best_j[rows] = s.argmax(1)
        best_s[rows] = s[np.arange(len(rows)), best_j[rows]]
    return best_j, best_s


def calibrate_threshold(copy_sims: np.ndarray, nn_sims: np.ndarray) -> float:
    """The near-duplicate cosine threshold from known copies and the data's nearest neighbours.

    Example:
        >>> calibrate_threshold(np.array([0.97, 0.98, 0.99]), np.linspace(0.5, 0.9, 200))
        0.9704
        >>> calibrate_threshold(np.array([0.60, 0.98]), np.linspace(0.5, 0.9, 200))  # copies below the bulk
        0.7
    """
    copies = float(np.quantile(copy_sims, 0.02))
    data = float(np.median(nn_sims[np.isfinite(nn_sims)])) if np.isfinite(nn_sims).any() else -1.0
    return round(max(copies, data), 4)


@dataclass
class Pair:
    """Row ``i`` (the later one) is a copy of row ``j``; ``score`` is 1 for exact, else the cosine."""

    i: int
    j: int
    score: float
    exact: bool


def exact_pairs(hashes: list[str]) -> list[Pair]:
    """Each row whose pixels equal an earlier row's, paired with the first such row.

    Example:
        >>> [(p.i, p.j) for p in exact_pairs(["a", "b", "a", "a"])]
        [(2, 0), (3, 0)]
    """
    first: dict[str, int] = {}
    out = []
    for i, h in enumerate(hashes):
        if h in first:
            out.append(Pair(i=i, j=first[h], score=1.0, exact=True))
        else:
            first[h] = i
    return out


def near_pairs(xn: np.ndarray, *, threshold: float, hashes: list[str], chunk: int = 2048) -> list[Pair]:
    """Each row with an earlier row at cosine >= ``threshold`` (pixel-identical rows excluded), paired
    with its most similar earlier row."""
    groups = {h: g for g, h in enumerate(dict.fromkeys(hashes))}
    gid = np.asarray([groups[h] for h in hashes])
    out = []
    for a in range(0, len(xn), chunk):
        rows = np.arange(a, min(a + chunk, len(xn)))
        s = xn[rows] @ xn.T
        s[rows[:, None] <= np.arange(len(xn))[None, :]] = -np.inf  # earlier rows only
        s[gid[rows][:, None] == gid[None, :]] = -np.inf
        j = s.argmax(1)
        best = s[np.arange(len(rows)), j]
        for r in np.flatnonzero(best >= threshold):
            out.append(Pair(i=int(rows[r]), j=int(j[r]), score=float(best[r]), exact=False))
    return out


def cross_split_pairs(xn: np.ndarray, split_names: np.ndarray, *, threshold: float, hashes: list[str],
                      chunk: int = 2048) -> list[tuple[Pair, int]]:
    """Each val/test row with a row of another split at cosine >= ``threshold`` (or identical pixels):
    its most similar such row, and how many rows of other splits match it."""
    order = {"train": 0, "val": 1, "test": 2}
    rank = np.asarray([order[s] for s in split_names])
    h = np.asarray(hashes)
    out = []
    for a in range(0, len(xn), chunk):
        rows = np.arange(a, min(a + chunk, len(xn)))
        s = xn[rows] @ xn.T
        s[h[rows][:, None] == h[None, :]] = 1.0  # pixel-identical: a copy whatever the embedding says
        s[rank[rows][:, None] <= rank[None, :]] = -np.inf  # only matches in an earlier split
        hits = s >= threshold
        for r in np.flatnonzero(hits.any(1)):
            j = int(s[r].argmax())
            i = int(rows[r])
            out.append((Pair(i=i, j=j, score=float(s[r, j]), exact=bool(h[i] == h[j])), int(hits[r].sum())))
    return out
