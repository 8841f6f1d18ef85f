from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab.data import ImageDataset, NormStats, build_transform, open_dataset
from transferlab.engine import ActivationStore, SplitInputs
from transferlab.engine.feature_cache import FeatureCache
from transferlab.experiments.train import cache_fingerprint, item_keys
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone


@pytest.fixture(scope="module")
def model() -> TransferModel:
    return TransferModel(backbone=create_backbone("mobilenet_v2"), num_classes=3, head=HeadConfig(), cut=3)


def _store(model: TransferModel, folder: Path, cache_dir: Path, *, norm: NormStats | None = None,
           sha: str | None = None) -> tuple[ActivationStore, SplitInputs]:
    src = open_dataset(str(folder))
    pre = model.preprocessing
    norm = norm or NormStats(kind="pretrained", mean=pre.mean, std=pre.std)
    idx = np.arange(len(src))
    split = SplitInputs(name="train", labels=torch.as_tensor(src.labels),
                        eval_dataset=ImageDataset(src, idx, build_transform(pre, norm=norm)),
                        items=item_keys(src, idx))
    fp = {"backbone": "mobilenet_v2", "weights_sha256": sha or "abc", "preprocessing": pre.to_dict(),
          "normalization": norm.to_dict()}
    store = ActivationStore(model, device=torch.device("cpu"), disk=FeatureCache(cache_dir), fingerprint=fp)
    store.pristine_upto = 3
    return store, split


def test_hit_is_bit_identical_and_does_no_forward_pass(model: TransferModel, tiny_folder: Path, tmp_path: Path):
    store, split = _store(model, tiny_folder, tmp_path / "fc")
    fresh = store.get(split, 3).clone()
    assert store.forward_images == len(split) and store.disk.misses == 1
    again, split2 = _store(model, tiny_folder, tmp_path / "fc")
    hit = again.get(split2, 3)
    assert again.forward_images == 0 and again.disk.hits == 1
    assert torch.equal(hit, fresh)
    nocache = ActivationStore(model, device=torch.device("cpu"))
    assert torch.equal(nocache.get(split, 3), fresh)  # what a fresh computation gives


def test_changed_file_preprocessing_or_weights_miss(model: TransferModel, tiny_folder: Path, tmp_path: Path):
    cache = tmp_path / "fc"
    store, split = _store(model, tiny_folder, cache)
    store.get(split, 3)
    # a changed file
    victim = sorted((tiny_folder / "class_0").iterdir())[0]
    from PIL import Image

    Image.new("RGB", (48, 48), (1, 2, 3)).save(victim)
    os.utime(victim, (time.time() + 5, time.time() + 5))
    s2, sp2 = _store(model, tiny_folder, cache)
    s2.get(sp2, 3)
    assert s2.forward_images == len(sp2) and s2.disk.hits == 0
    # different preprocessing (normalisation) and a different weights hash
    s3, sp3 = _store(model, tiny_folder, cache, norm=NormStats(kind="dataset", mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2)))
    s3.get(sp3, 3)
    assert s3.disk.hits == 0 and s3.forward_images == len(sp3)
    s4, sp4 = _store(model, tiny_folder, cache, sha="other")
    s4.get(sp4, 3)
    assert s4.disk.hits == 0
    assert len(FeatureCache(cache).entries()) == 4


def test_trained_boundaries_never_go_to_disk(model: TransferModel, tiny_folder: Path, tmp_path: Path):
    store, split = _store(model, tiny_folder, tmp_path / "fc")
    store.pristine_upto = 2  # stage 2 trains: the input of stage 3 depends on trained weights
    store.get(split, 3)
    assert FeatureCache(tmp_path / "fc").entries() == []


def test_size_limit_and_clear(tmp_path: Path):
    cache = FeatureCache(tmp_path / "fc", max_bytes=3000)
    for i in range(3):
        w = cache.writer(f"{i:040x}", n=4, shape=(100,))
        w.write(torch.full((4, 100), float(i)))
        w.commit()
        time.sleep(0.01)
    assert [p.stem for p in cache.entries()] == [f"{2:040x}"]  # 1.6 kB each: the oldest were evicted
    assert cache.clear() > 0 and cache.entries() == []


def test_fingerprint_needs_known_weights():
    bb = create_backbone("mobilenet_v2", pretrained=False)
    pre = bb.preprocessing
    assert cache_fingerprint(bb, NormStats(kind="pretrained", mean=pre.mean, std=pre.std)) is None
    bb = create_backbone("mobilenet_v2")
    fp = cache_fingerprint(bb, NormStats(kind="pretrained", mean=pre.mean, std=pre.std))
    assert fp is not None and fp["weights_sha256"].startswith("b0353104")
