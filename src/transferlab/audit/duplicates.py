"""Exact duplicates (hash of the decoded pixels), near-duplicates (embedding cosine or perceptual hash) and leakage.

Two signals decide whether two images are near-duplicates, both with thresholds calibrated on the
data (see :func:`calibrate_threshold` and :func:`calibrate_phash`):

- the **embedding**: cosine similarity of the pooled pretrained features at or above a threshold
  placed from known copies: a sample of images is altered the way copies arise (downscaled to half
  size, re-encoded as JPEG at quality 40, cropped by 4 % on each side) and embedded; the threshold
  is the 2nd percentile of the similarity between these copies and their originals, never below
  the median nearest-neighbour similarity of the data set (most images are not copies);
- the **perceptual hash** (``imagehash.phash``, 64 bits of the low DCT frequencies, invariant to
  scale and re-encoding and tolerant to small crops): Hamming distance at or below the 98th
  percentile of the known copies' distances (the three alterations and all three at once), capped by
  the data: below the bulk of the nearest-neighbour distances (median - 2 robust sd), and the pair's
  cosine must be at least the median nearest-neighbour similarity (a hash match between two
  unrelated pictures, e.g. two dark frames, is not confirmed by their content).

The embedding alone misses compound copies (half size + JPEG + crop fall to the cosine of two
photos of the same flower from one session); the hash alone misses larger crops.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: how the calibration copies are made (cycled over the sample); the embedding is calibrated on the
#: single alterations, the perceptual hash also on all three at once (``"all"``)
COPY_KINDS = ("resize", "jpeg", "crop")
HASH_COPY_KINDS = (*COPY_KINDS, "all")
PHASH_BITS = 64


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
    if kind == "all":
        return near_copy(near_copy(near_copy(im, "resize"), "jpeg"), "crop")
    raise ValueError(f"near_copy kind must be one of {HASH_COPY_KINDS}, got {kind!r}")


def perceptual_hash(image: Image.Image) -> str:
    """``imagehash.phash`` of the image (64 bits) as 16 hex digits.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> im = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((160, 120))
        >>> other = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((160, 120))
        >>> a, b, c = perceptual_hash(im), perceptual_hash(near_copy(im, "all")), perceptual_hash(other)
        >>> len(a), hamming(bits_of([a]), bits_of([b, c])).tolist()
        (16, [[10.0, 30.0]])
    """
    import imagehash

    return str(imagehash.phash(image))


def bits_of(hashes: list[str]) -> np.ndarray:
    """(N, 64) float32 0/1 bits of hex perceptual hashes (for :func:`hamming`)."""
    raw = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(raw, axis=1).astype(np.float32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Hamming distances between rows of 0/1 bits.

    Example:
        >>> hamming(np.array([[0, 1, 1.0]]), np.array([[0, 1, 1.0], [1, 0, 1.0]])).tolist()
        [[0.0, 2.0]]
    """
    return a @ (1 - b).T + (1 - a) @ b.T


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


def calibrate_phash(copy_dists: np.ndarray, nn_dists: np.ndarray) -> int:
    """The perceptual-hash distance threshold from known copies, capped by the data's nearest neighbours.

    98 % of the known copies are within the threshold, unless that reaches into the bulk of the
    data's nearest-neighbour distances (beyond median - 2 x 1.4826 MAD), where unrelated pairs start.

    Example:
        >>> calibrate_phash(np.array([0, 2, 6, 10]), np.full(100, 16.0) + np.arange(100) % 3 * 2)
        10
        >>> calibrate_phash(np.array([0, 2, 20, 24]), np.full(100, 16.0) + np.arange(100) % 3 * 2)
        12
    """
    copies = float(np.quantile(copy_dists, 0.98, method="higher"))
    med = float(np.median(nn_dists))
    mad = 1.4826 * float(np.median(np.abs(nn_dists - med)))
    cap = med - 2.0 * max(mad, 1.0)
    return int(np.floor(min(copies, cap)))


@dataclass(frozen=True)
class NearRule:
    """When two images are near-duplicates: cosine >= ``embedding``, or perceptual-hash distance
    <= ``phash`` with cosine >= ``floor`` (``phash`` < 0: the hash is not used)."""

    embedding: float
    phash: int = -1
    floor: float = 1.0


def _matches(xn: np.ndarray, bits: np.ndarray | None, rows: np.ndarray, rule: NearRule
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(cosine, match mask, hash distance or None) of ``rows`` against every row."""
    s = xn[rows] @ xn.T
    ok = s >= rule.embedding
    d = None
    if bits is not None and rule.phash >= 0:
        d = hamming(bits[rows], bits)
        ok |= (d <= rule.phash) & (s >= rule.floor)
    return s, ok, d


@dataclass
class Pair:
    """Row ``i`` (the later one) is a copy of row ``j``; ``score`` is 1 for exact, else the cosine;
    ``phash`` the perceptual-hash distance when it was measured."""

    i: int
    j: int
    score: float
    exact: bool
    phash: int | None = None


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


def near_pairs(xn: np.ndarray, *, rule: NearRule, hashes: list[str], bits: np.ndarray | None = None,
               chunk: int = 2048) -> list[Pair]:
    """Each row with an earlier row that ``rule`` matches (pixel-identical rows excluded), paired with the
    most similar (cosine) such row."""
    groups = {h: g for g, h in enumerate(dict.fromkeys(hashes))}
    gid = np.asarray([groups[h] for h in hashes])
    out = []
    for a in range(0, len(xn), chunk):
        rows = np.arange(a, min(a + chunk, len(xn)))
        s, ok, d = _matches(xn, bits, rows, rule)
        ok &= rows[:, None] > np.arange(len(xn))[None, :]  # earlier rows only
        ok &= gid[rows][:, None] != gid[None, :]
        s = np.where(ok, s, -np.inf)
        j = s.argmax(1)
        for r in np.flatnonzero(ok.any(1)):
            out.append(Pair(i=int(rows[r]), j=int(j[r]), score=float(s[r, j[r]]), exact=False,
                            phash=None if d is None else int(d[r, j[r]])))
    return out


def cross_split_pairs(xn: np.ndarray, split_names: np.ndarray, *, rule: NearRule, hashes: list[str],
                      bits: np.ndarray | None = None, chunk: int = 2048) -> list[tuple[Pair, int]]:
    """Each val/test row that ``rule`` matches with a row of an earlier split (or with identical pixels):
    its most similar such row, and how many rows of earlier splits match it."""
    order = {"train": 0, "val": 1, "test": 2}
    rank = np.asarray([order[s] for s in split_names])
    h = np.asarray(hashes)
    out = []
    for a in range(0, len(xn), chunk):
        rows = np.arange(a, min(a + chunk, len(xn)))
        s, ok, d = _matches(xn, bits, rows, rule)
        same = h[rows][:, None] == h[None, :]
        s = np.where(same, 1.0, s)  # pixel-identical: a copy whatever the embedding says
        ok = (ok | same) & (rank[rows][:, None] > rank[None, :])  # only matches in an earlier split
        s = np.where(ok, s, -np.inf)
        for r in np.flatnonzero(ok.any(1)):
            j = int(s[r].argmax())
            i = int(rows[r])
            out.append((Pair(i=i, j=j, score=float(s[r, j]), exact=bool(h[i] == h[j]),
                             phash=None if d is None else int(d[r, j])), int(ok[r].sum())))
    return out
