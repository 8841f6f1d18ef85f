"""``--cv K`` in compare (x --backbones), recommend, probe-layers and hog-svm: fold scores, test in no fold,
the report's CV figures, resume, and bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder
from transferlab.cli import main
from transferlab.data import load_split, make_split, open_dataset
from transferlab.errors import ConfigError
from transferlab.experiments import backbones as bmod
from transferlab.experiments.backbones import backbone_points, compare_backbones
from transferlab.experiments.cv import stratified_folds
from transferlab.experiments.cvsupport import check_cv_entries, supports_cv
from transferlab.experiments.probe import PROBE_PNG, ProbeOptions, format_probe_table, probe_layers
from transferlab.experiments.recommend import recommend
from transferlab.experiments.train import run_training
from transferlab.options import DataOptions, TrainOptions

pytestmark = pytest.mark.usefixtures("offline_cache")
FAKE_LATENCY = {"mobilenet_v2": {"batch_1_ms": 8.0, "batch_32_ms": 120.0, "batch_32_ms_per_image": 3.75,
                                 "load_avg_1m": 1.0},
                "efficientnet_lite0": {"batch_1_ms": 11.0, "batch_32_ms": 200.0, "batch_32_ms_per_image": 6.25,
                                       "load_avg_1m": 1.0}}


def test_compare_backbones_cv_rows_folds_report_and_resume(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "cmp"
    kw = dict(backbones="mobilenet_v2", strategies="linear-probe,hog-svm", out=out,  # crossing: test_backbones.py
              latencies=FAKE_LATENCY, data_options=DataOptions(quiet=True), train_options=TrainOptions(cv=3))
    compare_backbones(str(data), **kw)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "done" and res["cv"]["k"] == 3 and res["seeds"] == 1  # --cv: one seed by default
    assert list(res["strategies"]) == ["linear-probe@mobilenet_v2", "hog-svm"]
    src = open_dataset(str(data), quiet=True)
    for s in res["strategies"].values():
        (r,) = s["runs"]
        assert r["backbone"] == (s["backbone"] or "none") and r["cv_k"] == 3
        for key in ("cv_mean", "cv_std", "cv_loss_mean", "test_accuracy"):
            assert isinstance(r[key], float)
        assert s["cv_mean"] == pytest.approx(r["cv_mean"]) and s["cv_std"] == pytest.approx(r["cv_std"])
        # the folds split train+val only: every pool item held out once, no test item in any fold
        split = load_split(Path(r["run_dir"]), src)
        pool = np.concatenate([split.train, split.val])
        folds = stratified_folds(src.labels[pool], k=3, seed=0)
        assert not set(np.concatenate([pool[f] for f in folds]).tolist()) & set(split.test.tolist())
        cv = json.loads((Path(r["run_dir"]) / "cv.json").read_text())
        assert cv["fold_sizes"] == [len(f) for f in folds] and cv["pool"] == len(pool) == 18
        m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert m["val"]["n"] == len(pool) and m["test"]["n"] == len(split.test) == 6
    pts = backbone_points(res)
    assert {p["measure"] for p in pts} == {"3-fold CV"}
    assert all(p["accuracy"] == res["strategies"][p["label"]]["cv_mean"] for p in pts)
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    for fig in ("backbones_top1", "backbones_cost"):
        assert f'id="fig-{fig}"' in page
    assert "3-fold CV accuracy (mean ± fold std)" in page and "error bars" in page
    written = {r["run_dir"]: (Path(r["run_dir"]) / "metrics.json").stat().st_mtime_ns
               for s in res["strategies"].values() for r in s["runs"]}
    again = compare_backbones(str(data), **{**kw, "resume": True})
    assert [r["cv_mean"] for s in again["strategies"].values() for r in s["runs"]] == [
        r["cv_mean"] for s in res["strategies"].values() for r in s["runs"]]
    # read back, not run again: hog-svm (no model file) included
    assert all((Path(d) / "metrics.json").stat().st_mtime_ns == t for d, t in written.items())
    for s in again["strategies"].values():  # a run read back keeps the wall it ran in (was 0s)
        assert s["wall_s"] >= s["runs"][0]["timing"]["total_s"] > 0


def test_hog_svm_cv_ensemble_averages_the_fold_svms(tiny_folder: Path, tmp_path: Path) -> None:
    d = DataOptions(quiet=True)
    refit = run_training(str(tiny_folder), data_options=d, train_options=TrainOptions(strategy="hog-svm", cv=3))
    ens = run_training(str(tiny_folder), data_options=d, train_options=TrainOptions(strategy="hog-svm", cv=3,
                                                                                     ensemble=True), out=tmp_path / "e")
    for run in (refit, ens):
        assert run.metrics["cv"]["k"] == 3 and run.metrics["val"]["n"] == 18
        assert run.metrics["cv"]["cv_mean"] == pytest.approx(run.metrics["val"]["accuracy"], abs=0.12)
    assert refit.metrics["cv"] == ens.metrics["cv"]  # the same folds and fits; only the final model differs
    assert "averaged" in json.loads((tmp_path / "e" / "cv.json").read_text())["final"]
    with pytest.raises(ConfigError, match="--ensemble averages the K fold models"):
        run_training(str(tiny_folder), data_options=d, train_options=TrainOptions(strategy="hog-svm", ensemble=True))


def test_svm_in_the_span_of_its_rows_is_the_linear_svm() -> None:
    from transferlab.experiments.baselines import svm_path
    from transferlab.experiments.cv import fit_head

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 300)), np.repeat(np.arange(4), 10)  # fewer rows than features, as HOG
    x[:, :5] += y[:, None]
    for C in (0.001, 0.1):
        (w, b), (w0, b0) = svm_path(x, y, np.arange(40), grid=(C,), num_classes=4)[C], fit_head(
            [x], y, np.arange(40), C=C, num_classes=4, classifier="svm")
        np.testing.assert_allclose(w.numpy(), w0.numpy(), atol=1e-4 * float(w0.abs().max()))
        np.testing.assert_allclose(b.numpy(), b0.numpy(), atol=1e-3)


def test_recommend_cv_names_the_backbone_by_cv_and_reports_tau(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    real = recommend(str(data), backbone=None, sample=4, max_params=4e6, cv=3)  # only mobilenet_v2 fits 4M
    (row,) = real["backbone_ranking"]
    assert real["backbone"] == "mobilenet_v2" and row["cv_rank"] == 1 and 0 <= row["cv_mean"] <= 1
    assert real["backbone_cv"]["k"] == 3 and real["backbone_cv"]["pool"] == 18
    assert real["backbone_cv"]["kendall_tau"] is None  # one backbone: no ranking to compare
    # the choice, on fake scores: CV orders the backbones against LogME
    logme = {"a": 0.9, "b": 0.5, "c": 0.1}
    cv = {"a": 0.70, "b": 0.80, "c": 0.90}
    monkeypatch.setattr(bmod, "rank_backbones", lambda *a, **k: [
        {"backbone": b, "logme": v, "images": 12} for b, v in logme.items()])

    class Score:
        def __init__(self, m: float) -> None:
            self.mean, self.std, self.loss_mean, self.C = m, 0.01, 1 - m, 1.0

    monkeypatch.setattr(bmod, "probe_cv", lambda src, parts, name, **k: Score(cv[name]))
    src = open_dataset(str(data), quiet=True)
    split = make_split(src, seed=0)
    name, ranking, why, rec = bmod.choose_backbone(src, split.train, val_idx=split.val, cv=3)
    assert name == "c" and [r["cv_rank"] for r in ranking] == [3, 2, 1]
    assert rec["kendall_tau"] == -1.0 and rec["logme_pick"] == "a" and not rec["agree"]
    assert "highest 3-fold CV accuracy" in why and "would pick a" in why


def test_probe_layers_cv_gives_mean_and_std_per_layer_from_one_pass(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "probe"
    res = probe_layers(str(data), out=out, options=ProbeOptions(backbone="mobilenet_v2", cv=3),
                       data_options=DataOptions(quiet=True))
    assert res["forward_images"] == 24  # every image through the stages once, for all folds and stages
    assert res["cv"]["k"] == 3 and len(res["stages"]) == 9
    for s in res["stages"]:
        assert len(s["fold_accuracy"]) == 3 and "val_accuracy" not in s
        assert s["cv_mean"] == pytest.approx(np.mean(s["fold_accuracy"]), abs=1e-6)
        assert s["cv_std"] == pytest.approx(np.std(s["fold_accuracy"]), abs=1e-6)
    assert res["advice"]["best_accuracy"] == max(s["cv_mean"] for s in res["stages"])
    assert "3-fold CV acc" in format_probe_table(res) and " ± " in format_probe_table(res)
    assert (out / PROBE_PNG).stat().st_size > 0


def test_compare_results_print_the_cv_score() -> None:
    from transferlab.api import CompareResults

    r = CompareResults({"backbone": "a", "seeds": 1, "cv": {"k": 5}, "strategies": {"linear-probe": {
        "cv_mean": 0.95, "cv_std": 0.01, "val_accuracy_mean": 0.5, "val_accuracy_std": 0.0,
        "test_accuracy_mean": 0.96, "test_accuracy_std": 0.0, "wall_s": 3.0}}})
    assert "(5-fold CV / test accuracy, wall)" in repr(r) and "0.9500 ± 0.0100" in repr(r)
    assert "5-fold CV accuracy" in r._repr_html_()


def test_cv_support_is_asked_in_one_place() -> None:
    assert all(supports_cv(TrainOptions(strategy=s)) for s in ("hog-svm", "linear-probe", "fine-tune", "scratch"))
    assert supports_cv(TrainOptions(strategy="fine-tune", plan="p.yaml"))
    assert not supports_cv(TrainOptions(strategy="feature-extraction", unlabeled="u/"))
    check_cv_entries([("fine-tune", TrainOptions(strategy="fine-tune")), ("scratch", TrainOptions(strategy="scratch"))],
                     k=5)
    with pytest.raises(ConfigError, match=r"--cv 5: feature-extraction:unlabeled=u/ cannot be cross-validated"):
        unlabeled = TrainOptions(strategy="feature-extraction", unlabeled="u/")
        check_cv_entries([("fine-tune", TrainOptions(strategy="fine-tune")),
                          ("feature-extraction:unlabeled=u/", unlabeled)], k=5)


@pytest.mark.parametrize(("argv", "message"), [
    (["compare", "--cv", "1", "--strategies", "linear-probe"], "--cv must be an integer >= 2"),
    (["compare", "--cv", "9", "--strategies", "linear-probe"], "--cv 9 needs at least 9 non-test images per class"),
    (["compare", "--cv", "3", "--strategies", "linear-probe,feature-extraction:unlabeled=u,hog-svm"],
     "--cv 3: feature-extraction:unlabeled=u cannot be cross-validated"),
    (["compare", "--cv", "3", "--strategies", "linear-probe", "--backbones", "mobilenet_v2,nope"],
     "unknown backbone 'nope'; those with weights here: mobilenet_v2"),
    (["compare", "--cv", "3", "--strategies", "linear-probe", "--backbones", "resnet50"],
     "resnet50 has no ImageNet weights here; those with weights here: mobilenet_v2"),
    (["recommend", "--cv", "1"], "--cv must be an integer >= 2"),
    (["recommend", "--cv", "9"], "--cv 9 needs at least 9 non-test images per class"),
    (["recommend", "--cv", "3", "--backbone", "mobilenet_v2"], "need no --backbone"),
    (["probe-layers", "--cv", "1", "--backbone", "mobilenet_v2"], "--cv must be an integer >= 2"),
    (["probe-layers", "--cv", "7", "--backbone", "mobilenet_v2"], "--cv 7 needs at least 7 non-test images per class"),
])
def test_bad_cv_input_is_one_line_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                argv: list[str], message: str) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "out"
    command, *rest = argv
    extra = ["--out", str(out), "--quiet"] if command != "recommend" else ["--sample", "4"]
    assert main([command, str(data), *extra, *rest]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists() or not any(out.iterdir())
