"""Cross-validation (folds, refit, ensembles) and ``--strategy auto`` (budget, candidates, saved model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.cli import main
from transferlab.data import ImageSource, make_split
from transferlab.errors import ConfigError
from transferlab.experiments import auto as auto_mod
from transferlab.experiments.auto import Budget, CostModel, Search, run_auto
from transferlab.experiments.cv import check_cv, cv_linear_probe, fit_head, head_probs, stratified_folds
from transferlab.experiments.inference import evaluate_run, predict_images
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions
from transferlab.strategies.ensemble import MultiModel, featurizer
from transferlab.zoo import create_backbone


def test_folds_are_stratified_disjoint_covering_and_test_free():
    labels = np.repeat(np.arange(3), [20, 12, 9])
    src = ImageSource.from_arrays(np.zeros((len(labels), 4, 4), np.uint8), labels.tolist(), classes=["a", "b", "c"],
                                  name="t")
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    pool = np.concatenate([split.train, split.val])
    folds = stratified_folds(src.labels[pool], k=4, seed=0)
    held = np.concatenate([pool[f] for f in folds])
    assert sorted(held.tolist()) == sorted(pool.tolist())  # every pool item held out exactly once
    assert len(np.unique(held)) == len(held)
    assert not set(held.tolist()) & set(split.test.tolist())
    per_fold = np.array([np.bincount(src.labels[pool[f]], minlength=3) for f in folds])
    assert (per_fold.max(0) - per_fold.min(0) <= 1).all()  # stratified: class counts differ by at most one


def test_cv_bad_k_is_one_line():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    with pytest.raises(ConfigError, match=r"--cv must be an integer >= 2"):
        check_cv(1, y)
    with pytest.raises(ConfigError, match=r"--cv 4 needs at least 4 non-test images per class; class '0' has 3"):
        check_cv(4, y)


def test_refit_head_uses_every_pool_row_and_views():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 10)
    x = rng.normal(size=(20, 3))
    x[:, 0] += 4 * y
    head_all = fit_head([x], y, np.arange(20), C=1.0, num_classes=2)
    head_part = fit_head([x], y, np.arange(15), C=1.0, num_classes=2)
    assert not torch.allclose(head_all[0], head_part[0])  # the rows matter: all of them were used
    p = head_probs([x, x[:, ::-1].copy()], np.arange(20), head_all)
    q = (head_probs([x], np.arange(20), head_all) + head_probs([x[:, ::-1].copy()], np.arange(20), head_all)) / 2
    np.testing.assert_allclose(p, q)  # views: probabilities averaged


def test_cv_probe_keeps_fold_heads_for_the_ensemble():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 8)
    x = rng.normal(size=(24, 5))
    x[:, 1] += 3 * y
    folds = stratified_folds(y, k=4, seed=0)
    score, heads = cv_linear_probe([x], y, folds, num_classes=3, grid=(0.1, 1.0), keep_heads=True)
    assert len(heads) == 4 and score.C in (0.1, 1.0) and len(score.fold_accuracy) == 4
    assert score.mean == pytest.approx(np.mean(score.fold_accuracy))


def test_multimodel_averages_probabilities_of_its_heads():
    torch.manual_seed(0)
    f = featurizer(create_backbone("mobilenet_v2", pretrained=False), cut=2).eval()
    heads = [nn.Linear(f.in_features, 3) for _ in range(3)]
    m = MultiModel(members=[f], heads=heads, groups=[[0]] * 3, preprocessing=f.preprocessing).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = f(x)
        want = torch.stack([h(feats).softmax(1) for h in heads]).mean(0)
        torch.testing.assert_close(m(x).exp(), want, rtol=1e-5, atol=1e-6)
        flip = MultiModel(members=[f], heads=heads, groups=[[0]] * 3, preprocessing=f.preprocessing, flip=True)
        want_flip = (want + torch.stack([h(f(x.flip(3))).softmax(1) for h in heads]).mean(0)) / 2
        torch.testing.assert_close(flip(x).exp(), want_flip, rtol=1e-5, atol=1e-6)


def test_multimodel_weights_heads_and_rebuilds_per_head_configurations():
    from transferlab.strategies import HeadConfig, TransferModel
    from transferlab.strategies.ensemble import build_multi, with_network

    torch.manual_seed(0)
    f = featurizer(create_backbone("mobilenet_v2", pretrained=False), cut=2).eval()
    heads = [nn.Linear(f.in_features, 3) for _ in range(2)]
    m = MultiModel(members=[f], heads=heads, groups=[[0]] * 2, preprocessing=f.preprocessing, weights=[3.0, 1.0]).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        p0, p1 = (h(f(x)).softmax(1) for h in heads)
        torch.testing.assert_close(m(x).exp(), 0.75 * p0 + 0.25 * p1, rtol=1e-5, atol=1e-6)
    net = TransferModel(backbone=create_backbone("mobilenet_v2", pretrained=False), num_classes=3,
                        head=HeadConfig(kind="dense", hidden=(8,)), cut=3).eval()
    mixed = with_network(net, m, weight=0.6)
    assert mixed.weights == pytest.approx([0.6, 0.3, 0.1])
    with torch.no_grad():
        want = 0.6 * net(x).softmax(1) + 0.4 * m(x).exp()
        torch.testing.assert_close(mixed(x).exp(), want, rtol=1e-5, atol=1e-6)
        again = build_multi(mixed.spec())  # the saved architecture: a dense head beside two linear ones
        again.load_state_dict(mixed.state_dict())
        torch.testing.assert_close(again.eval()(x), mixed(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="one entry of weights per head \\(2\\), got 1"):
        MultiModel(members=[f], heads=heads, groups=[[0]] * 2, preprocessing=f.preprocessing, weights=[1.0])
    with pytest.raises(ConfigError, match="expected linear heads on frozen features"):
        with_network(net, mixed)


def test_budget_and_cost_model():
    now = [0.0]
    b = Budget(100.0, clock=lambda: now[0])
    now[0] = 70.0
    assert b.fits(20.0) and not b.fits(20.0, reserve=15.0)
    with pytest.raises(ConfigError, match="--time-budget must be > 0 seconds, got 0"):
        Budget(0.0)
    c = CostModel(relative={"a": 1.0, "b": 3.0})
    assert c.extract_s("a", images=10) == 0.0  # nothing measured yet
    c.record("a", seconds=2.0, images=10)
    assert c.extract_s("b", images=10) == pytest.approx(6.0)


@pytest.mark.usefixtures("offline_cache")
def test_auto_keeps_to_its_budget_with_a_fake_cost_model(tiny_folder: Path, tmp_path: Path):
    from transferlab.data import open_dataset

    src = open_dataset(str(tiny_folder), quiet=True)
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    cost = CostModel(relative={"mobilenet_v2": 1.0, "efficientnet_lite0": 1.0},
                     measured={"mobilenet_v2": 1e-4, "efficientnet_lite0": 1e5})  # lite0: "a day per image"
    t = TrainOptions(time_budget=1e4, cv=2)
    search = Search(backbones=("mobilenet_v2", "efficientnet_lite0"), flip=False, finetune=False)  # see test_cv_train
    model, metrics, record = run_auto(str(tiny_folder), source=src, split=split, data_options=DataOptions(quiet=True),
                                      train_options=t, run_dir=tmp_path, config={}, cost=cost,
                                      clock=lambda: 0.0, search=search)
    rows = {r["name"]: r for r in record["candidates"]}
    assert rows["features:efficientnet_lite0:plain"]["status"] == "skipped"
    assert rows["features:efficientnet_lite0:plain"]["estimated_s"] > t.time_budget
    scored = [r for r in rows.values() if r["status"] == "scored"]
    assert scored and all(r["backbone"] == "mobilenet_v2" for r in scored)
    assert record["chosen"]["backbone"] == "mobilenet_v2" and metrics["cv"]["k"] == 2
    assert json.loads((tmp_path / "auto.json").read_text())["chosen"]["name"] == record["chosen"]["name"]


@pytest.mark.usefixtures("offline_cache")
def test_cv_ensemble_run_predicts_evaluates_and_refits_on_the_pool(tiny_folder: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    rows_seen: list[int] = []
    real = auto_mod.fit_head
    monkeypatch.setattr(auto_mod, "fit_head", lambda *a, **k: rows_seen.append(len(a[2])) or real(*a, **k))
    opts = dict(backbone="mobilenet_v2", cut=3, strategy="linear-probe", cv=3)
    refit = run_training(str(tiny_folder), data_options=DataOptions(quiet=True),
                         train_options=TrainOptions(**opts), out=tmp_path / "refit")
    pool = refit.metrics["val"]["n"]
    assert rows_seen == [pool] and pool == 18  # the final head saw all 12 train + 6 val images
    ens = run_training(str(tiny_folder), data_options=DataOptions(quiet=True),
                       train_options=TrainOptions(**opts, ensemble=True), out=tmp_path / "ens")
    assert isinstance(ens.model, MultiModel) and len(ens.model.heads) == 3
    again = evaluate_run(tmp_path / "ens", str(tiny_folder), subset="test")
    assert again["accuracy"] == pytest.approx(ens.metrics["test"]["accuracy"])
    top = predict_images([next(tiny_folder.rglob("*.png"))], model_dir=tmp_path / "ens", top=1)
    assert 0.0 < top[0]["top"][0]["probability"] <= 1.0
    assert json.loads((tmp_path / "ens" / "cv.json").read_text())["k"] == 3


@pytest.mark.parametrize("extra, expected", [
    (["--cv", "1"], "--cv must be an integer >= 2"),
    (["--cv", "9", "--strategy", "linear-probe"], "--cv 9 needs at least 9 non-test images per class"),
    (["--time-budget", "0"], "--time-budget must be > 0 seconds, got 0"),
    (["--ensemble", "--strategy", "linear-probe"], "--ensemble averages the K fold models of cross-validation"),
])
def test_bad_cv_and_budget_input_is_one_line(tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            extra: list[str], expected: str):
    assert main(["train", str(tiny_folder), "--out", str(tmp_path / "x"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_multimodel_saves_loads_and_exports_to_onnx(tiny_folder: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from transferlab.data import NormStats
    from transferlab.experiments.artifacts import load_model, save_model
    from transferlab.export import export_onnx

    torch.manual_seed(0)
    a = featurizer(create_backbone("mobilenet_v2", pretrained=False), cut=2)
    b = featurizer(create_backbone("efficientnet_lite0", pretrained=False), cut=2)
    m = MultiModel(members=[a, b], heads=[nn.Linear(a.in_features, 3), nn.Linear(b.in_features, 3),
                                          nn.Linear(a.in_features + b.in_features, 3)],
                   groups=[[0], [1], [0, 1]], preprocessing=a.preprocessing, flip=True).eval()
    pp = a.preprocessing
    save_model(tmp_path, m, classes=["x", "y", "z"], norm=NormStats("pretrained", pp.mean, pp.std))
    lm = load_model(tmp_path)
    x = torch.randn(2, 3, pp.input_size, pp.input_size)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), m(x))
    r = export_onnx(tmp_path, check_images=[str(p) for p in sorted(tiny_folder.rglob("*.png"))[:2]])
    assert r.max_abs_diff < r.tolerance
