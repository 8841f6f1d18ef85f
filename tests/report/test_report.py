"""report: the HTML of a compare and of a single run, its figures, and the overfitting diagnosis."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.conftest import make_image_folder
from transferlab.cli import main
from transferlab.errors import ConfigError
from transferlab.experiments.compare import compare
from transferlab.options import DataOptions, TrainOptions
from transferlab.report import build_report
from transferlab.report.figures import curve_facts, overfitting, phase_spans

FAST = dict(backbone="mobilenet_v2", cut=2, epochs=2, finetune_epochs=1, scratch_epochs=2, unfreeze=1)
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("offline_cache")


def embedded_pngs(page: str) -> dict[str, bytes]:
    return {m.group(1): base64.b64decode(m.group(2))
            for m in re.finditer(r'<img id="fig-([a-z_]+)" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)}


def test_compare_report_has_every_section(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32, seed=1)
    out = tmp_path / "cmp"
    compare(str(data), strategies="scratch,linear-probe,fine-tune", seeds=1, out=out,
            data_options=DataOptions(quiet=True), train_options=TrainOptions(**FAST))
    path = build_report(out)
    page = path.read_text()
    pngs = embedded_pngs(page)
    assert {"learning_curves", "three_benefits", "confusion", "timings"} <= set(pngs)
    for name, blob in pngs.items():
        assert blob.startswith(PNG)
        assert (out / "figures" / f"{name}.png").read_bytes() == blob
    assert page.count("<img") == len(pngs)  # every image is embedded, none points at a file
    for text in ("Results (test split, mean ± std over seeds)", "Overfitting diagnosis", "Machine and versions",
                 "Best strategy:", "precision", "torch"):
        assert text in page
    assert "no epochs (closed-form fit)" in page  # linear-probe
    results = json.loads((out / "results.json").read_text())
    best = max(results["strategies"].items(), key=lambda kv: kv[1]["test_accuracy_mean"])[0]
    assert f"Best strategy: {best}" in page
    wrong = "misclassified" in pngs
    assert wrong or "No misclassified test images." in page


def test_report_marks_a_failed_strategy(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", size=32, seed=1)
    out = tmp_path / "cmp"
    compare(str(data), strategies="linear-probe,feature-extraction", seeds=1, out=out,
            data_options=DataOptions(quiet=True), train_options=TrainOptions(head="dense", hidden="8", **FAST))
    page = build_report(out).read_text()
    assert re.search(r"<td>linear-probe</td><td>failed</td>", page)
    assert "seed 0 failed: ConfigError" in page


def test_single_run_report_recomputes_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_image_folder(tmp_path / "data", size=32, seed=1)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--strategy", "scratch", "--quiet",
                 *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in FAST.items()), [])]) == 0
    assert not (run / "predictions_test.csv").exists()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    page = (run / "report.html").read_text()
    pngs = embedded_pngs(page)
    assert {"learning_curves", "confusion", "timings"} <= set(pngs)
    assert "three_benefits" not in pngs  # one strategy: nothing to compare against
    m = json.loads((run / "metrics.json").read_text())
    n_wrong = sum(m["test"]["confusion"][i][j] for i in range(3) for j in range(3) if i != j)
    if n_wrong:
        assert f"Misclassified test images ({n_wrong} of {m['test']['n']}" in page
        assert "misclassified" in pngs


def test_report_of_a_folder_without_results(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither results.json"):
        build_report(tmp_path)


def test_overfitting_diagnosis() -> None:
    def h(pairs: list[tuple[float, float]]) -> list[dict[str, float]]:
        return [{"epoch": i, "val_loss": v, "train_loss": t} for i, (v, t) in enumerate(pairs)]

    o = overfitting(h([(1.0, 1.0), (0.6, 0.7), (0.5, 0.5), (0.7, 0.3), (0.9, 0.1)]))
    assert o is not None and o["turned_up_at"] == 3 and o["best_epoch"] == 2
    assert overfitting(h([(1.0, 1.0), (0.8, 0.7), (0.6, 0.5)])) is None  # still improving
    assert overfitting(h([(1.0, 1.0), (0.5, 0.5), (0.9, 0.8)])) is None  # train loss rose too: not overfitting
    assert overfitting(h([(1.0, 1.0)])) is None


def test_curve_facts_and_phase_spans() -> None:
    hist = [{"epoch": i, "phase": "head" if i < 2 else "finetune", "val_accuracy": a}
            for i, a in enumerate([0.5, 0.7, 0.8, 0.9, 0.9])]
    f = curve_facts(hist)
    assert f["start"] == 0.5 and f["slope"] == pytest.approx(0.4 / 3) and f["asymptote"] == pytest.approx(0.8667, abs=1e-3)
    assert phase_spans(hist) == [("head", 0, 1), ("finetune", 2, 4)]


def test_phase_labels_of_short_phases_do_not_overprint() -> None:
    from transferlab.report.figures import learning_curves

    # chain-thaw's shape: a 30-epoch head phase, three one-epoch stages, an 8-epoch last phase
    phases = ["head"] * 30 + ["thaw-stage6", "thaw-stage7", "thaw-conv_head"] + ["thaw-all"] * 8
    hist = [{"epoch": i, "phase": p, "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5,
             "val_accuracy": 0.5} for i, p in enumerate(phases)]
    fig = learning_curves({"chain-thaw": hist})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert [t.get_text() for t in ax.texts] == ["head", "thaw-stage6", "thaw-stage7", "thaw-conv_head", "thaw-all"]
        overlaps = [(ax.texts[i].get_text(), ax.texts[j].get_text()) for i in range(len(boxes))
                    for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
        assert overlaps == []
