"""Normalisation statistics and transforms (per-image presets, MixUp/CutMix)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from transferlab.data import (
    AUGMENT_PRESETS,
    NORM_KINDS,
    ImageSource,
    NormStats,
    batch_augmentation,
    build_transform,
    compute_norm_stats,
)
from transferlab.errors import ConfigError, DataError
from transferlab.zoo.preprocessing import Preprocessing

PP = Preprocessing(input_size=8, resize_size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def two_level_images(n: int, low: tuple[int, int, int], high: tuple[int, int, int]) -> np.ndarray:
    """n RGB 8x8 images: left half ``low``, right half ``high`` per channel."""
    arr = np.empty((n, 8, 8, 3), np.uint8)
    arr[:, :, :4] = low
    arr[:, :, 4:] = high
    return arr


@pytest.fixture
def train_dark_eval_bright() -> tuple[ImageSource, np.ndarray]:
    """Training images are dark; val/test images are bright: statistics must come from train only."""
    train = two_level_images(6, (51, 102, 0), (102, 153, 51))  # 0.2/0.4, 0.4/0.6, 0.0/0.2
    other = two_level_images(6, (230, 230, 230), (255, 255, 255))
    pixels = np.concatenate([train, other])
    labels = np.array([0, 1] * 6)
    src = ImageSource.from_arrays(pixels, labels, classes=["a", "b"], name="t")
    return src, np.arange(6)


def test_dataset_stats_use_training_images_only(train_dark_eval_bright):
    src, train = train_dark_eval_bright
    stats = compute_norm_stats("dataset", source=src, indices=train, preprocessing=PP)
    assert stats.kind == "dataset"
    np.testing.assert_allclose(stats.mean, (0.3, 0.5, 0.1), atol=1e-3)
    np.testing.assert_allclose(stats.std, (0.1, 0.1, 0.1), atol=1e-3)


def test_minmax_maps_training_range_to_unit_interval(train_dark_eval_bright):
    src, train = train_dark_eval_bright
    stats = compute_norm_stats("minmax", source=src, indices=train, preprocessing=PP)
    np.testing.assert_allclose(stats.mean, (0.2, 0.4, 0.0), atol=1e-3)
    np.testing.assert_allclose(stats.std, (0.2, 0.2, 0.2), atol=1e-3)
    t = build_transform(PP, norm=stats)
    x = torch.stack([t(src.load(i)) for i in train])
    np.testing.assert_allclose(x.amin(dim=(0, 2, 3)), 0.0, atol=1e-3)
    np.testing.assert_allclose(x.amax(dim=(0, 2, 3)), 1.0, atol=1e-3)
    assert t(src.load(8)).min() > 1.0  # the bright val image lies outside the training range


def test_max_images_samples_a_subset(train_dark_eval_bright):
    src, _ = train_dark_eval_bright
    everything = np.arange(len(src))
    full = compute_norm_stats("dataset", source=src, indices=everything, preprocessing=PP)
    few = compute_norm_stats("dataset", source=src, indices=everything, preprocessing=PP, max_images=3, seed=1)
    again = compute_norm_stats("dataset", source=src, indices=everything, preprocessing=PP, max_images=3, seed=1)
    assert few == again and few.mean != full.mean


def test_pretrained_and_sample_kinds(train_dark_eval_bright):
    src, train = train_dark_eval_bright
    pre = compute_norm_stats("pretrained", source=src, indices=train, preprocessing=PP)
    assert (pre.mean, pre.std) == (PP.mean, PP.std)
    sample = compute_norm_stats("sample", source=src, indices=train, preprocessing=PP)
    assert (sample.kind, sample.mean, sample.std) == ("sample", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_sample_standardisation_per_image():
    pp = Preprocessing(input_size=32, resize_size=36, mean=PP.mean, std=PP.std)
    t = build_transform(pp, norm=NormStats("sample", (0, 0, 0), (1, 1, 1)))
    rng = np.random.default_rng(0)
    for scale in (0.2, 1.0):
        img = Image.fromarray((rng.random((40, 50, 3)) * 255 * scale).astype(np.uint8))
        x = t(img)
        np.testing.assert_allclose(x.mean(dim=(1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(x.std(dim=(1, 2), unbiased=False), 1.0, atol=1e-3)
    flat = t(Image.new("RGB", (40, 40), (9, 9, 9)))
    assert torch.isfinite(flat).all() and flat.abs().max() < 1e-5


def test_unknown_norm_kind_lists_valid_ones(train_dark_eval_bright):
    src, train = train_dark_eval_bright
    with pytest.raises(ConfigError) as info:
        compute_norm_stats("zscore", source=src, indices=train, preprocessing=PP)
    assert all(k in str(info.value) for k in NORM_KINDS) and "'zscore'" in str(info.value)


def test_constant_channel_is_an_error():
    src = ImageSource.from_arrays(np.full((4, 8, 8, 3), 7, np.uint8), [0, 1, 0, 1], classes=["a", "b"], name="flat")
    with pytest.raises(DataError, match="channel R is constant"):
        compute_norm_stats("dataset", source=src, indices=[0, 1, 2], preprocessing=PP)


def test_norm_stats_roundtrip_and_validation():
    n = NormStats("dataset", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert NormStats.from_dict(n.to_dict()) == n
    assert n.to_dict() == {"kind": "dataset", "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    with pytest.raises(ConfigError, match="positive stds"):
        NormStats("dataset", (0, 0, 0), (1, 0, 1))


# -- transforms -------------------------------------------------------------------------------
PP32 = Preprocessing(input_size=32, resize_size=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
NORM32 = NormStats("pretrained", PP32.mean, PP32.std)


@pytest.mark.parametrize("augment", AUGMENT_PRESETS)
def test_train_presets_shape_and_dtype(augment):
    t = build_transform(PP32, norm=NORM32, train=True, augment=augment)
    x = t(Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    pickle.dumps(t)  # DataLoader workers may need to pickle it


def test_eval_transform_resizes_crops_and_normalises():
    t = build_transform(PP32, norm=NORM32)
    img = Image.new("RGB", (80, 60), (255, 128, 0))
    x = t(img)
    assert x.shape == (3, 32, 32)
    expected = torch.tensor([(1.0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25, (0.0 - 0.5) / 0.25])
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)
    assert torch.equal(t(img), x)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_eval_transform_matches_the_pillow_resize_within_rounding(interpolation):
    """EvalTransform resizes the uint8 tensor; the former transform resized the PIL image (the recipe's kernel)."""
    from torchvision.transforms import v2

    from transferlab.data.transforms import EvalTransform
    from transferlab.data.geometry import eval_geometry

    pp = Preprocessing(input_size=56, resize_size=64, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation=interpolation)
    norm = NormStats("pretrained", pp.mean, pp.std)
    pillow = v2.Compose([*eval_geometry(pp).transforms, v2.Normalize(list(pp.mean), list(pp.std))])
    fast = build_transform(pp, norm=norm)
    assert isinstance(fast, EvalTransform)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 150)[None, :, None] * np.linspace(0.2, 1, 110)[:, None, None]
    images = [rng.integers(0, 256, (110, 150, 3), dtype=np.uint8), np.repeat(ramp, 3, axis=2).astype(np.uint8),
              rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)]  # down 1.7x (noise, smooth), up 1.3x
    for arr in images:
        a, b = pillow(Image.fromarray(arr)), fast(Image.fromarray(arr))
        assert b.shape == (3, 56, 56) and b.dtype == torch.float32 and b.is_contiguous()
        levels = ((a - b).abs() * 0.25 * 255).round()  # back to 0..255 steps
        assert levels.max() <= 2 and float((levels > 0).float().mean()) < 0.05
        if interpolation == "nearest":
            assert torch.equal(a, b)
    with pytest.raises(TypeError, match="PIL.Image"):
        fast(torch.zeros(3, 8, 8))
    pickle.dumps(fast)  # DataLoader workers may need to pickle it


def test_eval_center_crop_keeps_the_middle():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 30:50] = 255  # a white band in the middle, black sides
    x = build_transform(PP32, norm=NormStats("pretrained", (0, 0, 0), (1, 1, 1)))(Image.fromarray(arr))
    assert x[:, :, 16].min() > 0.9 and x[:, :, 0].max() < 0.1  # resized to 40x80, cropped to the middle 32


def test_basic_augmentation_is_random_but_seedable():
    t = build_transform(PP32, norm=NORM32, train=True, augment="basic")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    torch.manual_seed(0)
    a = t(img)
    b = t(img)
    torch.manual_seed(0)
    assert not torch.equal(a, b) and torch.equal(a, t(img))


def test_transform_option_errors():
    with pytest.raises(ConfigError, match="augment: expected one of none, basic"):
        build_transform(PP32, norm=NORM32, train=True, augment="wild")
    with pytest.raises(ConfigError, match="training transforms only"):
        build_transform(PP32, norm=NORM32, augment="basic")
    with pytest.raises(ConfigError, match="NormStats"):
        build_transform(PP32, norm=(0.5, 0.5))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mixup", "cutmix", "mixup-cutmix"])
def test_batch_augmentation_soft_labels(name):
    mix = batch_augmentation(name, num_classes=5, alpha=1.0)
    torch.manual_seed(0)
    images = torch.rand(8, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    x, y = mix(images, labels)
    assert x.shape == images.shape and y.shape == (8, 5)
    torch.testing.assert_close(y.sum(dim=1), torch.ones(8))
    assert (y >= 0).all()


def test_mixup_label_weights_match_pixel_mixing():
    mix = batch_augmentation("mixup", num_classes=4, alpha=0.4)
    values = torch.tensor([0.0, 0.25, 0.5, 1.0])
    images = values.view(4, 1, 1, 1).expand(4, 3, 4, 4).clone()
    labels = torch.arange(4)
    torch.manual_seed(3)
    x, y = mix(images, labels)
    for k in range(4):
        expected = (y[k] * values).sum()  # soft label weights = mixing weights of the images
        torch.testing.assert_close(x[k].mean(), expected, atol=1e-5, rtol=0)


def test_batch_augmentation_none_and_errors():
    assert batch_augmentation(None, num_classes=3) is None
    assert batch_augmentation("none", num_classes=3) is None
    with pytest.raises(ConfigError, match="mixup, cutmix, mixup-cutmix"):
        batch_augmentation("mosaic", num_classes=3)
    with pytest.raises(ConfigError, match="num_classes"):
        batch_augmentation("mixup", num_classes=1)
    with pytest.raises(ConfigError, match="alpha"):
        batch_augmentation("cutmix", num_classes=3, alpha=0.0)
