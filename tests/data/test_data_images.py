"""load_image: every awkward format arrives as upright 8-bit RGB, broken files raise ImageDecodeError."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from data_helpers import (
    noise,
    png_with_size,
    save_cmyk_jpeg,
    save_exif_rotated,
    save_gif,
    save_jpeg,
    save_png16,
    save_rgba_png,
    truncated_jpeg_bytes,
    upright_red_over_blue,
)
from PIL import Image

from transferlab.data import ImageDecodeError, load_image
from transferlab.data.images import to_rgb
from transferlab.errors import DataError


def px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return img.getpixel(xy)  # type: ignore[return-value]


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = save_exif_rotated(tmp_path / "r.jpg", upright_red_over_blue((40, 64)), orientation)
    raw = Image.open(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 64)
    if orientation != 3:
        assert raw.size == (64, 40)  # stored sideways
    top, bottom = px(img, (20, 8)), px(img, (20, 56))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    img = load_image(save_cmyk_jpeg(tmp_path / "c.jpg"))
    r, g, b = px(img, (10, 10))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    img = load_image(save_png16(tmp_path / "d.png"))
    assert img.mode == "RGB"
    assert px(img, (2, 2)) == (255, 255, 255)
    assert px(img, (20, 2)) == (128, 128, 128)


def test_rgba_is_composited_on_white(tmp_path):
    img = load_image(save_rgba_png(tmp_path / "a.png"))
    assert px(img, (2, 2)) == (255, 0, 0)
    assert px(img, (20, 2)) == (255, 255, 255)


@pytest.mark.parametrize("name", ["g.gif", "gif_named.jpg"])
def test_gif_gives_first_frame(tmp_path, name):
    img = load_image(save_gif(tmp_path / name))
    r, g, b = px(img, (5, 5))
    assert img.mode == "RGB" and g > 200 and b < 60


@pytest.mark.parametrize("mode", ["L", "1", "P", "LA", "I;16"])
def test_other_modes_convert(mode):
    base = Image.new("RGB", (4, 4), (255, 255, 255))
    im = base.convert(mode) if mode != "I;16" else Image.fromarray(np.full((4, 4), 65535, np.uint16))
    out = to_rgb(im)
    assert out.mode == "RGB" and px(out, (0, 0)) == (255, 255, 255)


def test_palette_transparency_is_white():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0] * 256)
    im.info["transparency"] = 0
    assert px(to_rgb(im), (1, 1)) == (255, 255, 255)


def test_gray_colour_key_transparency_is_white():
    im = Image.new("L", (4, 4), 0)
    im.info["transparency"] = 0
    assert px(to_rgb(im), (1, 1)) == (255, 255, 255)


def test_32bit_integer_outside_16bit_range_is_refused():
    im = Image.fromarray(np.full((4, 4), 70000, np.int32))
    assert im.mode == "I"
    with pytest.raises(ValueError, match="0..65535"):
        to_rgb(im)


def test_draft_decodes_large_jpeg_at_reduced_scale(tmp_path):
    path = save_jpeg(tmp_path / "big.jpg", noise((800, 600)))
    assert load_image(path).size == (800, 600)
    small = load_image(path, draft_size=100)
    assert small.size == (200, 150)  # 1/4 scale: the largest reduction keeping the short side >= 100
    assert load_image(path, draft_size=150).size == (200, 150)
    assert load_image(path, draft_size=151).size == (400, 300)


def test_draft_is_ignored_for_non_jpeg(tmp_path):
    path = tmp_path / "big.png"
    noise((400, 300)).save(path)
    assert load_image(path, draft_size=50).size == (400, 300)


def test_truncated_jpeg_raises(tmp_path):
    path = tmp_path / "t.jpg"
    path.write_bytes(truncated_jpeg_bytes())
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        load_image(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(path, draft_size=16)


def test_text_file_named_jpg_raises(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_text("hello")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_image(tmp_path / "nope.jpg")


def test_decompression_bomb_warning_level_is_an_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_size(10_000, 10_000))  # 1e8 px: above MAX_IMAGE_PIXELS, below 2x
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(ImageDecodeError, match="decompression bomb"):
            load_image(path)


def test_decompression_bomb_error_level(tmp_path):
    path = tmp_path / "bomb2.png"
    path.write_bytes(png_with_size(20_000, 20_000))
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(path)


def test_decode_error_is_a_data_error_and_pickles():
    err = ImageDecodeError("/x/y.jpg", "broken")
    assert isinstance(err, DataError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, str(back)) == ("/x/y.jpg", "broken", "/x/y.jpg: broken")


def test_decode_error_rebuilt_from_a_worker_traceback():
    text = (
        "Caught ImageDecodeError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "worker.py", line 1, in _worker_loop\n'
        "transferlab.data.images.ImageDecodeError: /d/x.jpg: OSError: image file is truncated\n"
    )
    err = ImageDecodeError(text)
    assert (err.path, err.reason) == ("/d/x.jpg", "OSError: image file is truncated")


def test_bad_draft_size():
    with pytest.raises(ValueError, match="draft_size"):
        load_image("x.jpg", draft_size=0)
