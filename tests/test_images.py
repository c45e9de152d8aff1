import io
import os

import numpy as np
import pytest
from PIL import Image

from mstl.edge.core.images import ImageError, load_image, to_rgb


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


def _decode_growth_mb(tmp_path, data: bytes) -> float:
    """Peak memory a decode adds, in a fresh process (VmHWM after minus VmRSS before)."""
    import subprocess
    import sys
    f = tmp_path / "picture.png"
    f.write_bytes(data)
    code = ("import sys\n"
            "from mstl.edge.core.images import load_image\n"
            "from mstl.edge.core.machine import proc_status_mb\n"
            "before = proc_status_mb('VmRSS')\n"
            "load_image(sys.argv[1], 96)\n"
            "print(proc_status_mb('VmHWM') - before)\n")
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_sixteen_bit_pictures_and_slivers_decode_in_bounded_memory(tmp_path):
    """A 36-megapixel 16-bit PNG took ~900 MB to decode (float64 copies of the whole picture), a 2 x
    19,000,000 sliver ~450 MB (never reduced: its short side is tiny). Both are small files a hostile
    upload can be."""
    pictures = {"16-bit 6000x6000": Image.new("I;16", (6000, 6000), 3),
                "sliver 2x19000000": Image.new("L", (2, 19_000_000), 9)}
    for name, img in pictures.items():
        buf = io.BytesIO()
        img.save(buf, "PNG")
        grew = _decode_growth_mb(tmp_path, buf.getvalue())
        assert grew < 250, f"{name}: decoding took {grew:.0f} MB"
