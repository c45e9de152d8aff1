"""The base networks mstl can put under a classifier: one entry each, so that a second base
(MobileNetV3, EfficientNet-Lite) is an entry here, not a hunt through stage 1, the caches and the CLI.
No TensorFlow at import: an entry's builder imports Keras when it is called."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Base:
    name: str
    n_layers: int  # Keras layers of the base without its top, index 0 = the input (freeze depths count these)
    min_size: int  # smallest input side its Keras builder accepts
    imagenet_scaling: str  # the input range its ImageNet weights were trained on ("imagenet" = [-1, 1])
    build: Callable  # (input_shape, alpha, weights, name) -> keras.Model, no top
    note: str = ""
    imagenet_alphas: tuple[float, ...] = ()  # widths with published ImageNet weights; () = any


def _mobilenet_v2(input_shape, alpha, weights, name):
    from .tf_env import keras
    return keras.applications.MobileNetV2(input_shape=input_shape, alpha=alpha, include_top=False,
                                          weights=weights, name=name)


BASES: dict[str, Base] = {
    "mobilenet_v2": Base("mobilenet_v2", 154, 32, "imagenet", _mobilenet_v2,
                         "the paper's network; 154 layers at every width (alpha)",
                         (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
}
DEFAULT_BASE = "mobilenet_v2"


def get_base(name: str) -> Base:
    try:
        return BASES[name]
    except KeyError:
        raise ValueError(f"unknown base network {name!r}; known: {', '.join(BASES)}") from None
