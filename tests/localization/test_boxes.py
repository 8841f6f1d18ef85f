"""Boxes follow the image; IoU/GIoU match hand-computed values; VOC reading clips, validates and skips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from transferlab.data import NormStats, open_dataset
from transferlab.errors import DataError
from transferlab.localization import (
    LocalizationTask,
    RandomCropContaining,
    box_metrics,
    box_transform,
    clip_box,
    load_source_boxes,
    paired_giou,
    paired_iou,
    read_voc,
)
from transferlab.zoo import Preprocessing
from tests.localization.conftest import voc_xml

RED = (255, 0, 0)


def rectangle_image(w: int = 60, h: int = 40, box: tuple[int, int, int, int] = (10, 5, 30, 25)) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, :, 2] = 90  # a blue background
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = RED
    return Image.fromarray(arr)


def red_extent(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(xmin, ymin, xmax, ymax) of the red pixels, as pixel edges (xmax exclusive)."""
    mask = (x[0] > 0.5) & (x[2] < 0.2)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def unit_norm() -> NormStats:
    return NormStats("pretrained", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_resize_moves_the_box_exactly():
    pp = Preprocessing(120, 120, (0.0,) * 3, (1.0,) * 3, "nearest")  # 60x40 -> 120x120: x2 in x, x3 in y
    tf = box_transform(pp, norm=unit_norm(), augment="none")
    x, box = tf(rectangle_image(), torch.tensor([10 / 60, 5 / 40, 30 / 60, 25 / 40]))
    assert x.shape == (3, 120, 120)
    assert red_extent(x) == (20, 15, 60, 75)
    assert torch.allclose(box * 120, torch.tensor([20.0, 15.0, 60.0, 75.0]), atol=1e-4)


def test_flip_moves_the_box_exactly():
    pp = Preprocessing(120, 120, (0.0,) * 3, (1.0,) * 3, "nearest")
    tf = box_transform(pp, norm=unit_norm(), augment="flip")
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        x, box = tf(rectangle_image(), torch.tensor([10 / 60, 5 / 40, 30 / 60, 25 / 40]))
        extent = red_extent(x)
        assert torch.allclose(box * 120, torch.tensor(extent, dtype=torch.float32), atol=1e-4)
        seen.add(extent)
    assert seen == {(20, 15, 60, 75), (60, 15, 100, 75)}  # both outcomes, mirrored about x = 60


def test_bilinear_resize_keeps_the_box_on_the_rectangle():
    pp = Preprocessing(120, 120, (0.0,) * 3, (1.0,) * 3, "bilinear")
    x, box = box_transform(pp, norm=unit_norm())(rectangle_image(), torch.tensor([10 / 60, 5 / 40, 30 / 60, 25 / 40]))
    assert red_extent(x) == tuple(round(float(v)) for v in box * 120)


def test_scale_crop_keeps_the_whole_box_and_follows_it():
    pp = Preprocessing(96, 96, (0.0,) * 3, (1.0,) * 3, "nearest")
    tf = box_transform(pp, norm=unit_norm(), augment="flip-scale", scale=(0.3, 0.6))
    torch.manual_seed(1)
    zoomed = 0
    for _ in range(15):
        x, box = tf(rectangle_image(), torch.tensor([10 / 60, 5 / 40, 30 / 60, 25 / 40]))
        extent = torch.tensor(red_extent(x), dtype=torch.float32)
        assert torch.allclose(box * 96, extent, atol=1.01)  # nearest resampling of a crop: within a pixel
        assert 0.0 <= float(box.min()) and float(box.max()) <= 1.0
        zoomed += float((box[2] - box[0]) * 60) > 20 * 96 / 60 * 0.6  # larger than without the crop
    assert zoomed == 15


def test_crop_needs_exactly_one_box_input():
    crop = RandomCropContaining()
    with pytest.raises(ValueError, match="one BoundingBoxes"):
        crop(tv_tensors.Image(torch.zeros(3, 8, 8)))


# ----------------------------------------------------------------------------- IoU / GIoU

def test_iou_and_giou_match_hand_computed_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    # 1: inter 1, union 7, hull 9 -> IoU 1/7, GIoU 1/7 - 2/9; 2: disjoint, hull 3 x 1 -> GIoU 0 - (3 - 2)/3
    # 3: b inside a: IoU 4/8, hull = a -> GIoU 1/2; 4: identical -> 1, 1
    assert torch.allclose(paired_iou(a, b), torch.tensor([1 / 7, 0.0, 0.5, 1.0]))
    assert torch.allclose(paired_giou(a, b), torch.tensor([1 / 7 - 2 / 9, -1 / 3, 0.5, 1.0]))


def test_swapped_corners_are_ordered_before_iou():
    assert torch.allclose(paired_iou(torch.tensor([[2.0, 2.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0]])),
                          torch.tensor([1.0]))


def test_box_metrics_thresholds_and_class_accuracy():
    true = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4)
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.8], [0.0, 0.0, 1.0, 0.6], [0.0, 0.0, 1.0, 0.4]])
    m = box_metrics(pred, true, logits=torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]]),
                    labels=torch.tensor([0, 0, 0, 1]))
    assert m["mean_iou"] == pytest.approx((1 + 0.8 + 0.6 + 0.4) / 4)
    assert (m["acc_at_0.5"], m["acc_at_0.75"], m["accuracy"]) == (0.75, 0.5, 0.5)


@pytest.mark.parametrize("loss", ["smooth-l1", "giou"])
def test_task_loss_is_zero_only_at_the_true_box(loss: str):
    task = LocalizationTask(box_loss=loss, num_classes=0)
    target = torch.tensor([[0.2, 0.2, 0.6, 0.7, 0.0]])
    assert float(task.loss(target[:, :4].clone(), target)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.loss(torch.tensor([[0.3, 0.2, 0.6, 0.7]]), target)) > 0.01
    expected_giou_loss = 1 - 0.3 * 0.5 / (0.4 * 0.5)  # IoU 0.75, hull = the true box
    if loss == "giou":
        assert float(task.loss(torch.tensor([[0.3, 0.2, 0.6, 0.7]]), target)) == pytest.approx(expected_giou_loss, abs=1e-5)


def test_class_box_loss_adds_weighted_box_term():
    out = torch.tensor([[0.3, 0.2, 0.6, 0.7, 1.0, -1.0]])
    target = torch.tensor([[0.2, 0.2, 0.6, 0.7, 1.0]])
    one = LocalizationTask(box_loss="giou", num_classes=2, box_weight=1.0).loss(out, target)
    three = LocalizationTask(box_loss="giou", num_classes=2, box_weight=3.0).loss(out, target)
    ce = torch.nn.functional.cross_entropy(out[:, 4:], torch.tensor([1]))
    assert float(three - one) == pytest.approx(2 * 0.25, rel=1e-5)
    assert float(one) == pytest.approx(float(ce) + 0.25, rel=1e-5)


# ----------------------------------------------------------------------------- VOC reading

def test_read_voc_and_clip():
    ann = read_voc_text(voc_xml("a", 60, 40, [(-5, 10, 70, 30)]))
    assert (ann.width, ann.height, ann.boxes) == (60, 40, ((-5.0, 10.0, 70.0, 30.0),))
    assert clip_box(ann.boxes[0], width=60, height=40) == (0.0, 10.0, 60.0, 30.0)
    with pytest.raises(DataError, match=r"no area inside the 60x40 image"):
        clip_box((70, 10, 90, 30), width=60, height=40)
    with pytest.raises(DataError, match="xmin < xmax"):
        clip_box((30, 10, 20, 30), width=60, height=40)



def read_voc_text(text: str):  # noqa: ANN201 - helper
    import tempfile

    p = Path(tempfile.mkdtemp()) / "x.xml"
    p.write_text(text)
    return read_voc(p)


@pytest.mark.parametrize("text, reason", [
    ("<annotation><object><bndbox><xmin>1</xmin>", "not well-formed XML"),
    ("<annotation><size><width>6</width><height>4</height></size></annotation>", "no <object><bndbox>"),
    ("<annotation><object><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>"
     "</annotation>", "<xmin> must be a number, got 'a'"),
    ("<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax></bndbox></object></annotation>",
     "missing <ymax>"),
    ("<doc/>", "expected a PASCAL VOC <annotation> root"),
])
def test_malformed_voc_names_the_file(tmp_path: Path, text: str, reason: str):
    p = tmp_path / "broken_7.xml"
    p.write_text(text)
    with pytest.raises(DataError) as err:
        read_voc(p)
    assert str(p) in str(err.value) and reason in str(err.value)


def test_dataset_boxes_skip_malformed_clip_outside_count_missing(tiny_pets: Path, caplog: pytest.LogCaptureFixture):
    xmls = tiny_pets / "annotations" / "xmls"
    (xmls / "Bengal_2.xml").write_text("<annotation><object>")  # malformed
    (xmls / "Bengal_3.xml").write_text(voc_xml("Bengal_3", 64, 48, [(-10, 5, 30, 60)]))  # outside: clipped
    (xmls / "beagle_4.xml").write_text(voc_xml("beagle_4", 64, 48, [(70, 5, 90, 20)]))  # entirely outside
    (xmls / "beagle_5.xml").write_text(voc_xml("beagle_5", 64, 48, [(5, 5, 10, 10), (1, 1, 41, 31)]))
    source = open_dataset(tiny_pets, quiet=True)
    with caplog.at_level("INFO", logger="transferlab"):
        boxes = load_source_boxes(source)
    assert len(boxes) == 30 - 3 - 2  # 3 without XML, 2 unusable
    assert boxes.without_box == 3
    skipped = dict(boxes.skipped)
    assert set(skipped) == {str(xmls / "Bengal_2.xml"), str(xmls / "beagle_4.xml")}
    assert "not well-formed" in skipped[str(xmls / "Bengal_2.xml")]
    assert "no area inside the 64x48 image" in skipped[str(xmls / "beagle_4.xml")]
    assert boxes.clipped == [str(xmls / "Bengal_3.xml")]
    i = source.index_of(str((tiny_pets / "images" / "Bengal_3.jpg").resolve()))
    assert np.allclose(boxes.box_of(i), [0.0, 5 / 48, 30 / 64, 1.0])
    j = source.index_of(str((tiny_pets / "images" / "beagle_5.jpg").resolve()))
    assert np.allclose(boxes.box_of(j), [1 / 64, 1 / 48, 41 / 64, 31 / 48])  # the largest of two boxes
    assert "3 without a box" in caplog.text and "2 XML skipped" in caplog.text
    assert "Bengal_2.xml" in caplog.text


def test_voc_size_disagreeing_with_the_image_is_skipped(tiny_pets: Path):
    xmls = tiny_pets / "annotations" / "xmls"
    (xmls / "Abyssinian_1.xml").write_text(voc_xml("Abyssinian_1", 640, 480, [(1, 1, 20, 20)]))
    boxes = load_source_boxes(open_dataset(tiny_pets, quiet=True))
    assert [Path(p).name for p, _ in boxes.skipped] == ["Abyssinian_1.xml"]
    assert "640x480 differs from the image 64x48" in boxes.skipped[0][1]


def test_real_pets_boxes(oxford_pets: Path):
    source = open_dataset(oxford_pets, quiet=True)
    boxes = load_source_boxes(source)
    assert (len(boxes), boxes.without_box, len(boxes.skipped)) == (296, 4, 0)
    assert boxes.boxes.min() >= 0 and boxes.boxes.max() <= 1
    assert np.all(boxes.boxes[:, 2] > boxes.boxes[:, 0]) and np.all(boxes.boxes[:, 3] > boxes.boxes[:, 1])
