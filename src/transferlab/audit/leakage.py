"""The one-line cross-split near-duplicate warning of ``train`` and ``compare``.

It embeds the split with the audit's pretrained features (the same feature-cache entries that
``train --strategy linear-probe/feature-extraction`` and ``audit`` use), calibrates the threshold as
``audit`` does, and counts the val/test images with a near-copy in an earlier split. ``train`` runs it
after training from the cache only (no extra pass over the split; a run whose features are not
cached says in one line that it did not check); ``compare`` embeds image files once before its runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from transferlab.audit.duplicates import NearRule, cross_split_pairs, normalize_rows
from transferlab.audit.features import SPLIT_ORDER, Embedder, embed_split
from transferlab.data import ImageSource, Split
from transferlab.engine.feature_cache import FeatureCache

log = logging.getLogger("transferlab")


@contextlib.contextmanager
def _only_warnings() -> Iterator[None]:
    """The check's own feature loading (weights, cached entries, copies) stays out of the run's log:
    it says what it found in one line instead."""
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def check_split_leakage(source: ImageSource, split: Split, *, data: str, backbone: str, weights: str | None,
                        cache: FeatureCache | None, compute: bool, device: str = "auto", workers: int = 0,
                        split_option: str = "") -> dict[str, Any] | None:
    """Count val/test images with a near-duplicate in an earlier split; warn in one line when there are any.

    Without ``compute`` the check runs only from cached features (no forward pass) and says so when it
    cannot. Returns ``{"count", "threshold", "pairs"}`` or None when it did not run.

    Example:
        >>> check_split_leakage(src, split, data="flowers17/", backbone="efficientnet_lite0", weights=None,
        ...                     cache=FeatureCache(), compute=True)["count"]  # doctest: +SKIP
        0
    """
    from transferlab.audit.run import calibrated_threshold

    from transferlab.errors import ConfigError, WeightsNotFoundError

    how = f"`transferlab audit {data}{split_option} --out audit` shows them"
    if cache is None:
        log.info("cross-split near-duplicates: not checked (--feature-cache off; %s)", how.replace("shows them", "checks"))
        return None
    try:
        with _only_warnings():
            embedder = Embedder.create(backbone, source=source, norm_indices=split.train, weights=weights,
                                       cache=cache, device=device, workers=workers)
    except (WeightsNotFoundError, ConfigError) as exc:
        log.info("cross-split near-duplicates: not checked (%s)", str(exc).splitlines()[0])
        return None
    if not compute:
        store, b = embedder.store, embedder.boundary
        splits = [embedder.inputs(n, source, getattr(split, n)) for n in SPLIT_ORDER]
        # the entries of the runtime the run extracted with (ONNX Runtime and PyTorch features are keyed apart)
        found = [r for r in ("onnx", "torch") if all(
            (k := store.disk_key(s, b, runtime=r)) is not None and (cache.root / f"{k}.npy").is_file() for s in splits)]
        if not found:
            log.info("cross-split near-duplicates: not checked (no cached features of this split; %s)",
                     how.replace("shows them", "checks"))
            return None
        store.runtime = found[0]  # read those entries; no parity check, no forward pass
    with _only_warnings():
        x, rows_idx, names = embed_split(embedder, source, split)
        xn = normalize_rows(x)
        ids = [source.identity(int(i)) for i in rows_idx]
        thr = calibrated_threshold(embedder, source, rows_idx, xn, ids, sample=60, seed=0)["value"]
    pairs = cross_split_pairs(xn, names, rule=NearRule(embedding=thr), hashes=ids)  # cosine only: no decoding pass
    if pairs:
        where = {s: sum(1 for p, _ in pairs if names[p.i] == s) for s in ("val", "test")}
        log.warning("warning: %d images of val/test have a near-duplicate in an earlier split (val %d, test %d; "
                    "cosine >= %.3f): test accuracy may be optimistic; %s", len(pairs), where["val"],
                    where["test"], thr, how)
    else:
        log.info("cross-split near-duplicates: none (%d val/test images against the earlier splits, cosine >= %.3f, "
                 "%s features)", int(sum(names != "train")), thr, backbone)
    return {"count": len(pairs), "threshold": thr,
            "pairs": [[ids[p.i], ids[p.j], round(p.score, 4)] for p, _ in pairs[:100]]}

