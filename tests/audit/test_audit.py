"""``transferlab audit``, the leakage warning, ``suggest-labels`` and ``train --unlabeled`` on tiny images.

One module-scoped folder of 3 classes x 10 random grating pictures (96 px) with planted copies: an
exact copy (same pixels, another file name), a downscaled + JPEG near-copy, both in the same class,
and exact copies of 4 more images (some of which land in another split). The audit and one
linear-probe run on it are shared by the tests (efficientnet_lite0's offline weights, ~40 images).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferlab.audit import AuditOptions, parse_drop, run_audit, write_clean
from transferlab.audit.duplicates import (
    NearRule,
    bits_of,
    calibrate_phash,
    cross_split_pairs,
    exact_pairs,
    near_copy,
    near_pairs,
    perceptual_hash,
    pixel_hash,
)
from transferlab.audit.labels import find_label_issues
from transferlab.cli import main
from transferlab.data import open_dataset
from transferlab.errors import ConfigError

CHROMIUM = Path(os.environ.get("TRANSFERLAB_CHROMIUM", "/usr/bin/chromium"))
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


def picture(rng: np.random.Generator, colour: tuple[int, int, int]) -> Image.Image:
    """A 96 px picture of random gratings (orientation, frequency, phase per channel) with a class-coloured square."""
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    chans = []
    for _ in range(3):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(1.5, 9.0), rng.uniform(0, 2 * np.pi)
        chans.append(127.5 + 127.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase))
    arr = np.stack(chans, axis=2).astype(np.uint8)
    x, y = rng.integers(0, 64, size=2)
    arr[y : y + 28, x : x + 28] = colour
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("audit")
    os.environ["TRANSFERLAB_CACHE"] = str(root / "cache")
    rng = np.random.default_rng(0)
    data = root / "data"
    for c, colour in enumerate(COLOURS):
        (data / f"class_{c}").mkdir(parents=True)
        for i in range(10):
            picture(rng, colour).save(data / f"class_{c}" / f"img_{i:02d}.png")
    exact = data / "class_0" / "zz_exact.png"
    Image.open(data / "class_0" / "img_03.png").save(exact)
    near = data / "class_1" / "zz_near.jpg"
    near_copy(near_copy(Image.open(data / "class_1" / "img_05.png"), "resize"), "jpeg").save(near)
    for k in range(4):
        Image.open(data / "class_2" / f"img_{k:02d}.png").save(data / "class_2" / f"zz_leak{k}.png")
    unl = root / "unlabeled"
    unl.mkdir()
    for i in range(9):
        picture(rng, COLOURS[i % 3]).save(unl / f"u{i}.png")
    out = root / "audit"
    res = run_audit(str(data), out=out, options=AuditOptions(quiet=True))
    return {"root": root, "data": data, "exact": str(exact), "near": str(near), "res": res, "out": out, "unl": unl}


def test_label_issues_on_synthetic_features_find_the_flips() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(5), 40)
    x = rng.normal(size=(200, 16)) + 5.0 * np.eye(16)[y]
    noisy = y.copy()
    flips = rng.choice(200, size=10, replace=False)
    noisy[flips] = (y[flips] + 1 + rng.integers(0, 4, size=10)) % 5
    li = find_label_issues(x, noisy, num_classes=5)
    found = set(li.indices.tolist())
    tp = len(found & set(flips.tolist()))
    assert tp >= 9 and tp / len(found) >= 0.8, (sorted(found), sorted(flips))
    assert np.all(np.diff(li.severity) <= 1e-12)  # worst first
    assert set(li.suggested[np.isin(li.indices, flips)]) <= set(range(5))


def test_pair_finders_on_embeddings() -> None:
    x = np.eye(4)[[0, 1, 2, 0, 3]] + np.array([0, 0, 0, 0.05, 0])[:, None]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    hashes = ["a", "b", "c", "d", "e"]
    rule = NearRule(embedding=0.99)
    assert [(p.i, p.j) for p in near_pairs(xn, rule=rule, hashes=hashes)] == [(3, 0)]
    assert near_pairs(xn, rule=rule, hashes=["a", "b", "c", "a", "e"]) == []  # identical pixels: exact, not near
    names = np.array(["train", "train", "val", "test", "test"])
    leaks = cross_split_pairs(xn, names, rule=rule, hashes=hashes)
    assert [(p.i, p.j, n) for p, n in leaks] == [(3, 0, 1)]
    # the perceptual hash adds pairs the cosine misses, only above the cosine floor
    bits = bits_of(["0" * 16, "f" * 16, "f" * 15 + "0", "0" * 15 + "1", "f" * 16])
    both = NearRule(embedding=0.99, phash=4, floor=0.0)
    assert [(p.i, p.j, p.phash) for p in near_pairs(xn, rule=both, hashes=hashes, bits=bits)] == [
        (2, 1, 4), (3, 0, 1), (4, 1, 0)]
    assert [(p.i, p.j) for p in near_pairs(xn, rule=NearRule(0.99, phash=4, floor=0.5), hashes=hashes, bits=bits)] == [
        (3, 0)]
    assert [(p.i, p.j) for p, _ in cross_split_pairs(xn, names, rule=both, hashes=hashes, bits=bits)] == [(2, 1), (3, 0), (4, 1)]


def test_phash_threshold_follows_the_copies_and_stops_at_the_data() -> None:
    rng = np.random.default_rng(0)
    nn = rng.choice([14.0, 16, 18, 20], size=500)  # unrelated nearest neighbours: median 18, MAD 2
    assert calibrate_phash(np.array([0, 2, 6, 8, 10]), nn) == 10  # the copies decide
    assert calibrate_phash(np.array([0, 2, 16, 22, 30]), nn) == 12  # capped at median - 2 x 1.4826 x MAD
    im, other = (Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((160, 120)) for _ in range(2))
    h = bits_of([perceptual_hash(x) for x in (im, near_copy(im, "all"), near_copy(im, "resize"), other)])
    d = np.abs(h[1:] - h[0]).sum(1)
    assert d[1] <= 2 and d[0] <= 12 < d[2], d  # scale-invariant; the compound copy far closer than another picture
    assert [(p.i, p.j) for p in exact_pairs(["h", "g", "h"])] == [(2, 0)]


def test_exact_and_near_duplicates_of_tiny_images_are_found(planted: dict) -> None:
    res = planted["res"]
    data = planted["data"]
    img = Image.open(data / "class_0" / "img_03.png")
    assert pixel_hash(img) == pixel_hash(Image.open(planted["exact"]))
    dup = {(f["path"], f["other"]) for f in res["findings"] if f["kind"] == "duplicate"}
    assert (planted["exact"], str(data / "class_0" / "img_03.png")) in dup or \
        (str(data / "class_0" / "img_03.png"), planted["exact"]) in dup
    near = [f for f in res["findings"] if f["kind"] == "near_duplicate"]
    assert any({f["path"], f["other"]} == {planted["near"], str(data / "class_1" / "img_05.png")} for f in near), near
    assert len(dup) == 5  # the exact copy and the four zz_leak copies, nothing else
    ph = res["near_duplicate_threshold"]["phash"]  # the hash signal was measured and calibrated on these images
    pair = next(f for f in near if {f["path"], f["other"]} == {planted["near"], str(data / "class_1" / "img_05.png")})
    assert ph["copies_by_kind_max"]["resize"] <= 4 and pair["phash_distance"] <= min(ph["value"], 4), (ph, pair)
    for f in res["findings"]:
        assert {"kind", "path", "score"} <= set(f)
        if f["kind"] == "label":
            assert {"given", "suggested", "probabilities"} <= set(f)
        if f["kind"] in ("duplicate", "near_duplicate", "leakage"):
            assert "other" in f
    doc = json.loads((planted["out"] / "audit.json").read_text())
    assert doc["balance"]["per_class"] == {"class_0": 11, "class_1": 11, "class_2": 14}
    leak = [f for f in doc["findings"] if f["kind"] == "leakage"]
    assert all(f["split"] != f["other_split"] for f in leak)


def test_clean_csv_round_trips_through_train(planted: dict, tmp_path: Path) -> None:
    res, data = planted["res"], planted["data"]
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    src = open_dataset(str(data), quiet=True)
    clean = tmp_path / "clean.csv"
    counts = write_clean(res, src, clean, drop={"duplicate", "near_duplicate"})
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before  # user files untouched
    rows = list(csv.DictReader(io.StringIO(clean.read_text())))
    assert counts["dropped"] >= 6 and len(rows) == counts["kept"] == len(src) - counts["dropped"]
    assert planted["exact"] not in {r["path"] for r in rows}
    rc = main(["train", str(clean), "--strategy", "linear-probe", "--out", str(tmp_path / "run"), "--quiet",
               "--split", "0.5,0.25,0.25", "--json"])
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["test"]["n"] if "n" in m["test"] else True
    lines = (tmp_path / "run" / "split_train.txt").read_text().splitlines()
    assert len(lines) + len((tmp_path / "run" / "split_test.txt").read_text().splitlines()) + \
        len((tmp_path / "run" / "split_val.txt").read_text().splitlines()) == counts["kept"]


def test_train_warns_in_one_line_about_cross_split_copies(planted: dict, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from transferlab.experiments.train import train

    with caplog.at_level(logging.INFO, logger="transferlab"):
        run = train(str(planted["data"]), strategy="linear-probe", out=tmp_path / "run", quiet=True,
                    unlabeled=str(planted["unl"]))
    warn = [r.getMessage() for r in caplog.records if "near-duplicate in an earlier split" in r.getMessage()]
    assert run.metrics["leakage"]["count"] >= 1 and len(warn) == 1
    assert "transferlab audit" in warn[0] and "\n" not in warn[0]
    u = run.metrics["unlabeled"]
    assert u["n_unlabeled"] == 9 and 0 <= u["n_used"] <= 9 and u["method"] == "self-training"
    planted["run"] = tmp_path / "run"


def test_suggest_labels_ranks_the_unlabelled_images(planted: dict, tmp_path: Path) -> None:
    run = planted.get("run")
    if run is None:
        pytest.skip("needs the run of test_train_warns_in_one_line_about_cross_split_copies")
    for strategy in ("margin", "kcenter"):
        out = tmp_path / f"{strategy}.csv"
        assert main(["suggest-labels", "--model", str(run), "--unlabeled", str(planted["unl"]), "--n", "4",
                     "--strategy", strategy, "--out", str(out), "--quiet"]) == 0
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert len(rows) == 4 and len({r["path"] for r in rows}) == 4
        scores = [float(r["score"]) for r in rows]
        assert scores == sorted(scores, reverse=True)


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], expect: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expect in err and "\n" not in err, err


def test_bad_input_gives_one_line(planted: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = str(planted["data"])
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["train", data, "--strategy", "linear-probe", "--out", str(tmp_path / "r"),
                             "--unlabeled", str(empty), "--quiet"], "no image files")
    _one_line_error(capsys, ["audit", data, "--out", str(tmp_path / "a"), "--write-clean", str(tmp_path / "c.csv"),
                             "--drop", "label,typo"], "--drop expects kinds from label, duplicate")
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one / "a.png")
    _one_line_error(capsys, ["audit", str(tmp_path / "one"), "--out", str(tmp_path / "a")], "only one class")
    run = planted.get("run")
    if run is not None:
        other = tmp_path / "other"
        for c in ("cat", "dog"):
            (other / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(other / c / "a.png")
        _one_line_error(capsys, ["suggest-labels", "--model", str(run), "--unlabeled", str(planted["unl"]),
                                 "--strategy", "kcenter", "--labeled", str(other), "--out", str(tmp_path / "s.csv")],
                        "differ from the model's")
    with pytest.raises(ConfigError):
        parse_drop("")


@pytest.mark.slow
def test_audit_html_opens_offline_in_headless_chromium(planted: dict) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the 'test' extra) is not installed")
    page_path = planted["out"] / "audit.html"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = b.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri())
        sections = page.eval_on_selector_all("section h2", "els => els.map(e => e.textContent)")
        cards = page.eval_on_selector_all("#duplicate .card", "els => els.map(e => Number(e.dataset.score))")
        broken = page.eval_on_selector_all("img", "els => els.filter(i => !(i.complete && i.naturalWidth > 0)).length")
        b.close()
    assert any(s.startswith("Exact duplicates") for s in sections) and len(sections) == 7
    assert len(cards) == 5 and cards == sorted(cards, reverse=True)
    assert broken == 0
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
