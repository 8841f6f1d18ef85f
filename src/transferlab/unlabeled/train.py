"""``train --unlabeled DIR``: the unlabelled images as an extra split of a linear-probe / feature-extraction run."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from transferlab.data import ImageDataset, ImageSource, Split
from transferlab.engine import SplitInputs
from transferlab.errors import ConfigError, DataError
from transferlab.unlabeled.semi import PseudoLabels, pseudo_label
from transferlab.unlabeled.source import open_unlabeled, overlapping

log = logging.getLogger("transferlab")
STRATEGIES = ("linear-probe", "feature-extraction")


def open_for_run(folder: str, *, strategy: str, source: ImageSource, split: Split) -> ImageSource:
    """The ``--unlabeled`` folder, checked: a supported strategy, images there, none of val/test among them."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--unlabeled works with --strategy {' or '.join(STRATEGIES)}, got {strategy}")
    unl = open_unlabeled(folder)
    held = overlapping(unl, source, np.concatenate([split.val, split.test]))
    if held:
        raise DataError(f"--unlabeled {folder}: {len(held)} of its images are val/test images of the data "
                        f"(e.g. {held[0]}); expected images outside the evaluation splits")
    return unl


def unlabeled_inputs(unl: ImageSource, *, transform: Any, draft_size: int) -> SplitInputs:
    from transferlab.experiments.train import item_keys

    idx = np.arange(len(unl))
    return SplitInputs(name="unlabeled", labels=torch.zeros(len(unl), dtype=torch.long),
                       eval_dataset=ImageDataset(unl, idx, transform, draft_size=draft_size),
                       items=item_keys(unl, idx))


def with_pseudo_labels(inputs: SplitInputs, pl: PseudoLabels) -> SplitInputs:
    """The unlabelled images that ``pl`` uses, labelled with their pseudo-labels (for backprop training)."""
    keep = np.flatnonzero(pl.used)
    labels = torch.as_tensor(pl.labels[keep], dtype=torch.long)

    class Relabelled(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(keep)

        def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
            return inputs.eval_dataset[int(keep[k])][0], int(labels[k])

    return SplitInputs(name=f"unlabeled-pseudo{len(keep)}", labels=labels, eval_dataset=Relabelled(),
                       items=None if inputs.items is None else [inputs.items[int(i)] for i in keep])


def summary(pl: PseudoLabels, *, folder: str, threshold: float, val_labelled_only: float | None = None,
            val_with_unlabeled: float | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"folder": folder, **pl.summary(), "threshold": threshold}
    if val_labelled_only is not None:
        s["val_accuracy_labelled_only"] = round(val_labelled_only, 4)
        s["val_accuracy_with_unlabeled"] = round(float(val_with_unlabeled or 0.0), 4)
    log.info("--unlabeled %s: %d of %d unlabelled images used with pseudo-labels (%s, confidence >= %.2f)",
             folder, s["n_used"], s["n_unlabeled"], pl.method, threshold)
    return s


def probe_with_unlabeled(probe: Any, xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray,
                         xu: np.ndarray, *, num_classes: int, classifier: str, method: str, threshold: float,
                         seed: int, folder: str) -> tuple[Any, dict[str, Any]]:
    """The probe refit at its chosen C on train + pseudo-labelled images (then + val, as the probe does)."""
    from transferlab.strategies import fit_linear_probe

    pl = pseudo_label(xtr, ytr, xu, method=method, C=probe.C, threshold=threshold, seed=seed)
    use = np.flatnonzero(pl.used)
    semi = fit_linear_probe(np.vstack([xtr, xu[use]]), np.concatenate([ytr, pl.labels[use]]), xva, yva,
                            num_classes=num_classes, classifier=classifier, grid=(probe.C,), seed=seed)
    semi.grid = probe.grid
    return semi, summary(pl, folder=folder, threshold=threshold, val_labelled_only=probe.val_accuracy,
                         val_with_unlabeled=semi.val_accuracy)


def pooled(store: Any, model: Any, split: SplitInputs, boundary: int) -> np.ndarray:
    acts = store.get(split, boundary)
    if acts is None:
        raise ConfigError(f"{split.name}: features do not fit the cache budget; use a smaller --cut or data")
    with torch.inference_mode():
        return torch.cat([model.pool(acts[i : i + 256]) for i in range(0, len(acts), 256)]).numpy()


def add_pseudo_labelled(store: Any, model: Any, train_in: SplitInputs, unl_in: SplitInputs, *, boundary: int,
                        method: str, threshold: float, seed: int, folder: str) -> tuple[SplitInputs, dict[str, Any]]:
    """Feature-extraction: the training split plus the pseudo-labelled unlabelled images (labels from a
    logistic regression / label spreading on the pooled cached features of the labelled training split)."""
    from transferlab.engine import concat_inputs

    pl = pseudo_label(pooled(store, model, train_in, boundary), train_in.labels.numpy(),
                      pooled(store, model, unl_in, boundary), method=method, threshold=threshold, seed=seed)
    info = summary(pl, folder=folder, threshold=threshold)
    if not pl.used.any():
        return train_in, info
    extra = with_pseudo_labels(unl_in, pl)
    acts = store.get(unl_in, boundary)  # computed just above: the pseudo-labelled rows need no second pass
    store._cache[(extra.name, boundary)] = acts[torch.as_tensor(np.flatnonzero(pl.used))]
    return concat_inputs(train_in, extra), info
