"""Every image mode decodes to correctly oriented 8-bit RGB with the expected pixels."""

import numpy as np
import pytest
from PIL import Image

from keras_hyperiqa.data.images import ensure_min_side, load_rgb, resize_hw
from keras_hyperiqa.errors import UserError


def test_rgb_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = load_rgb(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3)
    np.testing.assert_array_equal(out, a)


def test_grayscale(tmp_path):
    g = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png")
    np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, axis=-1))


def test_palette_with_transparent_index_goes_over_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)  # index 0 red, index 1 black
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png", transparency=1)  # index 1 fully transparent
    out = load_rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(out, [[[255, 0, 0], [255, 255, 255]]])


def test_palette_opaque(tmp_path):
    im = Image.new("P", (1, 1))
    im.putpalette([10, 20, 30] + [0] * 765)
    im.save(tmp_path / "p.gif")
    np.testing.assert_array_equal(load_rgb(tmp_path / "p.gif"), [[[10, 20, 30]]])


def test_rgba_composited_on_white_not_alpha_dropped(tmp_path):
    a = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [100, 50, 200, 128]]], dtype=np.uint8)
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    # fully transparent black -> white; opaque black stays; half alpha blends with white
    expected = [[[255, 255, 255], [0, 0, 0], [177, 152, 227]]]
    np.testing.assert_array_equal(out, expected)


def test_la_over_white(tmp_path):
    a = np.array([[[0, 0], [40, 255]]], dtype=np.uint8)
    Image.fromarray(a, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "la.png"), [[[255] * 3, [40] * 3]])


def test_cmyk(tmp_path):
    im = Image.new("CMYK", (4, 1))
    for x, v in enumerate([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 255, 0)]):
        im.putpixel((x, 0), v)
    im.save(tmp_path / "c.tif")
    out = load_rgb(tmp_path / "c.tif")
    np.testing.assert_array_equal(out, [[[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 0, 0]]])


def test_16_bit_grayscale_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    out = load_rgb(tmp_path / "d.png")
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 128, 255]])
    assert (out[..., 0] == out[..., 2]).all()


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((2, 3, 3), dtype=np.uint8)
    a[0, 0] = (255, 0, 0)  # red at top-left of the stored pixels
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.png", exif=exif)
    out = load_rgb(tmp_path / "r.png")
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out[0, 1], (255, 0, 0))  # now at top-right
    assert out.sum() == 255


def test_unreadable_files_are_user_errors(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"bad.jpg: cannot read image \(not an image file PIL can identify\)$"):
        load_rgb(tmp_path / "bad.jpg")
    with pytest.raises(UserError, match=r"gone.png: cannot read image \(file not found\)$"):
        load_rgb(tmp_path / "gone.png")
    good = tmp_path / "t.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:300])
    with pytest.raises(UserError, match=r"trunc.png: cannot read image \("):
        load_rgb(tmp_path / "trunc.png")


def test_resize_hw_matches_pil_bilinear():
    a = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = resize_hw(a, (16, 12))
    assert out.shape == (16, 12, 3)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(a).resize((12, 16), Image.BILINEAR)))


def test_ensure_min_side_keeps_aspect():
    a = np.zeros((100, 300, 3), dtype=np.uint8)
    assert ensure_min_side(a, 224).shape == (224, 672, 3)
    b = np.zeros((500, 200, 3), dtype=np.uint8)
    assert ensure_min_side(b, 224).shape == (560, 224, 3)
    c = np.zeros((224, 230, 3), dtype=np.uint8)
    assert ensure_min_side(c, 224) is c
