"""Augmented training inputs that keep caching: ``--views K`` (fixed augmented views, cached like
plain images), ``--augment-phases auto`` (the head warm-up on cached clean features) and ``--refit``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_image_folder
from transferlab.data import FixedViews, ImageDataset, NormStats, build_transform, open_dataset
from transferlab.engine import ActivationStore
from transferlab.errors import ConfigError
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions
from transferlab.zoo import create_backbone

FAST = dict(backbone="mobilenet_v2", cut=3, epochs=2, finetune_epochs=1, unfreeze=1, batch_size=8)


pytestmark = pytest.mark.usefixtures("offline_cache")


def test_views_are_fixed_augmented_copies_after_each_image(tmp_path: Path) -> None:
    src = open_dataset(str(make_image_folder(tmp_path / "data", size=40)), quiet=True)
    pre = create_backbone("mobilenet_v2", pretrained=False).preprocessing
    norm = NormStats(kind="pretrained", mean=pre.mean, std=pre.std)
    base = ImageDataset(src, np.arange(4), build_transform(pre, norm=norm))
    views = FixedViews(base, build_transform(pre, norm=norm, train=True, augment="basic"), views=2, seed=5)
    assert len(views) == 12 and views.labels.tolist() == np.repeat(src.labels[:4], 3).tolist()
    assert torch.equal(views[3][0], base[1][0])  # view 0 is the image itself
    assert torch.equal(views[4][0], views[4][0])  # a view never changes ...
    assert not torch.equal(views[4][0], views[5][0])  # ... and views differ from each other
    assert not torch.equal(views[4][0], base[1][0])
    other = FixedViews(base, views.transform, views=2, seed=6)
    assert not torch.equal(views[4][0], other[4][0])  # the seed picks the views


def test_views_train_on_cached_activations_of_every_view(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=40)
    d = DataOptions(quiet=True, augment="basic", device="cpu")

    def run(name: str) -> tuple[object, ActivationStore]:
        store = ActivationStore(None, device=torch.device("cpu"), batch_size=64)  # type: ignore[arg-type]
        r = run_training(str(data), data_options=d, out=tmp_path / name, store=store,
                         train_options=TrainOptions(strategy="fine-tune", views=2, **FAST))
        return r, store

    a, store = run("a")
    sizes = {"train": 12, "val": 6, "test": 6}
    # the frozen prefix ran once per view of each training image, never again per epoch: the head
    # phase's boundary (3) chains from the fine-tune phase's (2), computed first; test once at the end
    assert store.forward_images == 3 * sizes["train"] + sizes["val"] + sizes["test"]
    b, _ = run("b")
    assert a.metrics["val"] == b.metrics["val"] and a.metrics["test"] == b.metrics["test"]
    assert a.history[0]["train_loss"] != pytest.approx(
        run_training(str(data), data_options=d, out=tmp_path / "c",
                     train_options=TrainOptions(strategy="fine-tune", views=1, **FAST)).history[0]["train_loss"])


def test_views_need_an_augment_preset(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=40)
    with pytest.raises(ConfigError, match="--views must be 0, or > 0 together with an --augment preset"):
        run_training(str(data), data_options=DataOptions(quiet=True), out=tmp_path / "x",
                     train_options=TrainOptions(strategy="fine-tune", views=2, **FAST))


def test_refit_replays_the_selected_epochs_on_train_and_val(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=40)
    d = DataOptions(quiet=True, device="cpu")
    opts = dict(FAST, epochs=3, finetune_epochs=2, patience=1)
    plain = run_training(str(data), data_options=d, out=tmp_path / "plain",
                         train_options=TrainOptions(strategy="fine-tune", **opts))
    store = ActivationStore(None, device=torch.device("cpu"), batch_size=64)  # type: ignore[arg-type]
    refit = run_training(str(data), data_options=d, out=tmp_path / "refit", store=store,
                         train_options=TrainOptions(strategy="fine-tune", refit=True, **opts))
    # the selection run is the plain run: same history, same held-out val metrics
    assert [h["val_loss"] for h in refit.history] == [h["val_loss"] for h in plain.history]
    assert refit.metrics["val"] == plain.metrics["val"]
    info = refit.metrics["refit"]
    best = plain.metrics["best_epoch"]
    expected = [sum(1 for h in plain.history if h["phase_index"] == pi and h["epoch"] <= best) for pi in range(2)]
    assert info["epochs_per_phase"] == expected and sum(expected) == best  # epochs from 1
    assert info["on"] == "train+val" and info["items"] == 12 + 6
    # train+val activations came from the parts' caches: no image went through the prefix twice
    assert store.forward_images == 12 + 6 + 6
    # the saved model is the refit's: its weights differ from the selection run's
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "refit" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    again = run_training(str(data), data_options=d, out=tmp_path / "again",
                         train_options=TrainOptions(strategy="fine-tune", refit=True, **opts))
    assert again.metrics["test"] == refit.metrics["test"]


def test_auto_augment_phases_warm_up_the_head_on_cached_clean_features(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=40)
    d = DataOptions(quiet=True, augment="basic", device="cpu")

    def run(name: str, phases: str) -> tuple[object, ActivationStore]:
        store = ActivationStore(None, device=torch.device("cpu"), batch_size=64)  # type: ignore[arg-type]
        r = run_training(str(data), data_options=d, out=tmp_path / name, store=store,
                         train_options=TrainOptions(strategy="fine-tune", augment_phases=phases, **FAST))
        return r, store

    auto, auto_store = run("auto", "auto")
    every, every_store = run("all", "all")
    head = {"auto": [h for h in auto.history if h["phase"] == "head"],  # type: ignore[attr-defined]
            "all": [h for h in every.history if h["phase"] == "head"]}  # type: ignore[attr-defined]
    tuned = [h for h in auto.history if h["phase"] == "fine-tune"]  # type: ignore[attr-defined]
    assert head["auto"] and all(h["cached_inputs"] for h in head["auto"])  # clean, cached
    assert not any(h["cached_inputs"] for h in head["all"])  # augmented: the prefix runs every step
    assert tuned and not any(h["cached_inputs"] for h in tuned)  # the stages still train on augmented images
    # auto: the training images went through the prefix once for the cache (train, val, test);
    # all: the head phase has no cached train activations, only val and test are extracted
    sizes = {"train": 12, "val": 6, "test": 6}
    assert auto_store.forward_images == sum(sizes.values())
    assert every_store.forward_images == sizes["val"] + sizes["test"]
    # and the head's first epoch saw different inputs in the two runs
    assert head["auto"][0]["train_loss"] != pytest.approx(head["all"][0]["train_loss"])
