"""Decode any image a user may have into a square uint8 RGB array - the one code path used by
training, export verification, the bench and the app (no TensorFlow here: an edge board has none).
"""

from __future__ import annotations

import io
import os
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

Source = Union[str, os.PathLike, bytes, BinaryIO]


class ImageError(ValueError):
    """An image that cannot be used, with the file and a one-line reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """A one-line, user-facing reason for a Pillow decode failure."""
    msg = str(exc)
    if isinstance(exc, Image.DecompressionBombError):
        return f"refused as a decompression bomb ({msg})"
    if "truncated" in msg.lower():
        return "truncated image data (the file is incomplete; re-download or remove it)"
    return f"corrupt image data ({msg})"


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, scaling high bit depths explicitly (``convert`` would clip them)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":
            # 16-bit PNGs open as "I"; treat values above 8 bits as 16-bit data.
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        else:
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
            arr = arr - lo if lo < 0 else arr
            top = max(hi - min(lo, 0.0), 1e-12) if hi > 255 or lo < 0 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        # Composite on black: transparent regions of a scan carry no tissue.
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def open_image(source: Source, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open, fully decode and turn upright (EXIF orientation). Raises ImageError with a reason."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<upload>")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        img = Image.open(source)
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageError(label, f"too many pixels ({img.width}x{img.height} > {max_pixels:,})")
        return img
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(label, "not an image Pillow can read") from None
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(label, failure_reason(e)) from None


def load_image(source: Source, size: int, method: str = "bilinear", name: str | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decode ``source`` and return a (size, size, 3) uint8 RGB array, stretched to a square."""
    if method not in _RESAMPLE:
        raise ValueError(f"unknown resize method {method!r}: choose one of {sorted(_RESAMPLE)}")
    img = open_image(source, name, max_pixels)
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<upload>")
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
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(label, failure_reason(e)) from None
    if arr.shape != (size, size, 3):
        raise ImageError(label, f"decoded to unexpected shape {arr.shape}")
    return arr


def _shrink(img: "Image.Image", size: int) -> "Image.Image":
    """A picture many times the target size is first reduced by an integer factor (box filter) in its
    own mode, as JPEG draft decoding does in the DCT domain: colour conversion and the final resize
    then work on a small image, and a 40-megapixel PNG costs its decode, not five full-size copies."""
    factor = min(img.size) // (2 * size)
    if factor < 2:
        return img
    try:
        small = img.reduce(factor)
    except (ValueError, NotImplementedError):  # modes reduce() does not take (e.g. palette): keep it whole
        return img
    small.info = img.info  # keeps the EXIF orientation for exif_transpose
    if hasattr(img, "getexif"):
        try:
            small.getexif().update(img.getexif())
        except Exception:
            pass
    return small


def verify_image(path: str) -> str | None:
    """None when the file decodes completely, else the reason it does not."""
    try:
        open_image(path).load()
        return None
    except ImageError as e:
        return e.reason
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
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
