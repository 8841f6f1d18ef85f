"""Extraction path: a decode worker gives the same rows; ONNX Runtime is close and keyed apart; ``auto``
checks parity once and remembers it; cache CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from transferlab.cli import main
from transferlab.data import ImageDataset, NormStats, build_transform, open_dataset
from transferlab.engine import ActivationStore, SplitInputs
from transferlab.engine.feature_cache import FeatureCache
from transferlab.experiments.train import item_keys
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import create_backbone


@pytest.fixture(scope="module")
def model() -> TransferModel:
    return TransferModel(backbone=create_backbone("mobilenet_v2"), num_classes=3, head=HeadConfig(), cut=3)


def _split(model: TransferModel, folder: Path) -> SplitInputs:
    src = open_dataset(str(folder))
    pre = model.preprocessing
    idx = np.arange(len(src))
    return SplitInputs(name="train", labels=torch.as_tensor(src.labels),
                       eval_dataset=ImageDataset(src, idx, build_transform(pre, norm=NormStats(
                           kind="pretrained", mean=pre.mean, std=pre.std))),
                       items=item_keys(src, idx))


def test_decode_worker_rows_equal_in_process_rows(model: TransferModel, tiny_folder: Path):
    split = _split(model, tiny_folder)
    inline = ActivationStore(model, device=torch.device("cpu"), batch_size=len(split))  # one batch: no worker
    worker = ActivationStore(model, device=torch.device("cpu"), batch_size=2)
    assert inline.loader(split.eval_dataset).num_workers == 0
    assert worker.loader(split.eval_dataset).num_workers == 1
    assert torch.equal(torch.cat([r for r in inline._from_images(split, 3)]),
                       torch.cat([r for r in worker._from_images(split, 3)]))


def test_onnx_runtime_close_to_torch_and_keyed_apart(model: TransferModel, tiny_folder: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    split = _split(model, tiny_folder)
    fp = {"backbone": "mobilenet_v2", "weights_sha256": "abc"}
    stores = {}
    for runtime in ("torch", "onnx"):
        store = ActivationStore(model, device=torch.device("cpu"), runtime=runtime,
                                disk=FeatureCache(tmp_path / "fc"), fingerprint=fp)
        store.pristine_upto = 3
        stores[runtime] = store
    a, b = stores["torch"].get(split, 3), stores["onnx"].get(split, 3)
    assert stores["onnx"].forward_images == len(split)  # the torch entry was not reused
    assert stores["torch"].disk_key(split, 3) != stores["onnx"].disk_key(split, 3, runtime="onnx")
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="runtime"):
        ActivationStore(model, device=torch.device("cpu"), runtime="tensorrt")


def test_cache_cli_info_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cache = FeatureCache(tmp_path / "fc")
    w = cache.writer("ab" * 20, n=2, shape=(3,))  # keys are 40 hex digits (FeatureCache.key)
    w.write(torch.ones(2, 3))
    w.commit()
    assert main(["cache", "info", "--dir", str(cache.root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 1 and info["size_bytes"] > 0 and info["location"] == str(cache.root)
    assert main(["cache", "clear", "--dir", str(cache.root), "--json"]) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["entries_removed"] == 1 and cleared["freed_bytes"] == info["size_bytes"]
    assert cache.entries() == [] and cache.size_bytes() == 0


def test_train_runtime_onnx_matches_torch(tiny_folder: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import transferlab

    opts = dict(backbone="mobilenet_v2", cut=3, strategy="feature-extraction", epochs=3, batch_size=8, quiet=True,
                device="cpu")
    a = transferlab.train(str(tiny_folder), out=tmp_path / "torch", **opts)
    b = transferlab.train(str(tiny_folder), out=tmp_path / "onnx", runtime="onnx", **opts)
    assert b.config["train_options"]["runtime"] == "onnx"
    assert b.metrics["val"]["loss"] == pytest.approx(a.metrics["val"]["loss"], abs=1e-3)
    assert b.metrics["test"]["accuracy"] == a.metrics["test"]["accuracy"]


def _auto_store(model: TransferModel, root: Path) -> ActivationStore:
    store = ActivationStore(model, device=torch.device("cpu"), disk=FeatureCache(root),
                            fingerprint={"backbone": "mobilenet_v2", "weights_sha256": "abc"})
    store.pristine_upto = 3
    return store


def test_auto_picks_onnx_after_parity_and_remembers_it(model: TransferModel, tiny_folder: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from transferlab.engine import runtimes

    runtimes.VERDICTS.clear()  # a verdict an earlier test left in this process would be reused
    split = _split(model, tiny_folder)
    first = _auto_store(model, tmp_path / "fc")
    assert first.runtime == "auto"
    with caplog.at_level(logging.INFO, logger="transferlab.engine"):
        acts = first.get(split, 3)
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("runtime ")]
    assert len(chosen) == 1 and chosen[0].startswith("runtime onnx for mobilenet_v2 stages 0-2")
    assert "checked on the first batch of train" in chosen[0]
    verdicts = list((tmp_path / "fc" / "parity").glob("*.json"))
    assert len(verdicts) == 1 and json.loads(verdicts[0].read_text())["runtime"] == "onnx"
    reference = ActivationStore(model, device=torch.device("cpu"), runtime="torch").get(split, 3)
    assert torch.allclose(acts, reference, atol=1e-4, rtol=1e-3)
    caplog.clear()
    again = _auto_store(model, tmp_path / "fc")  # a new process would find the verdict and the entry
    with caplog.at_level(logging.INFO, logger="transferlab.engine"):
        assert torch.equal(again.get(split, 3), acts)
    messages = [r.getMessage() for r in caplog.records]
    assert any("remembered in" in m for m in messages) and again.forward_images == 0


def test_auto_falls_back_to_torch_on_a_failed_verdict(model: TransferModel, tiny_folder: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture):
    pytest.importorskip("onnxruntime")
    from transferlab.engine import runtimes

    split = _split(model, tiny_folder)
    store = _auto_store(model, tmp_path / "fc")
    bad = runtimes.parity(torch.zeros(2, 3), torch.ones(2, 3))
    assert not bad["ok"] and bad["max_abs_diff"] == 1.0
    path = tmp_path / "fc" / "parity" / f"{runtimes.parity_key(store.fingerprint or {}, 3)}.json"
    runtimes.save_verdict(path, {"runtime": "torch", **bad, "reason": "parity check failed on the first batch"})
    with caplog.at_level(logging.INFO, logger="transferlab.engine"):
        acts = store.get(split, 3)
    assert any(m.startswith("runtime torch") and "fell back from ONNX Runtime" in m
               for m in (r.getMessage() for r in caplog.records))
    reference = ActivationStore(model, device=torch.device("cpu"), runtime="torch").get(split, 3)
    assert torch.equal(acts, reference)


def test_workers_auto_resolves_for_the_machine(monkeypatch: pytest.MonkeyPatch):
    import os

    from transferlab.errors import ConfigError
    from transferlab.options import DataOptions

    cores = len(os.sched_getaffinity(0))
    assert DataOptions().workers == "auto" and DataOptions().num_workers == min(4, cores - 1)
    assert DataOptions(workers="3").num_workers == 3 and DataOptions(workers=0).num_workers == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # one rank per core: no spare core for a worker
    assert DataOptions().num_workers == 0
    with pytest.raises(ConfigError, match="--workers must be auto or an integer"):
        DataOptions(workers="many")


def test_onnx_sessions_sleep_instead_of_spinning_and_chunks_are_bit_identical(model: TransferModel,
                                                                            monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from transferlab.engine import runtimes

    options = runtimes.session_options(threads=2)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert runtimes.chunked(model, 3)  # a small prefix runs in chunks
    big = torch.nn.Module()
    big.stages = torch.nn.Sequential(torch.nn.Linear(3000, 3000))  # 36 MB of weights: whole batches
    assert not runtimes.chunked(big, 1)
    monkeypatch.setattr(runtimes, "ORT_CHUNK", 2)  # fewer images for the same check
    run = runtimes.onnx_prefix(model, 3, digest=runtimes.prefix_digest(model, 3))
    n = 5  # three chunks, the last one short
    size = model.preprocessing.input_size
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = run(x)
    assert rows.shape[0] == n
    assert torch.equal(rows, torch.cat([run(x[i : i + 1]) for i in range(n)]))  # a chunk changes no image's output


def test_eval_transform_features_within_tolerance_of_the_pillow_resize(model: TransferModel, tiny_folder: Path):
    """The uint8 tensor resize (the default eval transform) against the former Pillow-resize transform."""
    from torchvision.transforms import v2

    from transferlab.data.geometry import eval_geometry

    pre = model.preprocessing
    norm = NormStats(kind="pretrained", mean=pre.mean, std=pre.std)
    src = open_dataset(str(tiny_folder))
    pillow = v2.Compose([*eval_geometry(pre).transforms, v2.Normalize(list(pre.mean), list(pre.std))])
    fast = build_transform(pre, norm=norm)
    a = torch.stack([pillow(src.load(i)) for i in range(0, len(src), 4)])
    b = torch.stack([fast(src.load(i)) for i in range(0, len(src), 4)])
    assert b.is_contiguous() and (a - b).abs().max() <= 2 / 255 / min(pre.std) + 1e-6
    with torch.inference_mode():
        fa, fb = (model.prefix(t, start=0, stop=3).mean(dim=(2, 3)) for t in (a, b))
    assert float((fa - fb).norm() / fa.norm()) < 1e-3
