"""Decode any image a user may have into a square uint8 RGB array - the one code path used by
training, export verification, the bench and the app (no TensorFlow here: an edge board has none).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm", ".pbm", ".pnm"}
)

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}

# The picture formats decoded, for training data and uploads alike: those IMAGE_SUFFIXES names. Pillow
# otherwise tries every plugin it has, and some decode while *opening*, before any size can be checked:
# an .ico whose header says 16x16 decodes its embedded 13000x13000 PNG inside Image.open (ICNS and CUR
# the same). Icons, Photoshop, EPS, FLI, ... are no camera's, scanner's or dataset's output, and Pillow
# picks a plugin by the bytes, not the name: refusing them here is the only check that runs before a
# decode. The formats kept hold several pictures at most as pages that are never decoded (TIFF IFDs,
# GIF/WebP/PNG frames, a phone's multi-picture JPEG, which opens as "JPEG"): only the first one is.
READ_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP", "PPM")
READ_FORMATS_TEXT = "JPEG, PNG, BMP, TIFF, GIF, WebP or PNM"

# Pillow only warns between MAX_IMAGE_PIXELS and twice that, and decodes: a bomb is an error here,
# also where Pillow checks inside a plugin (a TIFF tile, a GIF frame larger than its screen). The
# pixel cap (open_image) is checked explicitly too, so the refusal does not depend on this filter.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)

Source = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]


class NonFinitePixels(ValueError):
    """A float picture holding NaN or infinity: it has no grey levels to show, only a broken export."""


class ImageError(ValueError):
    """An image that cannot be used, with the file and a one-line reason; ``too_large`` when it was
    refused for its size (an app answers 413 to that, 400 to the rest)."""

    def __init__(self, path: str, reason: str, too_large: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.too_large = too_large


def _decode_error(label: str, exc: BaseException) -> ImageError:
    bomb = isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning))
    return ImageError(label, failure_reason(exc), too_large=bomb)


def failure_reason(exc: BaseException) -> str:
    """A one-line, user-facing reason for a Pillow decode failure."""
    msg = str(exc)
    if isinstance(exc, NonFinitePixels):
        return msg
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"refused as a decompression bomb ({msg})"
    if "truncated" in msg.lower():
        return "truncated image data (the file is incomplete; re-download or remove it)"
    return f"corrupt image data ({msg})"


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


MAX_SIDE = 65_535  # with a pixel cap (uploads): no camera, scanner or JPEG makes a longer side
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, scaling high bit depths explicitly (``convert`` would clip them)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in HIGH_BIT_MODES:
        return _high_bit_gray(img).convert("RGB")
    if mode == "P":
        img = _depalette(img)
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        # Composite on black: transparent regions of a scan carry no tissue.
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _high_bit_gray(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float picture as 8-bit grey, scaled explicitly. Row blocks of about a
    megapixel at a time: a float64 copy of a whole 36-megapixel 16-bit PNG was 290 MB, and the
    arithmetic made three of them."""
    mode = img.mode
    shift = 0.0
    if mode.startswith("I;16"):
        top = 65535.0
    else:
        lo, hi = (float(v) for v in img.getextrema())  # no copy of the picture
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # as numpy's min/max(initial=0) did
        if mode == "I":
            # 16-bit PNGs open as "I"; treat values above 8 bits as 16-bit data.
            top = 65535.0 if hi > 255 else 255.0
        else:
            shift = lo if lo < 0 else 0.0
            top = max(hi - lo, 1e-12) if hi > 255 or lo < 0 else 255.0
    w, h = img.size
    gray = np.empty((h, w), np.uint8)
    rows = max(1, (1 << 20) // max(1, w))
    for r in range(0, h, rows):
        part = np.asarray(img.crop((0, r, w, min(h, r + rows))), dtype=np.float64)
        _check_finite(part)
        if shift:
            part -= shift
        gray[r:r + rows] = np.clip(np.rint(part * (255.0 / top)), 0, 255)
    return Image.fromarray(gray)


def _check_finite(part: np.ndarray) -> None:
    if not np.isfinite(part).all():
        raise NonFinitePixels("non-finite pixel values (NaN or infinity) in a float picture: it holds no image "
                              "to classify; re-export it with real values")


def check_finite_pixels(img: Image.Image) -> None:
    """Raise NonFinitePixels when a float picture holds NaN or infinity (row blocks, no full copy).
    Pillow's getextrema skips a NaN that is not the first pixel, so every value is looked at."""
    if img.mode != "F":
        return
    w, h = img.size
    rows = max(1, (1 << 20) // max(1, w))
    for r in range(0, h, rows):
        _check_finite(np.asarray(img.crop((0, r, w, min(h, r + rows)))))


def pixel_cap(max_pixels: int | None) -> int | None:
    """The most pixels a decode may declare: ``max_pixels`` (uploads) or Pillow's limit (training data,
    89.5 megapixels unless changed), whichever is smaller - read per call, so a changed limit counts."""
    caps = [c for c in (max_pixels, Image.MAX_IMAGE_PIXELS) if c]
    return min(caps) if caps else None


def open_image(source: Source, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open (headers only, nothing decoded) and check the declared size against the pixel cap (see
    pixel_cap). Only READ_FORMATS are tried. An already opened picture is checked, not reopened.
    Raises ImageError with a reason."""
    label = _label(source, name)
    cap = pixel_cap(max_pixels)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        img = source if isinstance(source, Image.Image) else Image.open(source, formats=READ_FORMATS)
        if cap is not None and img.width * img.height > cap:
            raise ImageError(label, f"too many pixels ({img.width}x{img.height} > {cap:,}; refused before decoding): "
                                    "downscale it first", too_large=True)
        if max_pixels is not None and max(img.size) > MAX_SIDE:
            # Pillow keeps a pointer per row: a 2 x 20,000,000 sliver under the pixel cap costs 160 MB
            # of row pointers alone
            raise ImageError(label, f"too many pixels in one side ({img.width}x{img.height}; at most {MAX_SIDE:,} "
                                    "per side)", too_large=True)
        return img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(label, f"not an image mstl reads ({READ_FORMATS_TEXT}; icons, Photoshop, EPS, ... are "
                                "refused unread): convert it to PNG or JPEG") from None
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except DECODE_ERRORS as e:
        raise _decode_error(label, e) from None


def _label(source: Source, name: str | None) -> str:
    return name or (str(source) if isinstance(source, (str, os.PathLike)) else "<upload>")


def load_image(source: Source, size: int, method: str = "bilinear", name: str | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decode ``source`` and return a (size, size, 3) uint8 RGB array, stretched to a square."""
    if method not in _RESAMPLE:
        raise ValueError(f"unknown resize method {method!r}: choose one of {sorted(_RESAMPLE)}")
    img = open_image(source, name, max_pixels)
    label = _label(source, name)
    try:
        if img.format == "JPEG":
            # DCT-domain downscaling: a 12 MP photo decodes at a fraction of the cost. The result is
            # still at least 2x the target size, so the final resize does the real filtering.
            img.draft("RGB", (2 * size, 2 * size))
        img.load()
        img = _shrink(img, size)
        img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        if img.size != (size, size):
            img = img.resize((size, size), _RESAMPLE[method])
        arr = np.asarray(img, dtype=np.uint8)
    except DECODE_ERRORS as e:
        raise _decode_error(label, e) from None
    if arr.shape != (size, size, 3):
        raise ImageError(label, f"decoded to unexpected shape {arr.shape}")
    return arr


BIG_PICTURE = 4_000_000  # pixels; a sliver this large is reduced along its long side alone


def _shrink(img: "Image.Image", size: int) -> "Image.Image":
    """A picture many times the target size is first reduced by an integer factor (box filter), as JPEG
    draft decoding does in the DCT domain: colour conversion and the final resize then work on a small
    image, and a 40-megapixel PNG costs its decode, not five full-size copies. The factor comes from
    the short side; a large sliver (2 x 19,000,000) whose short side leaves nothing to reduce is
    reduced along its long side. Modes Pillow cannot reduce (16-bit, 1-bit, palette) are first made
    8-bit - only when a reduction follows, so that smaller pictures keep their exact path. The
    in-browser bench (static/device.js, pixels()) does the same."""
    fx, fy = img.width // (2 * size), img.height // (2 * size)
    if min(fx, fy) >= 2:
        fx = fy = min(fx, fy)
    elif max(fx, fy) >= 2 and img.width * img.height >= BIG_PICTURE:
        fx, fy = (fx, 1) if fx >= 2 else (1, fy)
    else:
        return img
    try:
        src = _reducible(img)
        small = src.reduce(fx) if fx == fy else src.reduce((fx, fy))
    except (ValueError, NotImplementedError):  # a mode neither reduce() nor _reducible takes: keep it whole
        return img
    small.info = img.info  # keeps the EXIF orientation for exif_transpose
    if hasattr(img, "getexif"):
        try:
            small.getexif().update(img.getexif())
        except Exception:
            pass
    return small


def _reducible(img: "Image.Image") -> "Image.Image":
    """The picture in a mode Pillow's reduce() takes (it refuses 16-bit, 1-bit and palette ones)."""
    if img.mode.startswith("I;16"):
        return _high_bit_gray(img)
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "P":
        return _depalette(img)
    return img


def _depalette(img: "Image.Image") -> "Image.Image":
    return img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")


def verify_image(path: str) -> str | None:
    """None when the file decodes completely, else the reason it does not."""
    try:
        img = open_image(path)
        img.load()
        check_finite_pixels(img)
        return None
    except ImageError as e:
        return e.reason
    except DECODE_ERRORS as e:
        return failure_reason(e)


def resize_array(arr: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """Resize an in-memory image (e.g. a MedMNIST array) the same way files are resized."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    img = Image.fromarray(a)
    img = to_rgb(img)
    if img.size != (size, size):
        img = img.resize((size, size), _RESAMPLE[method])
    return np.asarray(img, dtype=np.uint8)
