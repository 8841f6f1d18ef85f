"""transferability: class halves, the BnB/AnB construction (copied + frozen vs re-initialised + trained),
the "+" variants, the whole experiment's outputs, and the small_cnn zoo entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_image_folder
from transferlab.cli import main
from transferlab.data import ImageSource
from transferlab.errors import ConfigError, DataError, WeightsNotFoundError
from transferlab.experiments.transferability import (
    FIGURE_PNG,
    RESULTS_JSON,
    VARIANTS,
    Half,
    TransferabilityOptions,
    check_construction,
    format_transferability_table,
    new_network,
    parse_class_split,
    prepare_halves,
    run_seed,
    run_transferability,
    train_network,
    transplant,
    variant_plan,
)
from transferlab.options import DataOptions
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.zoo import count_parameters, create_backbone, get_entry

TINY = TransferabilityOptions(seeds=1, train_per_class=6, val_per_class=2, test_per_class=3, epochs=2, batch_size=4)
HEAD = HeadConfig(kind="linear", dropout=0.0)
L = 5  # small_cnn stages


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def toy_source(*, classes: int = 4, per_class: int = 16, size: int = 28) -> ImageSource:
    """Grey images whose brightness pattern depends on the class (learnable in a few steps)."""
    rng = np.random.default_rng(0)
    imgs, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            img = rng.integers(0, 60, size=(size, size), dtype=np.uint8)
            img[:, c * (size // classes):(c + 1) * (size // classes)] += 150
            imgs.append(img)
            labels.append(c)
    return ImageSource.from_arrays(np.stack(imgs), labels, classes=[f"c{k}" for k in range(classes)], name="toy")


@pytest.fixture(scope="module")
def halves() -> tuple[Half, Half]:
    a, b, _ = prepare_halves(toy_source(), [0, 1], [2, 3], options=TINY, data_options=DataOptions(quiet=True))
    return a, b


@pytest.fixture(scope="module")
def base_b(halves: tuple[Half, Half]) -> TransferModel:
    torch.manual_seed(0)
    model = new_network("small_cnn", num_classes=2, head=HEAD)
    train_network(model, variant_plan("baseB", n=0, stage_names=model.stage_names, options=TINY), half=halves[1],
                  seed=0, options=TINY)
    return model


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _weights_differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Every floating-point weight tensor differs (BatchNorm's counter is left out)."""
    return all(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point() and "running" not in k)


# ----------------------------------------------------------------------------- the construction

@pytest.mark.parametrize("n", [1, 3, L])
@pytest.mark.parametrize("variant", ["BnB", "AnB"])
def test_frozen_variants_copy_and_freeze_exactly_the_first_n_stages(
        halves: tuple[Half, Half], base_b: TransferModel, variant: str, n: int) -> None:
    base = base_b  # AnB is built the same way from baseA; the construction does not look at the labels
    names = base.stage_names
    torch.manual_seed(run_seed(0, variant, n))
    model = transplant(base, n=n, arch="small_cnn", num_classes=2, head=HEAD)
    before = {s: _state(model.modules_of(s)) for s in names + ["head"]}
    for s in names[:n]:
        assert _equal(before[s], _state(base.modules_of(s)))  # copied: weights and BN statistics
    for s in names[n:]:
        assert _weights_differ(before[s], _state(base.modules_of(s)))  # re-initialised
    train_network(model, variant_plan(variant, n=n, stage_names=names, options=TINY), half=halves[1],
                  seed=1, options=TINY)
    for s in names[:n]:
        assert _equal(_state(model.modules_of(s)), _state(base.modules_of(s)))  # unchanged by training
        assert not any(p.requires_grad for p in model.modules_of(s).parameters())
    for s in names[n:] + ["head"]:
        assert all(p.requires_grad for p in model.modules_of(s).parameters())
        assert _weights_differ(_state(model.modules_of(s)), before[s])  # trained
    check = check_construction(model, base, n=n, frozen=True)
    assert check == {"copied_stages_unchanged": True, "trainable_stages": names[n:], "ok": True}


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("variant", ["BnB+", "AnB+"])
def test_plus_variants_train_every_stage(halves: tuple[Half, Half], base_b: TransferModel, variant: str, n: int) -> None:
    names = base_b.stage_names
    torch.manual_seed(run_seed(0, variant, n))
    model = transplant(base_b, n=n, arch="small_cnn", num_classes=2, head=HEAD)
    before = {s: _state(model.modules_of(s)) for s in names + ["head"]}
    assert all(_equal(before[s], _state(base_b.modules_of(s))) for s in names[:n])  # starts from the copy
    plan = variant_plan(variant, n=n, stage_names=names, options=TINY)
    assert plan.phases[0].trainable == tuple(names) + ("head",)
    train_network(model, plan, half=halves[1], seed=1, options=TINY)
    for s in names + ["head"]:
        assert all(p.requires_grad for p in model.modules_of(s).parameters())
        assert _weights_differ(_state(model.modules_of(s)), before[s])  # copied stages fine-tuned too
    check = check_construction(model, base_b, n=n, frozen=False)
    assert check["ok"] and not check["copied_stages_unchanged"] and check["trainable_stages"] == names


def test_check_construction_catches_a_frozen_stage_that_moved(base_b: TransferModel) -> None:
    torch.manual_seed(3)
    model = transplant(base_b, n=2, arch="small_cnn", num_classes=2, head=HEAD)
    for p in model.parameters():
        p.requires_grad_(False)
    for s in model.stage_names[2:] + ["head"]:
        for p in model.modules_of(s).parameters():
            p.requires_grad_(True)
    assert check_construction(model, base_b, n=2, frozen=True)["ok"]
    with torch.no_grad():
        next(model.modules_of("conv2").parameters()).add_(1e-3)
    assert not check_construction(model, base_b, n=2, frozen=True)["ok"]


def test_transplant_and_plan_reject_bad_input(base_b: TransferModel) -> None:
    with pytest.raises(ConfigError, match="n must be between 1 and 5"):
        transplant(base_b, n=6, arch="small_cnn", num_classes=2, head=HEAD)
    with pytest.raises(ConfigError, match="variant must be one of"):
        variant_plan("AnA", n=1, stage_names=base_b.stage_names, options=TINY)
    assert variant_plan("AnB", n=L, stage_names=base_b.stage_names, options=TINY).phases[0].trainable == ("head",)


def test_run_seeds_are_distinct() -> None:
    seeds = {run_seed(s, v, n) for s in range(3) for v in ("baseA", "baseB", *VARIANTS) for n in range(L + 1)}
    assert len(seeds) == 3 * 6 * (L + 1)


# ----------------------------------------------------------------------------- class halves and data

def test_parse_class_split() -> None:
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
    assert parse_class_split("0,2/1,3", classes) == ([0, 2], [1, 3])
    assert parse_class_split("T-shirt/top,Pullover/Trouser,Dress,Coat", classes) == ([0, 2], [1, 3, 4])
    a, b = parse_class_split("random", classes, seed=1)
    assert (a, b) == parse_class_split("random", classes, seed=1)
    assert len(a) == 2 and len(b) == 3 and sorted(a + b) == list(range(5))
    assert {tuple(parse_class_split("random", classes, seed=s)[0]) for s in range(6)} != {tuple(a)}
    for text, match in (("0,1/1,2", "disjoint"), ("0/1,2", ">= 2 distinct"), ("0,1/2,9", "unknown class"),
                        ("0,1,2", "unknown class or is empty"), ("0,0/1,2", ">= 2 distinct")):
        with pytest.raises(ConfigError, match=match):
            parse_class_split(text, classes)
    with pytest.raises(DataError, match=">= 4 classes"):
        parse_class_split("random", ["a", "b", "c"])


def test_halves_are_disjoint_subsets_with_remapped_labels(halves: tuple[Half, Half]) -> None:
    a, b = halves
    assert (a.classes, b.classes) == ([0, 1], [2, 3])
    for h in halves:
        for part, per_class in (("train", 6), ("val", 2), ("test", 3)):
            y = h.inputs[part].labels
            assert y.tolist() == sorted(y.tolist()) and torch.bincount(y).tolist() == [per_class, per_class]
            x = h.inputs[part].eval_dataset.tensors[0]
            assert x.shape == (2 * per_class, 3, 28, 28)
    with pytest.raises(DataError, match="--train-per-class 50 exceeds the"):
        prepare_halves(toy_source(), [0, 1], [2, 3], options=TransferabilityOptions(train_per_class=50),
                       data_options=DataOptions(quiet=True))


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--seeds must be an integer >= 1, got 0"):
        TransferabilityOptions(seeds=0)
    with pytest.raises(ConfigError, match="--input-size must be >= 8"):
        TransferabilityOptions(input_size=4)


# ----------------------------------------------------------------------------- the experiment

def test_whole_experiment_writes_every_network_table_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "tr"
    res = run_transferability("toy", out=out, options=TINY, data_options=DataOptions(quiet=True),
                              source=toy_source())
    on_disk = json.loads((out / RESULTS_JSON).read_text())
    assert on_disk["status"] == "done" and on_disk["summary"] == res["summary"]
    runs = on_disk["runs"]
    assert len(runs) == 2 + 4 * L
    assert [(r["variant"], r["n"]) for r in runs[:2]] == [("baseA", 0), ("baseB", 0)]
    assert [r["tested_on"] for r in runs] == ["A"] + ["B"] * (1 + 4 * L)
    assert {(r["variant"], r["n"]) for r in runs[2:]} == {(v, n) for v in VARIANTS for n in range(1, L + 1)}
    assert all(r["check"]["ok"] for r in runs[2:])
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in runs)
    assert set(on_disk["summary"]) == {"baseA", "baseB", *VARIANTS}
    assert on_disk["summary"]["AnB"]["3"]["count"] == 1
    assert sorted(on_disk["classes"]["A"] + on_disk["classes"]["B"]) == ["c0", "c1", "c2", "c3"]
    assert (out / FIGURE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_transferability_table(on_disk)
    assert table.count("\n") == 2 + L and "| 5 | conv1,conv2,conv3,conv4,conv5 |" in table


def test_cli_transferability_on_an_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", classes=4, per_class=12, size=32)
    out = tmp_path / "tr"
    args = ["transferability", str(data), "--out", str(out), "--split-classes", "class_0,class_2/class_1,class_3",
            "--seeds", "1", "--train-per-class", "4", "--val-per-class", "2", "--test-per-class", "2",
            "--epochs", "1", "--batch-size", "4", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "A = class_0, class_2; B = class_1, class_3" in printed and "| 0 (baseB) |" in printed
    assert json.loads((out / RESULTS_JSON).read_text())["data"]["sizes"]["B"] == {"train": 8, "val": 4, "test": 4}
    assert main(args[:4] + ["--split-classes", "class_0/class_1"]) == 2
    assert "error: --split-classes: expected >= 2 distinct classes per half" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the zoo entry

def test_small_cnn_zoo_entry(capsys: pytest.CaptureFixture[str]) -> None:
    e = get_entry("small_cnn")
    assert count_parameters(e.build(False)) == e.params
    bb = create_backbone("small_cnn", pretrained=False)
    assert bb.stage_names == ["conv1", "conv2", "conv3", "conv4", "conv5"] and bb.weights.source == "random"
    shapes = list(bb.stage_shapes().values())
    assert shapes[0] == (16, 28, 28) and shapes[-1] == (128, 7, 7) and bb.feature_dim == 128
    assert bb(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights for 'small_cnn'"):
        create_backbone("small_cnn")
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("small_cnn"))
    assert row.split()[1:6] == ["2014", "0.1M", "-", "-", "28"] and row.endswith("no")
