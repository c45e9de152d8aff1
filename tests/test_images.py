import io

import numpy as np
import pytest
from PIL import Image

from mstl.data.images import ImageError, load_image, to_rgb


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_grayscale_becomes_three_equal_channels():
    arr = load_image(_png(Image.new("L", (40, 30), 77)), 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert (arr == 77).all()


def test_sixteen_bit_is_scaled_not_clipped_to_white():
    a = np.full((20, 20), 32768, dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I")
    arr = load_image(_png(img), 16)
    assert 120 <= arr.mean() <= 135  # mid-grey, not 255


def test_rgba_composited_on_black_and_palette_converted():
    rgba = Image.new("RGBA", (10, 10), (200, 100, 50, 0))
    assert (load_image(_png(rgba), 8) == 0).all()
    pal = Image.new("RGB", (10, 10), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(load_image(_png(pal), 8)[0, 0]) == (10, 200, 30)


def test_cmyk_converts():
    img = Image.new("CMYK", (10, 10), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    assert load_image(buf.getvalue(), 8).mean() > 240


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    up = load_image(buf.getvalue(), 20)
    # after rotating 90 degrees clockwise the white half is on top
    assert up[:8].mean() > 200 and up[12:].mean() < 50


def test_truncated_jpeg_names_file_and_reason(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpeg"
    p.write_bytes(buf.getvalue()[:600])
    with pytest.raises(ImageError) as e:
        load_image(p, 32)
    assert "cut.jpeg" in str(e.value) and "truncated" in e.value.reason


def test_not_an_image(tmp_path):
    p = tmp_path / "x.jpeg"
    p.write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(p, 32)


def test_pixel_limit():
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(_png(Image.new("L", (100, 100))), 8, max_pixels=5000)


def test_to_rgb_float_mode():
    img = Image.fromarray(np.linspace(0, 1000, 100, dtype=np.float32).reshape(10, 10))
    out = np.asarray(to_rgb(img))
    assert out.min() == 0 and out.max() == 255


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png(Image.new("L", (100, 100))), 8)
