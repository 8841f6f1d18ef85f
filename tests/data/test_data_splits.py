"""make_split / save_split / load_split / parse_fractions."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.data import ImageSource, Split, load_split, make_split, parse_fractions, save_split
from transferlab.errors import ConfigError, DataError


def toy(counts: list[int], *, given: dict[str, list[int]] | None = None, shuffle: bool = True) -> ImageSource:
    labels = np.repeat(np.arange(len(counts)), counts)
    if shuffle:
        labels = np.random.default_rng(123).permutation(labels)
    given_split = None if given is None else {k: np.asarray(v) for k, v in given.items()}
    return ImageSource.from_arrays(
        np.zeros((len(labels), 2, 2), np.uint8), labels, classes=[f"c{i}" for i in range(len(counts))],
        name="toy", given_split=given_split,
    )


def per_class(src: ImageSource, split: Split) -> dict[str, list[int]]:
    return {k: src.class_counts(v).tolist() for k, v in split.as_dict().items()}


def test_stratified_proportions_per_class():
    src = toy([40, 80, 20])
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    assert per_class(src, split) == {"train": [20, 40, 10], "val": [10, 20, 5], "test": [10, 20, 5]}
    everything = np.concatenate(list(split.as_dict().values()))
    assert np.array_equal(np.sort(everything), np.arange(len(src)))
    for arr in split.as_dict().values():
        assert arr.dtype == np.int64 and np.all(np.diff(arr) > 0)


def test_other_fractions_round_per_class():
    src = toy([10, 7])
    split = make_split(src, fractions=(0.6, 0.2, 0.2), seed=3)
    assert per_class(src, split) == {"train": [6, 5], "val": [2, 1], "test": [2, 1]}


def test_same_seed_same_split_different_seed_differs():
    src = toy([30, 30, 30])
    a, b, c = (make_split(src, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))
    assert not np.array_equal(a.train, c.train)
    assert a == b and a != c
    assert per_class(src, a) == per_class(src, c)


def test_given_split_is_kept_exactly():
    given = {"train": list(range(0, 12)), "val": list(range(12, 16)), "test": list(range(16, 20))}
    src = toy([10, 10], given=given, shuffle=False)
    src.labels[:] = np.tile([0, 1], 10)
    split = make_split(src, fractions=(0.6, 0.2, 0.2), seed=1)
    assert split.train.tolist() == given["train"] and split.val.tolist() == given["val"]
    assert split.test.tolist() == given["test"]


def test_val_is_carved_from_trainval_by_ratio():
    labels = np.repeat([0, 1], 50)
    trainval = np.concatenate([np.arange(0, 40), np.arange(50, 90)])  # 40 per class
    test = np.concatenate([np.arange(40, 50), np.arange(90, 100)])
    src = ImageSource.from_arrays(np.zeros((100, 2, 2), np.uint8), labels, classes=["a", "b"], name="t",
                                  given_split={"trainval": trainval, "test": test})
    split = make_split(src, fractions=(0.6, 0.2, 0.2), seed=0)
    assert split.test.tolist() == test.tolist()
    assert per_class(src, split)["val"] == [10, 10]  # 0.2 / (0.6 + 0.2) of 40
    assert per_class(src, split)["train"] == [30, 30]
    assert np.isin(split.val, trainval).all() and np.isin(split.train, trainval).all()
    other = make_split(src, fractions=(0.6, 0.2, 0.2), seed=1)
    assert not np.array_equal(split.val, other.val) and np.array_equal(split.test, other.test)


def test_missing_test_is_carved_from_train():
    labels = np.repeat([0, 1], 30)
    train = np.concatenate([np.arange(0, 24), np.arange(30, 54)])
    val = np.setdiff1d(np.arange(60), train)
    src = ImageSource.from_arrays(np.zeros((60, 2, 2), np.uint8), labels, classes=["a", "b"], name="t",
                                  given_split={"train": train, "val": val})
    split = make_split(src, fractions=(0.5, 0.25, 0.25), seed=0)
    assert split.val.tolist() == val.tolist()
    assert per_class(src, split)["test"] == [8, 8]  # 0.25 / 0.75 of 24


def test_train_only_given_carves_both():
    src = toy([20, 20], given={"train": list(range(40))})
    assert per_class(src, make_split(src, fractions=(0.5, 0.25, 0.25)))["test"] == [5, 5]


def test_items_outside_given_split_join_the_training_pool():
    labels = np.array([0, 1] * 10)
    given = {"trainval": np.arange(0, 14), "test": np.arange(14, 18)}  # 18, 19 in no list
    src = ImageSource.from_arrays(np.zeros((20, 2, 2), np.uint8), labels, classes=["a", "b"], name="t",
                                  given_split=given)
    split = make_split(src, fractions=(0.5, 0.25, 0.25))
    assert {18, 19} <= set(split.train.tolist()) | set(split.val.tolist())
    assert split.test.tolist() == list(range(14, 18))


def test_train_per_class_subsamples_seeded():
    src = toy([40, 60])
    full = make_split(src, seed=2)
    few = make_split(src, seed=2, train_per_class=5)
    assert src.class_counts(few.train).tolist() == [5, 5]
    assert np.isin(few.train, full.train).all()
    assert np.array_equal(few.val, full.val) and np.array_equal(few.test, full.test)
    assert np.array_equal(few.train, make_split(src, seed=2, train_per_class=5).train)


def test_train_per_class_too_large_names_smallest_class():
    src = toy([40, 12])
    with pytest.raises(DataError, match=r"train_per_class=7 exceeds the smallest class 'c1' \(6 training images\)"):
        make_split(src, train_per_class=7)
    with pytest.raises(ConfigError, match="train_per_class"):
        make_split(src, train_per_class=0)


def test_class_too_small_to_split():
    src = toy([20, 2])
    with pytest.raises(DataError, match=r"class 'c1' has 2 images .* leaves its train split empty"):
        make_split(src)


def test_given_split_missing_a_class():
    labels = np.array([0, 1, 0, 1, 0, 0])
    src = ImageSource.from_arrays(np.zeros((6, 2, 2), np.uint8), labels, classes=["a", "b"], name="t",
                                  given_split={"train": [0, 1, 2, 3], "val": [4], "test": [5]})
    with pytest.raises(DataError, match="class 'b' has no images in the val split"):
        make_split(src)


@pytest.mark.parametrize("fractions", [(0.5, 0.3, 0.3), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0), (0.5, 0.5), (0.5, -0.25, 0.75)])
def test_bad_fractions(fractions):
    with pytest.raises(ConfigError, match="fractions") as info:
        make_split(toy([10, 10]), fractions=fractions)
    assert "\n" not in str(info.value)


def test_fractions_tolerance():
    make_split(toy([20, 20]), fractions=(0.5, 0.25, 0.2500005))


def test_parse_fractions():
    assert parse_fractions("0.5,0.25,0.25") == (0.5, 0.25, 0.25)
    assert parse_fractions(" 0.6, 0.2 ,0.2") == (0.6, 0.2, 0.2)
    for bad in ("0.5,0.25", "a,b,c", "0.5,0.3,0.3", ""):
        with pytest.raises(ConfigError, match="--split"):
            parse_fractions(bad, option="--split")


def test_bad_seed():
    with pytest.raises(ConfigError, match="seed"):
        make_split(toy([10, 10]), seed=-1)


def test_split_rejects_overlap():
    with pytest.raises(DataError, match="disjoint train/test"):
        Split(train=[1, 2], val=[3], test=[2])


def test_save_load_roundtrip(tmp_path):
    src = toy([12, 8])
    split = make_split(src, seed=4)
    written = save_split(split, src, tmp_path / "run")
    assert [p.name for p in written] == ["split_train.txt", "split_val.txt", "split_test.txt"]
    first = (tmp_path / "run" / "split_val.txt").read_text().splitlines()[0]
    i = int(split.val[0])
    assert first == f"{src.identity(i)}\t{src.classes[src.labels[i]]}"
    back = load_split(tmp_path / "run", src)
    for a, b in zip(split.as_dict().values(), back.as_dict().values()):
        assert np.array_equal(a, b)
    assert not list((tmp_path / "run").glob(".*tmp"))


def test_load_split_unknown_identity(tmp_path):
    src = toy([12, 8])
    save_split(make_split(src), src, tmp_path)
    smaller = ImageSource.from_arrays(np.zeros((5, 2, 2), np.uint8), src.labels[:5], classes=src.classes, name="toy")
    with pytest.raises(DataError, match=r"split_train.txt:\d+: toy:\d+ is not in dataset toy"):
        load_split(tmp_path, smaller)


def test_load_split_class_mismatch_and_missing_file(tmp_path):
    src = toy([12, 8])
    save_split(make_split(src), src, tmp_path)
    relabelled = ImageSource.from_arrays(np.zeros((20, 2, 2), np.uint8), 1 - src.labels, classes=src.classes, name="toy")
    with pytest.raises(DataError, match="in the split but"):
        load_split(tmp_path, relabelled)
    (tmp_path / "split_test.txt").unlink()
    with pytest.raises(DataError, match="split_test.txt: split file not found"):
        load_split(tmp_path, src)
