from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from transferlab.engine import configure_trainable, make_scheduler, param_groups, stlr_factor
from transferlab.errors import ConfigError
from transferlab.strategies import STRATEGIES, HeadConfig, Phase, PlanOptions, TransferModel, build_plan, load_plan
from transferlab.zoo import create_backbone


@pytest.fixture(scope="module")
def model() -> TransferModel:
    torch.manual_seed(0)
    return TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=5,
                         head=HeadConfig(kind="dense", hidden=(16,)))


def _param_ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in ("linear-probe", "hog-svm")])
def test_each_phase_trains_exactly_its_groups(model: TransferModel, strategy: str):
    plan = build_plan(strategy, stage_names=model.stage_names, options=PlanOptions(unfreeze=3))
    assert plan.phases
    for phase in plan.phases:
        configure_trainable(model, phase)
        expected: set[int] = set()
        for g in phase.trainable:
            expected |= _param_ids(model.modules_of(g))
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable == expected, (strategy, phase.name)
        frozen = [g for g in model.stage_names if g not in phase.trainable]
        for g in frozen:
            assert not model.modules_of(g).training  # frozen stages run in eval mode


def test_strategy_shapes(model: TransferModel):
    names = model.stage_names
    o = PlanOptions(unfreeze=2)
    assert [p.trainable for p in build_plan("feature-extraction", stage_names=names, options=o).phases] == [("head",)]
    ft = build_plan("fine-tune", stage_names=names, options=o).phases
    assert [p.trainable for p in ft] == [("head",), (names[-2], names[-1], "head")]
    ct = build_plan("chain-thaw", stage_names=names, options=o).phases
    assert [p.trainable for p in ct] == [("head",), (names[-2],), (names[-1],), (names[-2], names[-1], "head")]
    gu = build_plan("gradual-unfreeze", stage_names=names, options=o).phases
    assert [p.trainable for p in gu] == [("head",), (names[-1], "head"), (names[-2], names[-1], "head")]
    full = build_plan("full", stage_names=names, options=o).phases
    assert set(full[1].trainable) == set(names) | {"head"}
    scratch = build_plan("scratch", stage_names=names, options=o)
    assert not scratch.pretrained and scratch.phases[0].bn == "train"


def test_discriminative_learning_rates_follow_lr_decay(model: TransferModel):
    names = model.stage_names
    phase = build_plan("fine-tune", stage_names=names, options=PlanOptions(unfreeze=3, finetune_lr=1e-3,
                                                                          lr_decay=2.6)).phases[1]
    groups = param_groups(configure_trainable(model, phase), phase)
    assert [g["name"] for g in groups] == ["head", names[-1], names[-2], names[-3]]
    for rank, g in enumerate(groups):
        assert g["lr"] == pytest.approx(1e-3 / 2.6**rank)


@pytest.mark.parametrize("t", [0, 1, 5, 10, 11, 50, 99])
def test_stlr_matches_the_formula(t: int):
    T, cut_frac, ratio, lr_max = 100, 0.1, 32, 0.01
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    expected = lr_max * (1 + p * (ratio - 1)) / ratio
    assert lr_max * stlr_factor(t, total=T, cut_frac=cut_frac, ratio=ratio) == pytest.approx(expected)
    # and the scheduler really applies it, step by step
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=lr_max)
    sched = make_scheduler(opt, Phase(name="p", trainable=("head",), epochs=1, lr=lr_max, schedule="stlr"),
                           total_steps=T)
    for _ in range(t):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)


def test_bad_plans_are_one_line_errors(model: TransferModel):
    with pytest.raises(ConfigError, match=r"--unfreeze must be between 1 and 9 .* got 12"):
        build_plan("fine-tune", stage_names=model.stage_names, options=PlanOptions(unfreeze=12))
    with pytest.raises(ConfigError, match="unknown strategy 'fine-tuning'; expected one of"):
        build_plan("fine-tuning", stage_names=model.stage_names, options=PlanOptions())
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        Phase(name="x", trainable=("head",), epochs=0, lr=1e-3)


def test_user_plan_from_yaml(tmp_path: Path, model: TransferModel):
    f = tmp_path / "plan.yaml"
    f.write_text("strategy: mine\nphases:\n  - {name: warm, trainable: head, epochs: 2, lr: 0.01}\n"
                 "  - {name: deep, trainable: [stage7, conv_head, head], epochs: 1, lr: 0.001, lr_decay: 3}\n")
    plan = load_plan(f)
    assert plan.strategy == "mine" and [p.trainable for p in plan.phases] == [("head",), ("stage7", "conv_head", "head")]
    plan.validate(model.stage_names)
    f.write_text("phases:\n  - {name: x, trainable: head, epochs: 1, lr: 0.01, speed: 3}\n")
    with pytest.raises(ConfigError, match="unknown phase fields"):
        load_plan(f)


@pytest.mark.parametrize("total", [4, 5, 7, 8, 100])
def test_onecycle_works_for_short_phases(total: int):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    phase = Phase(name="p", trainable=("head",), epochs=1, lr=0.1, schedule="onecycle")
    sched = make_scheduler(opt, phase, total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[0] < 0.1


@pytest.mark.parametrize("total", [1, 2, 3])
def test_onecycle_tiny_phases_run_the_start_of_the_cycle(total: int):
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = make_scheduler(opt, Phase(name="p", trainable=("head",), epochs=1, lr=0.1, schedule="onecycle"),
                           total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs) and lrs[0] < 0.1  # starts warm, never above max


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s not in ("linear-probe", "hog-svm")])
def test_only_the_warmup_head_skips_augmentation_under_auto(model: TransferModel, strategy: str):
    names = model.stage_names
    auto = build_plan(strategy, stage_names=names, options=PlanOptions())
    every = build_plan(strategy, stage_names=names, options=PlanOptions(augment_phases="all"))
    assert all(p.augment for p in every.phases)
    warmup = len(auto.phases) > 1 and auto.phases[0].trainable == ("head",)
    # the head-only warm-up before stage-training phases trains on clean (cacheable) inputs ...
    assert [p.augment for p in auto.phases] == [not (warmup and i == 0) for i in range(len(auto.phases))]
    # ... while a plan of head phases only (feature-extraction) and scratch keep the augmentation
    assert warmup == (strategy not in ("feature-extraction", "scratch"))
    with pytest.raises(ConfigError, match="--augment-phases must be one of auto, all, got 'some'"):
        build_plan(strategy, stage_names=names, options=PlanOptions(augment_phases="some"))


def test_user_plan_phases_can_opt_out_of_augmentation(tmp_path: Path):
    f = tmp_path / "plan.json"
    f.write_text('{"phases": [{"name": "warm", "trainable": "head", "epochs": 1, "lr": 0.01, "augment": false},'
                 ' {"name": "deep", "trainable": ["stage7", "head"], "epochs": 1, "lr": 0.001}]}')
    assert [p.augment for p in load_plan(f).phases] == [False, True]
