"""compare: schema, incremental results, shared features (also with train's disk cache), bad input, a crashing
strategy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder
from transferlab.cli import main
from transferlab.errors import ConfigError, DataError
from transferlab.experiments.compare import compare, parse_sizes, parse_strategies, stratified_subset
from transferlab.options import DataOptions, TrainOptions

FAST = dict(backbone="mobilenet_v2", cut=2, epochs=1, finetune_epochs=1, scratch_epochs=1, unfreeze=1)


pytestmark = pytest.mark.usefixtures("offline_cache")


def test_compare_schema_incremental_and_shared_features(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "cmp"
    res = compare(str(data), strategies="linear-probe,feature-extraction", seeds=2, out=out,
                  data_options=DataOptions(quiet=True), train_options=TrainOptions(**FAST))
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "done" and on_disk["strategies"].keys() == res["strategies"].keys()
    for name in ("linear-probe", "feature-extraction"):
        s = on_disk["strategies"][name]
        for key in ("test_accuracy_mean", "test_accuracy_std", "macro_f1_mean", "macro_f1_std", "wall_s"):
            assert isinstance(s[key], float)
        accs = [r["test_accuracy"] for r in s["runs"]]
        assert [r["seed"] for r in s["runs"]] == [0, 1]
        assert s["test_accuracy_mean"] == pytest.approx(np.mean(accs), abs=1e-6)
        assert s["test_accuracy_std"] == pytest.approx(np.std(accs), abs=1e-6)
        for r in s["runs"]:
            assert (Path(r["run_dir"]) / "metrics.json").is_file()
            assert (Path(r["run_dir"]) / "predictions_test.csv").is_file()
    sizes = on_disk["split"]["sizes"]
    assert sizes == {"train": 12, "val": 6, "test": 6}
    # 2 strategies x 2 seeds, yet every image went through the backbone's first stage once
    assert on_disk["sharing"]["forward_images"] == sum(sizes.values())
    assert on_disk["machine"]["versions"]["torch"]
    # the same split for every run
    splits = {(Path(r["run_dir"]) / "split_test.txt").read_text() for s in on_disk["strategies"].values()
              for r in s["runs"]}
    assert len(splits) == 1


def test_compare_after_train_extracts_nothing_twice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import transferlab

    data = make_image_folder(tmp_path / "data", size=32)
    first = transferlab.train(str(data), out=tmp_path / "train", strategy="feature-extraction", quiet=True, **FAST)
    assert first.metrics["timing"]["extract_s"] > 0
    with caplog.at_level(logging.INFO, logger="transferlab"):
        res = compare(str(data), strategies="linear-probe,feature-extraction", seeds=1, out=tmp_path / "cmp",
                      data_options=DataOptions(quiet=False), train_options=TrainOptions(**FAST))
    assert all(s["n_ok"] == 1 for s in res["strategies"].values())
    assert res["sharing"]["forward_images"] == 0  # train, val and test all came from train's disk entries
    assert res["sharing"]["feature_cache_hits"] == 3
    assert "3 activation sets from the feature cache, 0 images through the frozen prefix (every activation came " \
           "from the cache)" in caplog.text


def test_scratch_shares_preprocessed_images_with_pretrained_runs(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    res = compare(str(data), strategies="scratch,feature-extraction", seeds=1, out=tmp_path / "cmp",
                  data_options=DataOptions(quiet=True), train_options=TrainOptions(**FAST))
    assert all(s["n_ok"] == 1 for s in res["strategies"].values())
    assert res["sharing"]["forward_images"] == sum(res["split"]["sizes"].values())


def test_a_crashing_strategy_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "cmp"
    # linear-probe refuses a dense head: it fails, feature-extraction still runs
    res = compare(str(data), strategies="linear-probe,feature-extraction", seeds=1, out=out,
                  data_options=DataOptions(quiet=True), train_options=TrainOptions(head="dense", hidden="8", **FAST))
    lp, fe = res["strategies"]["linear-probe"], res["strategies"]["feature-extraction"]
    assert lp["n_failed"] == 1 and lp["test_accuracy_mean"] is None
    assert "head linear" in lp["runs"][0]["error"] and "\n" not in lp["runs"][0]["error"]
    assert (Path(lp["runs"][0]["run_dir"]) / "error.txt").is_file()
    assert fe["n_ok"] == 1
    assert json.loads((out / "results.json").read_text())["strategies"]["feature-extraction"]["n_ok"] == 1


def test_variants_of_one_strategy_run_with_their_own_options(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    res = compare(str(data), strategies="fine-tune:unfreeze=1,fine-tune:unfreeze=2:finetune-epochs=2", seeds=1,
                  out=tmp_path / "cmp", data_options=DataOptions(quiet=True),
                  train_options=TrainOptions(**{**FAST, "unfreeze": 2}))
    assert list(res["strategies"]) == ["fine-tune:unfreeze=1", "fine-tune:unfreeze=2:finetune-epochs=2"]
    a, b = (res["strategies"][k] for k in res["strategies"])
    assert a["strategy"] == b["strategy"] == "fine-tune" and a["n_ok"] == b["n_ok"] == 1
    ca, cb = (json.loads((Path(s["runs"][0]["run_dir"]) / "config.json").read_text()) for s in (a, b))
    assert (ca["train_options"]["unfreeze"], ca["train_options"]["finetune_epochs"]) == (1, 1)
    assert (cb["train_options"]["unfreeze"], cb["train_options"]["finetune_epochs"]) == (2, 2)
    assert [p["trainable"] for p in ca["plan"]["phases"]][-1] == ["stage1", "head"]


def test_data_efficiency_study(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32, per_class=10)
    res = compare(str(data), strategies=["linear-probe"], seeds=1, out=tmp_path / "cmp", train_per_class="2,4",
                  data_options=DataOptions(quiet=True), train_options=TrainOptions(**FAST))
    eff = res["efficiency"]
    assert eff["train_per_class"] == [2, 4]
    assert set(eff["strategies"]["linear-probe"]) == {"2", "4"}
    assert res["split"]["train_per_class"] == 4 and res["split"]["sizes"]["train"] == 12
    run_dirs = {r["run_dir"] for r in res["strategies"]["linear-probe"]["runs"]}
    assert all("n4" in d for d in run_dirs)
    assert len((tmp_path / "cmp" / "runs" / "n2" / "linear-probe" / "seed0" / "split_train.txt")
               .read_text().split("\n")) >= 6


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--strategies", ""], "--strategies is empty"),
    (["--strategies", " , "], "--strategies is empty"),
    (["--strategies", "scratch,nope"], "unknown strategy 'nope'"),
    (["--strategies", "fine-tune:unfreez=2"], "expected OPTION=VALUE"),
    (["--strategies", "fine-tune:unfreeze=two"], "unfreeze expects int, got 'two'"),
    (["--strategies", "fine-tune:bn=sometimes"], "bn must be one of frozen, train"),
    (["--strategies", "fine-tune:unfreeze=99"], "--unfreeze must be between 1 and"),
    (["--train-per-class", "2,50"], "exceeds the smallest class"),
    (["--train-per-class", "a"], "comma-separated integers"),
])
def test_bad_input_is_one_line_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              argv: list[str], message: str) -> None:
    data = make_image_folder(tmp_path / "data", size=32, per_class=4)
    out = tmp_path / "cmp"
    rc = main(["compare", str(data), "--out", str(out), "--backbone", "mobilenet_v2", "--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ") and message in err[-1]
    assert not (out / "results.json").exists() and not (out / "runs").exists()


def test_parsers() -> None:
    assert parse_strategies(["scratch", "fine-tune"]) == ["scratch", "fine-tune"]
    with pytest.raises(ConfigError, match="twice"):
        parse_strategies("scratch,scratch")
    assert parse_sizes(None) == [] and parse_sizes("40,5,10") == [5, 10, 40]
    with pytest.raises(ConfigError):
        parse_sizes("0,5")


def test_stratified_subset_is_seeded_and_balanced(tmp_path: Path) -> None:
    from transferlab.data import ImageSource

    src = ImageSource.from_arrays(np.zeros((40, 2, 2), np.uint8), [0, 1] * 20, classes=["a", "b"], name="t")
    a = stratified_subset(src, np.arange(40), 10, seed=3)
    assert np.array_equal(a, stratified_subset(src, np.arange(40), 10, seed=3))
    assert np.bincount(src.labels[a]).tolist() == [5, 5]
    assert stratified_subset(src, np.arange(40), 100, seed=0).size == 40


def test_compare_cli_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", size=32)
    out = tmp_path / "cmp"
    rc = main(["compare", str(data), "--out", str(out), "--strategies", "linear-probe", "--seeds", "1", "--quiet",
               "--backbone", "mobilenet_v2", "--cut", "2"])
    assert rc == 0
    assert (out / "report.html").is_file()
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


def test_data_error_for_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        compare(str(tmp_path / "missing"), strategies="linear-probe", seeds=1, out=tmp_path / "o",
                data_options=DataOptions(quiet=True), train_options=TrainOptions(**FAST))
