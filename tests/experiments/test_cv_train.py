"""``train --cv K`` of backprop strategies: folds from one prefix pass, refit, fold ensembles, auto's fine-tune candidates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from transferlab.cli import main
from transferlab.data import make_split, open_dataset
from transferlab.engine import ActivationStore
from transferlab.experiments import auto as auto_mod
from transferlab.experiments.auto import CostModel, Search, run_auto
from transferlab.experiments.auto_finetune import FinetuneCost
from transferlab.experiments.inference import evaluate_run, predict_images
from transferlab.experiments.pipeline import RunSetup
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies import HeadConfig, TransferModel
from transferlab.strategies.ensemble import MultiModel, fold_ensemble
from transferlab.zoo import create_backbone

FAST = dict(backbone="mobilenet_v2", epochs=2, finetune_epochs=1, runtime="torch")


@pytest.fixture
def prefix_passes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(split, boundary, images) of every pass through the frozen prefix from the images."""
    seen: list[tuple[str, int, int]] = []
    real = ActivationStore._from_images

    def counting(self: ActivationStore, split: Any, boundary: int, *args: Any, **kwargs: Any) -> Any:
        seen.append((split.name, boundary, len(split)))
        return real(self, split, boundary, *args, **kwargs)

    monkeypatch.setattr(ActivationStore, "_from_images", counting)
    return seen


@pytest.mark.usefixtures("offline_cache")
@pytest.mark.parametrize("strategy, boundary", [("feature-extraction", 9), ("fine-tune", 6)])
def test_cv_of_a_backprop_strategy_end_to_end(tiny_folder: Path, tmp_path: Path, strategy: str, boundary: int,
                                              prefix_passes: list[tuple[str, int, int]],
                                              monkeypatch: pytest.MonkeyPatch):
    refits: list[int] = []
    real_refit = RunSetup.refit
    monkeypatch.setattr(RunSetup, "refit", lambda self, engine, *, train, val, epochs:
                        refits.append(len(train)) or real_refit(self, engine, train=train, val=val, epochs=epochs))
    run = run_training(str(tiny_folder), data_options=DataOptions(quiet=True),
                       train_options=TrainOptions(**FAST, strategy=strategy, cv=3), out=tmp_path / "r")
    cv = run.metrics["cv"]
    assert cv["k"] == 3 and sum(cv["fold_sizes"]) == 18 and len(cv["fold_accuracy"]) == 3
    assert cv["cv_mean"] == pytest.approx(np.mean(cv["fold_accuracy"]), abs=1e-6)
    assert {"cv_std", "cv_loss_mean", "cv_loss_std", "epochs_per_fold"} <= set(cv)
    assert run.metrics["val"]["n"] == 18 and "out-of-fold" in run.metrics["val"]["what"]
    assert run.metrics["test"]["n"] == 6
    # one pass through the frozen prefix for the pool, one for the test split: not one per fold
    assert prefix_passes == [("pool", boundary, 18), ("test", boundary, 6)]
    assert refits == [18]  # the final model trained on every non-test image
    assert run.metrics["final"]["items"] == 18
    assert run.metrics["final"]["epochs_per_phase"] == cv["refit_epochs_per_phase"]
    assert json.loads((tmp_path / "r" / "cv.json").read_text())["cv_mean"] == cv["cv_mean"]
    assert {h["fold"] for h in run.history} == {1, 2, 3}
    again = evaluate_run(tmp_path / "r", str(tiny_folder), subset="test")
    assert again["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])


@pytest.mark.usefixtures("offline_cache")
def test_cv_ensemble_of_fine_tuned_folds_round_trips(tiny_folder: Path, tmp_path: Path):
    run = run_training(str(tiny_folder), data_options=DataOptions(quiet=True),
                       train_options=TrainOptions(**FAST, strategy="fine-tune", cv=2, ensemble=True, head="dense",
                                                  hidden="16"),
                       out=tmp_path / "ens")
    m = run.model
    assert isinstance(m, MultiModel) and len(m.members) == 2 and m.shared_upto == 6
    assert "refit_epochs_per_phase" not in run.metrics["cv"]
    again = evaluate_run(tmp_path / "ens", str(tiny_folder), subset="test")
    assert again["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert again["loss"] == pytest.approx(run.metrics["test"]["loss"], abs=1e-4)  # the same averaged probabilities
    top = predict_images([next(tiny_folder.rglob("*.png"))], model_dir=tmp_path / "ens", top=1)
    assert 0.0 < top[0]["top"][0]["probability"] <= 1.0


def test_fold_ensemble_averages_the_fold_models_probabilities(tiny_folder: Path, tmp_path: Path):
    torch.manual_seed(0)
    base = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=3,
                         head=HeadConfig(kind="dense", hidden=(8,)), cut=4).eval()
    states = []
    for _ in range(2):  # the frozen prefix (stages 0-1) is shared; stages above and the head differ per fold
        fold = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=3,
                             head=HeadConfig(kind="dense", hidden=(8,)), cut=4)
        state = fold.state_dict()
        state.update({k: v for k, v in base.state_dict().items() if k.startswith(("stages.stem", "stages.stage1"))})
        states.append(state)
    ens = fold_ensemble(base, states, shared_upto=2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = []
        for state in states:
            base.load_state_dict(state)
            want.append(base(x).softmax(1))
        torch.testing.assert_close(ens(x).exp(), torch.stack(want).mean(0), rtol=1e-5, atol=1e-6)
    pytest.importorskip("onnxruntime")
    from transferlab.data import NormStats
    from transferlab.experiments.artifacts import load_model, save_model
    from transferlab.export import export_onnx

    pp = base.preprocessing
    save_model(tmp_path, ens, classes=["x", "y", "z"], norm=NormStats("pretrained", pp.mean, pp.std))
    lm = load_model(tmp_path)
    assert lm.model.shared_upto == 2 and lm.model.head_config == base.head_config
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), ens(x))
    r = export_onnx(tmp_path, check_images=[str(p) for p in sorted(tiny_folder.rglob("*.png"))[:2]])
    assert r.max_abs_diff < r.tolerance


class FakeCost(CostModel):
    """Fine-tune estimates: 1 s, but 1e9 s with a fixed view (pool rows doubled); the second backbone's plain
    candidate also makes every clock tick last 1000 s from then on (its measured pace is slow)."""

    def __init__(self, tick: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tick, self.plain = tick, 0

    def finetune_estimate(self, backbone: str, *, pool_rows: int, **kwargs: Any) -> FinetuneCost:
        if pool_rows == 18:
            self.plain += 1
            if self.plain == 2:
                self.tick[0] = 1000.0
        est = 1e9 if pool_rows > 18 else 1.0
        return FinetuneCost(prefix_s=est / 2, epoch_s=[0.0, 0.0], epochs=[2, 1], k=2, fold_overhead_s=0.0,
                            test_s=est / 2)


@pytest.mark.usefixtures("offline_cache")
def test_auto_runs_stops_and_skips_fine_tune_candidates_within_its_budget(tiny_folder: Path, tmp_path: Path):
    src = open_dataset(str(tiny_folder), quiet=True)
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    now, tick = [0.0], [0.0]

    def clock() -> float:
        now[0] += tick[0]
        return now[0]

    cost = FakeCost(tick, relative={"mobilenet_v2": 1.0, "efficientnet_lite0": 1.0},
                    measured={"mobilenet_v2": 1e-4, "efficientnet_lite0": 1e-4})
    t = TrainOptions(time_budget=1e4, cv=2, epochs=2, finetune_epochs=1, runtime="torch")
    search = Search(backbones=("mobilenet_v2", "efficientnet_lite0"), flip=False)
    model, metrics, record = run_auto(str(tiny_folder), source=src, split=split, data_options=DataOptions(quiet=True),
                                      train_options=t, run_dir=tmp_path, config={}, cost=cost, clock=clock,
                                      search=search)
    tuned = [r for r in record["candidates"] if r["strategy"] == "fine-tune"]
    assert [r["status"] for r in tuned] == ["scored", "stopped", "skipped", "skipped"]
    ran, stopped, skipped = tuned[0], tuned[1], tuned[2]
    assert ran["cv_mean"] is not None and len(ran["fold_accuracy"]) == 2 and ran["prefix_s"] >= 0
    assert "measured pace" in stopped["reason"] and stopped["cv_mean"] is None
    assert skipped["estimated_s"] == 1e9 and "left" in skipped["reason"]
    assert skipped["name"].endswith(":unfreeze=1:views=basic1")  # unfreeze 3 and 2 did not fit either
    assert set(skipped["deeper_estimated_s"]) == {"unfreeze=3", "unfreeze=2"}
    on_disk = json.loads((tmp_path / "auto.json").read_text())
    assert [r["status"] for r in on_disk["candidates"] if r["strategy"] == "fine-tune"] == [r["status"] for r in tuned]


@pytest.mark.usefixtures("offline_cache")
def test_auto_saves_a_chosen_fine_tune_candidate(tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = auto_mod.choose

    def prefer_fine_tune(cands: list[Any]) -> tuple[Any, str]:
        tuned = [c for c in cands if c.strategy == "fine-tune" and c.score is not None]
        return (tuned[0], "test: the fine-tune candidate") if tuned else real(cands)

    monkeypatch.setattr(auto_mod, "choose", prefer_fine_tune)
    src = open_dataset(str(tiny_folder), quiet=True)
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    t = TrainOptions(time_budget=1e4, cv=2, epochs=2, finetune_epochs=1, runtime="torch")
    cost = FakeCost([0.0], relative={"mobilenet_v2": 1.0})  # the views variant: skipped
    run = auto_mod.auto_run(str(tiny_folder), source=src, split=split, data_options=DataOptions(quiet=True),
                            train_options=t, run_dir=tmp_path, t_start=0.0, cost=cost,
                            search=Search(backbones=("mobilenet_v2",), flip=False))
    assert run.metrics["chosen"] == "fine-tune:mobilenet_v2:unfreeze=3" and isinstance(run.model, TransferModel)
    assert "refit on all 18" in json.loads((tmp_path / "auto.json").read_text())["chosen"]["final"]
    again = evaluate_run(tmp_path, str(tiny_folder), subset="test")
    assert again["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])


@pytest.mark.parametrize("extra, expected", [
    (["--strategy", "fine-tune", "--cv", "1"], "--cv must be an integer >= 2"),
    (["--strategy", "fine-tune", "--cv", "7"], "--cv 7 needs at least 7 non-test images per class"),
    (["--strategy", "fine-tune", "--ensemble"], "--ensemble averages the K fold models of cross-validation"),
    (["--strategy", "fine-tune", "--cv", "3", "--refit"], "--refit with --cv 3"),
])
def test_bad_cv_input_of_backprop_strategies_is_one_line(tiny_folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], extra: list[str],
                                                         expected: str):
    assert main(["train", str(tiny_folder), "--out", str(tmp_path / "x"), "--quiet", "--backbone", "mobilenet_v2",
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_budget_pace_projects_from_measured_epochs_and_folds():
    from transferlab.experiments.auto_finetune import BudgetPace, Stopped

    now = [0.0]
    prior = FinetuneCost(prefix_s=10.0, epoch_s=[0.1, 1.0], epochs=[2, 4], k=3, fold_overhead_s=1.0, test_s=2.0)
    pace = BudgetPace(prior=prior, clock=lambda: now[0], allowed_s=100.0, start=0.0)
    now[0] = 10.0  # the prefix pass took 10 s
    pace.begin_folds()  # 10 s done + a fold (2 x 0.1 + 4 x 1 + 1 = 5.2) x (3 folds + the refit's 1.5) + 2 s test
    assert pace.projected() == pytest.approx(10.0 + 5.2 * 4.5 + 2.0)
    pace.epoch(0, {"phase_index": 0, "seconds": 0.1})
    pace.epoch(0, {"phase_index": 0, "seconds": 0.1})
    now[0] = 20.0
    with pytest.raises(Stopped, match="measured pace"):  # fine-tune epochs 9x slower than estimated
        pace.epoch(0, {"phase_index": 1, "seconds": 9.0})
    # the running fold: 3 epochs x 9 + 1 left; 2 more folds and the refit at 2 x 0.1 + 4 x 9 + 1 = 37.2 each
    assert pace.projected() == pytest.approx(20.0 + 28.0 + 37.2 * 3.5 + 2.0)


def test_prior_cost_prices_mirrored_images_as_prefix_and_prediction_only():
    from types import SimpleNamespace

    from transferlab.experiments.auto_finetune import prior_cost

    plan = SimpleNamespace(phases=[SimpleNamespace(trainable=["head"], epochs=30),
                                   SimpleNamespace(trainable=["stage7", "head"], epochs=8)])
    kw = dict(frozen=0.75, plan=plan, pool_rows=300, n_test=100, k=5, runtime="torch")
    plain, flip = prior_cost(0.01, **kw), prior_cost(0.01, **kw, mirrored=300)
    # mirrored images never train; a fold's mirrored held-out rows are predicted after every epoch, like its val
    assert flip.epoch_s[0] == plain.epoch_s[0]  # the head phase: from cached features, counted per pool item
    assert flip.epoch_s[1] == pytest.approx(plain.epoch_s[1] + 0.0025 * 300 / 5)
    assert flip.prefix_s == pytest.approx(2 * plain.prefix_s)  # the mirrored pool passes the prefix once
    assert flip.test_s == pytest.approx(2 * plain.test_s)
    assert flip.fold_overhead_s == pytest.approx(plain.fold_overhead_s + 0.0025 * 300 / 5)  # held-out rows, mirrored


class CheapCost(CostModel):
    """Every fine-tune candidate fits the budget."""

    def finetune_estimate(self, backbone: str, **kwargs: Any) -> FinetuneCost:
        return FinetuneCost(prefix_s=0.5, epoch_s=[0.0, 0.0], epochs=[2, 1], k=2, fold_overhead_s=0.0, test_s=0.5)


def tiny_auto(tiny_folder: Path, run_dir: Path, *, flip: bool, ensemble: bool = False) -> Any:
    """auto on the tiny folder: mobilenet_v2 only, 2 folds, every fine-tune candidate affordable."""
    src = open_dataset(str(tiny_folder), quiet=True)
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    t = TrainOptions(time_budget=1e4, cv=2, epochs=2, finetune_epochs=1, runtime="torch", ensemble=ensemble)
    return auto_mod.auto_run(str(tiny_folder), source=src, split=split, data_options=DataOptions(quiet=True),
                             train_options=t, run_dir=run_dir, t_start=0.0,
                             cost=CheapCost(relative={"mobilenet_v2": 1.0}),
                             search=Search(backbones=("mobilenet_v2",), flip=flip))


def assert_saved_run_reproduces(run: Any, run_dir: Path, tiny_folder: Path) -> None:
    """The saved model gives the reported test numbers, and exports to one ONNX graph within tolerance."""
    again = evaluate_run(run_dir, str(tiny_folder), subset="test")
    assert again["accuracy"] == pytest.approx(run.metrics["test"]["accuracy"])
    assert again["loss"] == pytest.approx(run.metrics["test"]["loss"], abs=1e-4)
    pytest.importorskip("onnxruntime")
    from transferlab.export import export_onnx

    r = export_onnx(run_dir, check_images=[str(p) for p in sorted(tiny_folder.rglob("*.png"))[:2]])
    assert r.max_abs_diff < r.tolerance


@pytest.mark.usefixtures("offline_cache")
@pytest.mark.parametrize("ensemble", [False, True])
def test_auto_scores_flip_tta_of_a_fine_tune_candidate_from_the_same_folds(
        tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix_passes: list[tuple[str, int, int]],
        ensemble: bool):
    seen: dict[str, Any] = {}
    real = auto_mod.choose

    def prefer_the_flip_twin(cands: list[Any]) -> tuple[Any, str]:
        tuned = [c for c in cands if c.strategy == "fine-tune" and c.score is not None]
        seen.update({c.name: c for c in tuned})
        twins = [c for c in tuned if c.flip]
        return (twins[0], "test: the flip twin") if twins else real(cands)

    monkeypatch.setattr(auto_mod, "choose", prefer_the_flip_twin)
    run = tiny_auto(tiny_folder, tmp_path, flip=True, ensemble=ensemble)
    plain, twin = seen["fine-tune:mobilenet_v2:unfreeze=3"], seen["fine-tune:mobilenet_v2:unfreeze=3:flip"]
    fit = plain.fitted.fit
    assert twin.fitted is plain.fitted and fit.oof_flip is not None  # the same fold runs, no training of its own
    want = 0.5 * (fit.oof.softmax(1) + fit.oof_flip.softmax(1)).double().numpy()
    np.testing.assert_allclose(twin.score.oof, want, rtol=1e-6)
    np.testing.assert_allclose(plain.score.oof, fit.oof.softmax(1).double().numpy(), rtol=1e-6)
    assert not np.allclose(fit.oof, fit.oof_flip)  # the mirrored images are other inputs
    # the mirrored pool and test split each pass the frozen prefix once, like the plain ones
    plains = [c for c in seen.values() if not c.flip]  # plain images, then one fixed augmented view
    assert len(plains) == 2 and len(seen) == 4
    assert prefix_passes.count(("pool-hflip", 6, 18)) <= len(plains)  # at most once per candidate (disk cache)
    assert ("pool-hflip", 6, 18) in prefix_passes and prefix_passes.count(("test-hflip", 6, 6)) == 1
    m = run.model
    assert isinstance(m, MultiModel) and m.flip and len(m.members) == (2 if ensemble else 1) and m.shared_upto == 6
    row = json.loads((tmp_path / "auto.json").read_text())["chosen"]
    assert row["options"]["tta"] == "flip" and row["same_folds_as"] == plain.name and "mirror" in row["final"]
    assert_saved_run_reproduces(run, tmp_path, tiny_folder)  # evaluate and ONNX: the prefix, mirror and heads


@pytest.mark.usefixtures("offline_cache")
@pytest.mark.parametrize("flip", [False, True])
def test_auto_averages_the_best_fine_tune_with_the_best_feature_candidate(
        tiny_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flip: bool):
    seen: list[Any] = []
    real = auto_mod.choose

    def prefer_cross_family(cands: list[Any]) -> tuple[Any, str]:
        mixed = [c for c in cands if c.strategy == "fine-tune+features" and c.flip == flip]
        seen.extend(c for c in cands if c.strategy == "fine-tune+features")
        return (mixed[0], "test: the cross-family ensemble") if mixed else real(cands)

    monkeypatch.setattr(auto_mod, "choose", prefer_cross_family)
    run = tiny_auto(tiny_folder, tmp_path, flip=True)
    assert sorted(c.flip for c in seen) == [False, True]  # one per view policy
    c = next(c for c in seen if c.flip == flip)
    net, lin = c.parts
    assert net.strategy == "fine-tune" and lin.strategy.startswith("linear-probe") and net.flip == lin.flip == flip
    np.testing.assert_allclose(c.score.oof, 0.5 * (net.score.oof + lin.score.oof))  # scored from held-out probs
    m = run.model
    assert isinstance(m, MultiModel) and m.flip == flip and m.weights[0] == pytest.approx(0.5)
    assert sum(m.weights) == pytest.approx(1.0) and m.head_configs[0] is not None  # the fine-tuned net's own head
    row = json.loads((tmp_path / "auto.json").read_text())["chosen"]
    assert row["strategy"] == "fine-tune+features" and "half and half" in row["final"] and "C" not in row
    assert_saved_run_reproduces(run, tmp_path, tiny_folder)  # evaluate and ONNX: the prefix, mirror and heads


@pytest.mark.usefixtures("offline_cache")
def test_auto_offers_no_cross_family_ensemble_with_fold_ensembles(tiny_folder: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture):
    src = open_dataset(str(tiny_folder), quiet=True)
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    t = TrainOptions(time_budget=1e4, cv=2, epochs=2, finetune_epochs=1, runtime="torch", ensemble=True)
    with caplog.at_level("INFO", logger="transferlab"):
        _, _, record = run_auto(str(tiny_folder), source=src, split=split, data_options=DataOptions(quiet=True),
                                train_options=t, run_dir=None, config={},
                                cost=CheapCost(relative={"mobilenet_v2": 1.0}), search=Search(backbones=("mobilenet_v2",), flip=False))
    assert not [r for r in record["candidates"] if r["strategy"] == "fine-tune+features"]
    assert "no fine-tune + features ensembles with --ensemble" in caplog.text


@pytest.mark.usefixtures("offline_cache")
def test_auto_ensemble_selection_becomes_one_weighted_model(tiny_folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """The chosen ensemble selection (weights fixed here: the tiny data decides nothing) is refit as one model whose
    heads carry its weights; predict, evaluate and ONNX give the reported numbers."""
    def fixed(probs: np.ndarray, labels: np.ndarray, **_: Any) -> np.ndarray:
        w = np.zeros(len(probs))
        w[-1], w[:2] = 0.5, 0.25  # the fine-tune (last) and the first two frozen-feature candidates
        return w

    monkeypatch.setattr(auto_mod, "greedy_ensemble", fixed)
    run = tiny_auto(tiny_folder, tmp_path, flip=False)
    row = json.loads((tmp_path / "auto.json").read_text())["chosen"]
    assert row["strategy"] == "ensemble-selection" and row["options"]["weights"] == [0.25, 0.25, 0.5]
    assert row["options"]["members"][-1].startswith("fine-tune:") and "weight 0.500" in row["final"]
    m = run.model
    assert isinstance(m, MultiModel) and m.weights[0] == pytest.approx(0.5) and m.head_configs[0] is not None
    assert m.weights[1:] == pytest.approx([0.25, 0.25]) and len(m.members) == 3  # the network + two cuts
    oof = np.load(tmp_path / "candidates_oof.npz")
    assert "ensemble-selection" in set(oof["strategies"]) and oof["oof"].shape[1] == len(oof["labels"]) == 18
    assert_saved_run_reproduces(run, tmp_path, tiny_folder)  # evaluate and ONNX: the prefix, mirror and heads
