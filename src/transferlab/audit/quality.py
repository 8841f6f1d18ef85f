"""One decoding pass per image: the pixel hash, the perceptual hash and image-quality measurements.

The checks follow cleanvision's issue types (dark, light, blurry, low information, odd aspect
ratio, odd size, grayscale) with fixed, documented thresholds; every number is measured on the
image scaled to at most 256 px, after the full decode that the exact-duplicate hash needs anyway
(the perceptual hash, ``imagehash.phash``, too: it looks at a 32 px grayscale version).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from transferlab.audit.duplicates import HASH_COPY_KINDS, bits_of, hamming, near_copy, perceptual_hash, pixel_hash
from transferlab.data import ImageSource
from transferlab.engine.feature_cache import FeatureCache

#: issue -> (measurement, comparison, threshold); the score of a flagged image is in (0, 1]
THRESHOLDS = {
    "dark": 0.20,  # 99th percentile of luminance (0..1) below this
    "light": 0.92,  # 5th percentile of luminance above this
    "blurry": 15.0,  # variance of the Laplacian of the 256 px grayscale below this
    "low_information": 0.45,  # grayscale histogram entropy / 8 bits below this
    "tiny": 64,  # shorter side in pixels below this
    "aspect_ratio": 3.0,  # longer / shorter side above this
}


@dataclass
class PixelStats:
    hash: str
    width: int
    height: int
    p01: float  # luminance percentiles, 0..1
    p99: float
    p05: float
    p95: float
    laplacian_var: float
    entropy: float  # bits, 0..8
    grayscale: bool
    phash: str = "0" * 16  # imagehash.phash, 16 hex digits


def measure(image: Image.Image) -> PixelStats:
    """Hash + measurements of one decoded image.

    Example:
        >>> s = measure(Image.new("RGB", (300, 40), (5, 5, 5)))
        >>> s.p99 < 0.05, s.grayscale, s.width
        (True, True, 300)
    """
    rgb = image.convert("RGB")
    h = pixel_hash(rgb)
    small = rgb.copy()
    small.thumbnail((256, 256), Image.Resampling.BILINEAR)
    arr = np.asarray(small, dtype=np.int16)
    gray = small.convert("L")
    g = np.asarray(gray, dtype=np.float32) / 255.0
    p01, p05, p95, p99 = np.quantile(g, [0.01, 0.05, 0.95, 0.99])
    g255 = g * 255.0
    lap = (g255[:-2, 1:-1] + g255[2:, 1:-1] + g255[1:-1, :-2] + g255[1:-1, 2:] - 4 * g255[1:-1, 1:-1])
    hist = np.bincount(np.asarray(gray).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    spread = np.abs(arr - arr.mean(axis=2, keepdims=True)).max(axis=2)
    return PixelStats(hash=h, width=rgb.size[0], height=rgb.size[1], p01=float(p01), p99=float(p99),
                      p05=float(p05), p95=float(p95), laplacian_var=float(lap.var()) if lap.size else 0.0,
                      entropy=float(-(p * np.log2(p)).sum()), grayscale=bool(np.quantile(spread, 0.99) <= 3),
                      phash=perceptual_hash(small))  # the same 256 px image as _small_phash


ROW = 9 + 10 + 4  # 9 measurements, the 20-byte sha1 as 10 halves, the 8-byte perceptual hash as 4


def _to_row(s: PixelStats) -> np.ndarray:
    nums = np.array([s.width, s.height, s.p01, s.p05, s.p95, s.p99, s.laplacian_var, s.entropy, s.grayscale],
                    dtype=np.float32)
    # the hash as 16-bit halves: each is exactly a float32 (raw bits could read as NaN, which the cache refuses)
    digests = bytes.fromhex(s.hash) + bytes.fromhex(s.phash)
    return np.concatenate([nums, np.frombuffer(digests, dtype=">u2").astype(np.float32)])


def _from_row(r: np.ndarray) -> PixelStats:
    digest = np.asarray(r[9:], dtype=np.float64).round().astype(">u2").tobytes().hex()
    return PixelStats(hash=digest[:40], width=int(r[0]), height=int(r[1]), p01=float(r[2]), p05=float(r[3]),
                      p95=float(r[4]), p99=float(r[5]), laplacian_var=float(r[6]), entropy=float(r[7]),
                      grayscale=bool(r[8]), phash=digest[40:])


def measure_source(source: ImageSource, indices: np.ndarray, *, threads: int = 2,
                   cache: FeatureCache | None = None) -> tuple[list[PixelStats], bool]:
    """(:func:`measure` for ``indices`` of ``source``, whether it came from ``cache``).

    Decoding overlaps in ``threads`` threads. With a cache, the measurements are kept in it like
    activations (keyed by the identity, size and mtime of every image), the hash bits stored exactly.
    """
    from transferlab.experiments.train import item_keys

    key = None
    if cache is not None:
        key = cache.key(fingerprint={"audit": "pixel-stats", "version": 3}, boundary=0,
                        items=item_keys(source, indices))
        hit = cache.load(key)
        if hit is not None:
            return [_from_row(r) for r in hit.numpy()], True
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        stats = list(pool.map(lambda i: measure(source.load(int(i))), indices))
    if key is not None and cache is not None and stats:
        writer = cache.writer(key, n=len(stats), shape=(ROW,))
        writer.write(torch.from_numpy(np.stack([_to_row(s) for s in stats])))
        writer.commit()
    return stats, False


def _small_phash(image: Image.Image) -> str:
    small = image.convert("RGB")
    small.thumbnail((256, 256), Image.Resampling.BILINEAR)
    return perceptual_hash(small)


def copy_phash_distances(source: ImageSource, indices: np.ndarray, phashes: list[str], *, threads: int = 2,
                         cache: FeatureCache | None = None) -> np.ndarray:
    """(len(indices), 4) perceptual-hash distances between each image and its near-copies of
    :data:`~transferlab.audit.duplicates.HASH_COPY_KINDS`, measured as :func:`measure` does (kept in
    ``cache`` like the measurements: a warm audit decodes nothing)."""
    from transferlab.experiments.train import item_keys

    key = None
    if cache is not None:
        key = cache.key(fingerprint={"audit": "phash-copies", "kinds": list(HASH_COPY_KINDS), "version": 1},
                        boundary=0, items=item_keys(source, indices))
        hit = cache.load(key)
        if hit is not None:
            return hit.numpy()

    def one(k: int) -> list[str]:
        im = source.load(int(indices[k]))
        return [_small_phash(near_copy(im, kind)) for kind in HASH_COPY_KINDS]

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        copies = list(pool.map(one, range(len(indices))))
    dist = np.stack([hamming(bits_of([phashes[k]]), bits_of(c))[0] for k, c in enumerate(copies)]).astype(np.float32)
    if key is not None and cache is not None and len(dist):
        writer = cache.writer(key, n=len(dist), shape=(len(HASH_COPY_KINDS),))
        writer.write(torch.from_numpy(dist))
        writer.commit()
    return dist


def quality_issues(stats: PixelStats, *, colour_set: bool) -> list[tuple[str, float, str]]:
    """(issue, score in (0, 1], what was measured) for each quality problem of one image.

    Example:
        >>> [i for i, _, _ in quality_issues(measure(Image.new("RGB", (40, 40))), colour_set=True)]
        ['dark', 'blurry', 'low_information', 'tiny', 'grayscale']
    """
    t = THRESHOLDS
    out = []
    if stats.p99 < t["dark"]:
        out.append(("dark", 1 - stats.p99 / t["dark"] * 0.5, f"99th percentile luminance {stats.p99:.2f}"))
    if stats.p05 > t["light"]:
        out.append(("light", 0.5 + (stats.p05 - t["light"]) / (1 - t["light"]) * 0.5,
                    f"5th percentile luminance {stats.p05:.2f}"))
    if stats.laplacian_var < t["blurry"]:
        out.append(("blurry", 1 - stats.laplacian_var / t["blurry"] * 0.5, f"Laplacian variance {stats.laplacian_var:.1f}"))
    if stats.entropy / 8 < t["low_information"]:
        out.append(("low_information", 1 - stats.entropy / 8 / t["low_information"] * 0.5,
                    f"entropy {stats.entropy:.2f} bits"))
    short, long = min(stats.width, stats.height), max(stats.width, stats.height)
    if short < t["tiny"]:
        out.append(("tiny", 1 - short / t["tiny"] * 0.5, f"{stats.width}x{stats.height} px"))
    if long / max(short, 1) > t["aspect_ratio"]:
        out.append(("aspect_ratio", min(1.0, 0.5 + (long / short - t["aspect_ratio"]) / 10),
                    f"aspect ratio {long / short:.1f}"))
    if colour_set and stats.grayscale:
        out.append(("grayscale", 0.5, "grayscale image in a colour data set"))
    return [(i, round(float(s), 4), w) for i, s, w in out]
