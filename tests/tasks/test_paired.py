"""What localize, segment and keypoints share (tasks/paired.py): option checks, refusals, inputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import ImageSource, NormStats
from transferlab.errors import ConfigError
from transferlab.options import DataOptions, TrainOptions
from transferlab.tasks import get_task
from transferlab.tasks.base import Prepared
from transferlab.tasks.keypoints import KeypointOptions
from transferlab.tasks.localize import LocalizeOptions
from transferlab.tasks.paired import sub_source
from transferlab.tasks.segment import MaskSet, SegmentOptions, pixel_weights
from transferlab.zoo import Preprocessing


@pytest.mark.parametrize("cls, augment, default", [(LocalizeOptions, "box_augment", 7),
                                                   (SegmentOptions, "mask_augment", 4),
                                                   (KeypointOptions, "kp_augment", 3)])
def test_every_paired_task_checks_its_options_the_same_way(cls, augment, default):
    assert cls().views == (0 if getattr(cls(), augment) == "none" else default)
    assert cls(**{augment: "none"}).views == 0
    with pytest.raises(ConfigError, match="--views must be 0, or > 0 together with --augment"):
        cls(**{augment: "none", "views": 2})
    with pytest.raises(ConfigError, match=r"--crop-scale: expected a finite number in \(0, 1\], got 0.0"):
        cls(crop_scale=0.0)
    with pytest.raises(ConfigError, match="--views: expected an integer >= 0, got -1"):
        cls(views=-1)
    with pytest.raises(ConfigError, match="--augment: expected one of"):
        cls(**{augment: "mixup"})


@pytest.mark.parametrize("task", ["localize", "segment", "keypoints"])
def test_every_paired_task_refuses_image_only_options(task):
    spec = get_task(task)
    d, t, o = DataOptions(), TrainOptions(strategy="fine-tune"), spec.options_class()
    spec.check(data_options=d, train_options=t, options=o)  # the defaults pass
    for bad_d, bad_t, said in [(replace(d, augment="basic"), t, "moves its target with the image"),
                               (d, replace(t, strategy="linear-probe"), "linear-probe fits a classifier"),
                               (d, replace(t, label_smoothing=0.1), "weigh whole images by class")]:
        with pytest.raises(ConfigError, match=said) as e:
            spec.check(data_options=bad_d, train_options=bad_t, options=o)
        assert f"--task {task}" in str(e.value)


def test_fixed_views_inputs_are_seeded_and_compact(tmp_path: Path):
    rng = np.random.default_rng(0)
    paths, masks = [], []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        m = np.zeros((20, 24), np.uint8)
        m[:, : 6 + 4 * i] = 1
        Image.fromarray(m).save(tmp_path / f"{i}m.png")
        paths.append(str(tmp_path / f"{i}.png"))
        masks.append(str(tmp_path / f"{i}m.png"))
    src = ImageSource.from_files(paths, np.zeros(3, np.int64), classes=["images"], name="t")
    lut = np.full(256, -1, np.int64)
    lut[:2] = [0, 1]
    prepared = Prepared(source=src, targets=MaskSet(masks, lut, ["a", "b"]))
    spec, opts = get_task("segment"), SegmentOptions(views=2)
    pp = Preprocessing(16, 16, (0.5,) * 3, (0.5,) * 3, "bilinear")
    ev, tr = spec.transforms(pp, NormStats("pretrained", pp.mean, pp.std), data_options=DataOptions(), options=opts)
    kw = dict(eval_tf=ev, train_tf=tr, preprocessing=pp, data_options=DataOptions(), train_options=TrainOptions(),
              options=opts)
    a = spec.inputs(prepared, np.arange(3), training=True, **kw)
    b = spec.inputs(prepared, np.arange(3), training=True, **kw)
    assert a.name_suffix == "+views2" and len(a.eval_dataset) == 9 and a.labels.shape == (9, 16, 16)
    assert a.labels.dtype == torch.uint8 and torch.equal(a.labels, b.labels)  # fixed: the same views each time
    assert torch.equal(a.labels[3], a.eval_dataset[3][1].to(torch.uint8))  # item 1, view 0 = its eval mask
    plain = spec.inputs(prepared, np.arange(3), training=False, **kw)
    assert plain.train_dataset is None and plain.labels.shape == (3, 16, 16)


def test_sub_source_keeps_or_drops_the_given_split():
    src = ImageSource.from_files(["/d/a.png", "/d/b.png", "/d/c.png"], [0, 1, 1], classes=["x", "y"], name="d",
                                 given_split={"trainval": np.array([0, 1]), "test": np.array([2])})
    sub = sub_source(src, np.array([1, 2]))
    assert [sub.identity(i) for i in range(2)] == ["/d/b.png", "/d/c.png"] and sub.labels.tolist() == [1, 1]
    assert {k: v.tolist() for k, v in sub.given_split.items()} == {"trainval": [0], "test": [1]}
    assert sub_source(src, np.array([1, 2]), keep_given_split=False).given_split is None


def test_pixel_weights_are_checked():
    assert pixel_weights(None, num_classes=3) is None
    for bad in ("1,2", "1,0,1", "a,b,c"):
        with pytest.raises(ConfigError, match="--pixel-weights: expected 3"):
            pixel_weights(bad, num_classes=3)
