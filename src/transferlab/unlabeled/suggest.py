"""``transferlab suggest-labels``: rank unlabelled images for labelling with a trained run.

Example:
    >>> rows = suggest_labels("runs/fe", unlabeled="new_photos/", n=20, strategy="margin",
    ...                       out="to_label.csv")  # doctest: +SKIP
    >>> rows[0]["path"]  # doctest: +SKIP
    '/data/new_photos/img_0412.jpg'
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from transferlab.data import ImageDataset, ImageSource, atomic_write_text, open_dataset
from transferlab.errors import ConfigError, DataError
from transferlab.experiments.artifacts import LoadedModel, load_model
from transferlab.unlabeled.select import entropy_scores, margin_scores, select
from transferlab.unlabeled.source import open_unlabeled

log = logging.getLogger("transferlab")


def embed_with_run(lm: LoadedModel, source: ImageSource, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features, class probabilities) of every image of ``source`` under the trained model."""
    ds = ImageDataset(source, np.arange(len(source)), lm.transform(), draft_size=lm.preprocessing.resize_size)
    feats, probs = [], []
    lm.model.eval()
    with torch.inference_mode():
        for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=False):
            f = lm.model.features(x)
            feats.append(f)
            probs.append(lm.model.head(f).softmax(1))
    return torch.cat(feats).numpy(), torch.cat(probs).double().numpy()


def labelled_source(lm: LoadedModel, run_dir: Path, labeled: str | None) -> ImageSource | None:
    """The images the run already knows: ``--labeled DATA`` (same classes) or the run's split_train.txt."""
    if labeled is not None:
        src = open_dataset(labeled, quiet=True)
        if list(src.classes) != lm.classes:
            raise DataError(f"classes of {labeled} differ from the model's ({len(src.classes)} vs {len(lm.classes)}: "
                            f"not in model {sorted(set(src.classes) - set(lm.classes))[:3]}, missing from data "
                            f"{sorted(set(lm.classes) - set(src.classes))[:3]})")
        return src
    f = run_dir / "split_train.txt"
    if not f.is_file():
        return None
    rows = [line.split("\t") for line in f.read_text(encoding="utf-8").splitlines() if line]
    unknown = sorted({c for _, c in rows} - set(lm.classes))
    if unknown:
        raise DataError(f"{f}: classes {unknown[:3]} are not the model's classes")
    paths = [p for p, _ in rows if os.path.isfile(p)]
    if not paths:
        return None
    labels = [lm.classes.index(c) for p, c in rows if os.path.isfile(p)]
    return ImageSource.from_files(paths, labels, classes=lm.classes, name="train")


def suggest_labels(model_dir: str | os.PathLike[str], *, unlabeled: str, n: int, strategy: str = "margin",
                   out: str | os.PathLike[str] = "suggested.csv", labeled: str | None = None) -> list[dict[str, Any]]:
    """Write ``out`` (rank, path, score, predicted, confidence, margin, entropy) and return its rows."""
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    run_dir = Path(model_dir)
    lm = load_model(run_dir)
    pool = open_unlabeled(unlabeled)
    feats, probs = embed_with_run(lm, pool)
    lab = None
    if strategy == "kcenter":
        known = labelled_source(lm, run_dir, labeled)
        if known is None:
            log.info("kcenter: no labelled images found (no %s/split_train.txt), the first pick is random", run_dir)
        else:
            lab = embed_with_run(lm, known)[0]
            log.info("kcenter: %d labelled images of the run count as covered", len(known))
    order, scores = select(strategy, n=min(n, len(pool)), probs=probs, pool=feats, labelled=lab)
    margin, entropy = margin_scores(probs), entropy_scores(probs)
    rows = [{"rank": r + 1, "path": pool.identity(int(i)), "score": round(float(s), 6),
             "predicted": lm.classes[int(probs[i].argmax())], "confidence": round(float(probs[i].max()), 6),
             "margin_score": round(float(margin[i]), 6), "entropy": round(float(entropy[i]), 6)}
            for r, (i, s) in enumerate(zip(order, scores))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(out), buf.getvalue())
    log.info("suggest-labels: %d of %d unlabelled images ranked by %s -> %s", len(rows), len(pool), strategy, out)
    return rows
