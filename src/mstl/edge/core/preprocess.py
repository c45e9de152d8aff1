"""The one preprocessing spec of an exported model: how a file becomes the model's input.

Export writes it into every card (``card["input"]``); export verification, bench accuracy, bench
end-to-end timing and the app all decode through it, so a model trained with a bicubic resize is
also verified, benchmarked and served with one. No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .filelist import load_sources
from .images import Source, load_image

DEFAULT_RESIZE = "bilinear"


@dataclass(frozen=True)
class Preprocess:
    size: int
    resize: str = DEFAULT_RESIZE
    exif: bool = True  # orientation from EXIF applied before resizing (always, in load_image)
    pixel_range: tuple[float, float] = (0.0, 255.0)  # raw pixels; scaling lives inside the graph

    @classmethod
    def from_card(cls, card: dict | None, size: int | None = None) -> "Preprocess":
        inp = (card or {}).get("input") or {}
        shape = inp.get("shape")
        resize = (inp.get("resize") or {}).get("method", DEFAULT_RESIZE)
        chosen = size or (int(shape[1]) if shape else None)
        if chosen is None:
            raise ValueError("no input size: the card has no input shape and none was given")
        return cls(int(chosen), resize)

    def to_card(self) -> dict[str, Any]:
        return {
            "shape": [1, self.size, self.size, 3], "layout": "NHWC, RGB",
            "range": [self.pixel_range[0], self.pixel_range[1]],
            "meaning": "raw pixel values; scaling to the network's range is inside the graph",
            "resize": {"method": self.resize, "mode": "stretch to square (aspect ratio not kept)",
                       "library": "Pillow (mstl.edge.core.images.load_image)"},
            "orientation": "apply EXIF orientation before resizing",
        }

    def load(self, source: Source, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
        return load_image(source, self.size, self.resize, name=name, max_pixels=max_pixels)

    def load_many(self, sources: list[str]) -> np.ndarray:
        return load_sources(sources, self.size, self.resize)
