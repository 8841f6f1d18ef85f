"""Frozen-prefix caching: the activations entering the trainable suffix, computed once.

Boundary ``b`` means "the input of stage b" (``b = 0``: the preprocessed image, ``b = n``: the
last stage's output). A boundary is computed from the deepest cached boundary below it, or from
the images; entries above a stage are dropped when that stage's weights change.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from transferlab.engine.feature_cache import FeatureCache
from transferlab.progress import bar
from transferlab.strategies.model import TransferModel

log = logging.getLogger("transferlab.engine")
RUNTIMES = ("torch", "onnx")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Everything in eval mode inside; every module's own train/eval flag restored after.

    (``model.train(flag)`` would not do: it sets all children alike, which would switch frozen
    batch-norm layers back to training mode.)
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@dataclass
class SplitInputs:
    """One split as the engine sees it: labels, and images through the eval / train transforms."""

    name: str
    labels: torch.Tensor  # one row per item: class indices (N,) or task targets (N, ...) such as boxes
    eval_dataset: Dataset
    train_dataset: Dataset | None = None  # augmented view (train split only)
    items: list[str] | None = None  # "identity|size|mtime" per item: keys the on-disk feature cache
    parts: tuple["SplitInputs", ...] = ()  # set by concat_inputs: activations are the parts' concatenated

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def concat_inputs(*parts: SplitInputs) -> SplitInputs:
    """Several splits as one (e.g. train+val for a refit); cached activations of the parts are reused.

    Example:
        >>> both = concat_inputs(train_in, val_in)  # doctest: +SKIP
        >>> len(both) == len(train_in) + len(val_in)  # doctest: +SKIP
        True
    """
    if not parts:
        raise ValueError("concat_inputs: expected at least one split")
    train_sets = [p.train_dataset if p.train_dataset is not None else p.eval_dataset for p in parts]
    items = None if any(p.items is None for p in parts) else [k for p in parts for k in p.items or []]
    return SplitInputs(name="+".join(p.name for p in parts), labels=torch.cat([p.labels for p in parts]),
                       eval_dataset=ConcatDataset([p.eval_dataset for p in parts]),
                       train_dataset=ConcatDataset(train_sets), items=items, parts=tuple(parts))


class ActivationStore:
    """In-memory cache of activations per (split, boundary), bounded by ``max_bytes``."""

    def __init__(
        self,
        model: TransferModel,
        *,
        device: torch.device,
        batch_size: int = 64,
        num_workers: int = 0,
        max_bytes: int = 6 << 30,
        progress: bool = False,
        disk: FeatureCache | None = None,
        fingerprint: dict[str, Any] | None = None,
        runtime: str = "torch",
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.model = model
        self.runtime = runtime  # "onnx": the prefix runs in ONNX Runtime (features differ from torch by ~1e-5)
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_bytes = max_bytes
        self.progress = progress
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self._shapes: dict[int, tuple[int, ...]] = {}
        self.forward_images = 0  # images pushed through stage 0 (for tests and benchmarks)
        self.disk = disk
        self.fingerprint = fingerprint  # None: the weights are not a known pretrained file
        # boundaries <= pristine_upto only depend on weights that no phase trains: disk-cacheable
        self.pristine_upto = 0
        self._how = "computed"  # how the last boundary was obtained (for its log line)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    def boundary_shape(self, boundary: int) -> tuple[int, ...]:
        if boundary not in self._shapes:
            size = self.model.preprocessing.input_size
            with eval_mode(self.model), torch.inference_mode():  # a train-mode BN would update its stats
                x = torch.zeros(1, 3, size, size, device=self.device)
                self._shapes[boundary] = tuple(self.model.prefix(x, start=0, stop=boundary).shape[1:])
        return self._shapes[boundary]

    def fits(self, split: SplitInputs, boundary: int) -> bool:
        numel = 1
        for d in self.boundary_shape(boundary):
            numel *= d
        return self.nbytes() + len(split) * numel * 4 <= self.max_bytes

    def cached(self, split: SplitInputs, boundary: int) -> bool:
        return (split.name, boundary) in self._cache

    def label(self, boundary: int) -> str:
        """What boundary ``boundary`` holds, in words.

        Example:
            >>> store.label(6)  # doctest: +SKIP
            'activations entering stage6 (the 6 stages below it frozen)'
        """
        names = self.model.stage_names
        if boundary <= 0:
            return "preprocessed images"
        if boundary >= len(names):
            return f"features after the last stage {names[-1]} (all {len(names)} stages frozen)"
        return f"activations entering {names[boundary]} (the {boundary} stages below it frozen)"

    def get(self, split: SplitInputs, boundary: int) -> torch.Tensor | None:
        """Activations at ``boundary`` for every item of ``split`` (None if over the memory budget)."""
        key = (split.name, boundary)
        if key in self._cache:
            return self._cache[key]
        if not self.fits(split, boundary):
            log.info("%s: %s not cached: over the %d MB budget (computed every epoch)", split.name,
                     self.label(boundary), self.max_bytes >> 20)
            return None
        below = [b for (s, b) in self._cache if s == split.name and b <= boundary]
        if not below and split.parts and all(self.cached(p, boundary) for p in split.parts):
            out = torch.cat([self._cache[(p.name, boundary)] for p in split.parts])
            self._cache[key] = out
            return out
        t0 = time.perf_counter()
        self._how = "computed"
        with eval_mode(self.model), torch.inference_mode():
            if below:
                start = max(below)
                if start:
                    self._how = f"computed from the cached input of {self.model.stage_names[start]}"
                src = self._cache[(split.name, start)]
                chunks = [
                    self.model.prefix(src[i : i + self.batch_size].to(self.device), start=start, stop=boundary).cpu()
                    for i in range(0, len(src), self.batch_size)
                ]
                out = torch.cat(chunks).contiguous() if chunks else torch.empty(0)
            else:
                out = self._from_disk_or_images(split, boundary)
        self._cache[key] = out
        log.info("%s: %s, %d images: %s in %.1fs, cached in memory (%.0f MB)", split.name, self.label(boundary),
                 len(split), self._how, time.perf_counter() - t0, out.numel() * out.element_size() / 2**20)
        return out

    def disk_key(self, split: SplitInputs, boundary: int) -> str | None:
        if (self.disk is None or self.fingerprint is None or split.items is None
                or not 1 <= boundary <= self.pristine_upto):
            return None
        fingerprint = self.fingerprint if self.runtime == "torch" else {**self.fingerprint, "runtime": self.runtime}
        return self.disk.key(fingerprint=fingerprint, boundary=boundary, items=split.items)

    def _from_disk_or_images(self, split: SplitInputs, boundary: int) -> torch.Tensor:
        key = self.disk_key(split, boundary)
        if key is None or self.disk is None:
            chunks = self._from_images(split, boundary)
            return torch.cat(chunks).contiguous() if chunks else torch.empty(0)
        hit = self.disk.load(key)
        if hit is not None:
            self._how = "read from the on-disk feature cache (no forward pass)"
            return hit
        writer = self.disk.writer(key, n=len(split), shape=self.boundary_shape(boundary))
        try:
            self._from_images(split, boundary, sink=writer.write)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def loader(self, dataset: Dataset) -> DataLoader:
        """The extraction DataLoader: in order, and decoding overlapped with the model.

        With ``num_workers=0`` and more than one batch, one worker process decodes the next
        batches while the model runs (PyTorch gives each worker one intra-op thread, so the
        worker takes one core's share and never spawns a competing OpenMP pool). Decoding and
        transforms are deterministic per item, so the rows are the same as in-process decoding.

        Example:
            >>> store.loader(split.eval_dataset).num_workers  # doctest: +SKIP
            1
        """
        workers = self.num_workers
        if workers == 0 and len(dataset) > self.batch_size and (os.cpu_count() or 1) >= 2:
            workers = 1
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers,
                          prefetch_factor=2 if workers else None, generator=torch.Generator())  # global RNG untouched

    def _from_images(self, split: SplitInputs, boundary: int,
                     sink: Callable[[torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Run the prefix over the images; rows go to ``sink`` as they come (streaming) or are returned."""
        loader: Any = self.loader(split.eval_dataset)
        loader = bar(loader, desc=f"{split.name}: {self.label(boundary)}", unit="batch", enabled=self.progress)
        run = self._onnx_prefix(boundary) if self.runtime == "onnx" else None
        chunks = []
        for x, _ in loader:
            self.forward_images += len(x)
            if run is not None:
                rows = run(x)
            else:
                x = x.to(self.device).contiguous(memory_format=torch.channels_last)
                rows = self.model.prefix(x, start=0, stop=boundary).float().cpu().contiguous()
            if sink is None:
                chunks.append(rows)
            else:
                sink(rows)
        return chunks

    def _onnx_prefix(self, boundary: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Stages ``0..boundary-1`` exported to ONNX and run in ONNX Runtime (CPU)."""
        from transferlab.export._deps import require

        ort = require("onnxruntime", extra="export", feature="ONNX Runtime feature extraction")
        require("onnx", extra="export", feature="ONNX Runtime feature extraction")
        model = self.model

        class Prefix(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.model.prefix(x, start=0, stop=boundary)

        size = model.preprocessing.input_size
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(Prefix().eval(), (torch.zeros(1, 3, size, size),), buf, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])

        return run

    def invalidate_above(self, stage_index: int) -> None:
        """Drop boundaries that depend on stage ``stage_index`` (they are > stage_index)."""
        for key in [k for k in self._cache if k[1] > stage_index]:
            del self._cache[key]
