"""MobileNetV2 classifiers: base with ImageNet / local / no weights, freezing, heads.

Every classifier takes raw pixel values 0..255 (float32) and carries its own input scaling as its
first layer, so exported models and apps need no knowledge of the training scaling.
Layout: image -> scaling -> base (MobileNetV2, no top) -> pool -> dropout -> head (softmax).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .bases import DEFAULT_BASE, get_base
from .config import ModelConfig
from .tf_env import keras

WEIGHTS_ENV = "MSTL_WEIGHTS"
DEAD_CHANNEL_VARIANCE = 1e-3
BASE_NAME = "base"
POOL_NAME = "pool"


class WeightsError(RuntimeError):
    pass


def scaling_params(scaling: str) -> tuple[float, float]:
    """(scale, offset) taking raw 0..255 pixels to the model's input range."""
    if scaling == "imagenet":
        return 1 / 127.5, -1.0
    if scaling == "unit":
        return 1 / 255.0, 0.0
    raise ValueError(f"unknown scaling {scaling!r}: choose imagenet ([-1, 1]) or unit ([0, 1])")


def describe_weights(weights: str) -> str:
    if weights == "none":
        return "none (random initialisation)"
    if weights == "imagenet":
        return "imagenet (Keras)"
    return f"local file {weights}"


def resolve_weights(weights: str) -> str | None:
    """Check the weights option before anything is built; returns what Keras takes."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; give an existing .h5 file, 'imagenet' or 'none'")
    if not path.name.endswith(".h5"):
        raise WeightsError(
            f"weights file {path}: Keras reads MobileNetV2 weights from '.weights.h5' (Keras 3) or Keras' own "
            "'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_*_no_top.h5' files; rename or convert it"
        )
    return str(path)


def build_base(image_size: int, alpha: float, weights: str, base: str = DEFAULT_BASE) -> "keras.Model":
    w = resolve_weights(weights)
    shape = (image_size, image_size, 3)
    entry = get_base(base)
    try:
        return entry.build(shape, alpha, w, BASE_NAME)
    except Exception as e:  # Keras raises bare Exception for download failures
        msg = str(e)
        if w == "imagenet" and ("URL fetch failure" in msg or "Name or service" in msg or "urlopen" in msg):
            raise WeightsError(
                "cannot download the ImageNet weights (no network?). Give a local weights file instead: "
                f"--weights PATH/mobilenet_v2_1.0_imagenet_no_top.weights.h5 (or set {WEIGHTS_ENV}), "
                "or --weights none for random weights (results then mean nothing)"
            ) from None
        if w not in (None, "imagenet"):
            raise WeightsError(
                f"weights file {w} does not fit {entry.name}(alpha={alpha}, no top): {msg.splitlines()[0]}"
            ) from None
        raise


def calibrate_batchnorm(base: "keras.Model", x) -> None:
    """Set every BatchNorm's moving statistics from one batch of (scaled) images.

    Only for random weights: with the initial statistics (mean 0, variance 1) the activations of a
    random MobileNetV2 vanish (pooled features ~1e-12), so nothing downstream can learn.
    """
    bns = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
    saved = [l.momentum for l in bns]
    for l in bns:
        l.momentum = 0.0
    base(x, training=True)
    for l, m in zip(bns, saved):
        l.momentum = m
        # Channels that are (nearly) constant on the batch would be scaled up ~30x: harmless in float,
        # but they multiply int8 rounding noise just as much. Leave them unscaled.
        var = l.moving_variance.numpy()
        l.moving_variance.assign(np.where(var < DEAD_CHANNEL_VARIANCE, 1.0, var).astype(var.dtype))


def build_classifier(cfg: ModelConfig, image_size: int, n_classes: int, scaling: str,
                     calibration_images=None) -> "keras.Model":
    """``calibration_images`` (raw 0..255 pixels) re-estimate BatchNorm statistics when weights are random."""
    base = build_base(image_size, cfg.alpha, cfg.weights, cfg.base)
    if cfg.weights == "none" and calibration_images is not None:
        scale, offset = scaling_params(scaling)
        calibrate_batchnorm(base, calibration_images * scale + offset)
    if cfg.weights == "none" and cfg.bn_mode == "train":
        # Default momentum (0.99/0.999) leaves inference statistics useless after a short run from scratch.
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    scale, offset = scaling_params(scaling)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(scale, offset, name="scaling")(inputs)
    # training=False keeps BatchNorm in inference mode even for unfrozen layers (Keras fine-tuning guide).
    x = base(x, training=False) if cfg.bn_mode == "inference" else base(x)
    x = keras.layers.GlobalAveragePooling2D(name=POOL_NAME)(x)
    return _attach_head(inputs, x, n_classes, cfg.dropout, "head")


def _attach_head(inputs, features, n_classes: int, dropout: float, name: str) -> "keras.Model":
    x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(features) if dropout > 0 else features
    out = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name=name)(x)
    return keras.Model(inputs, out, name="classifier")


def base_of(model: "keras.Model") -> "keras.Model":
    return model.get_layer(BASE_NAME)


def freeze(model: "keras.Model", n_frozen: int) -> None:
    """Freeze the first ``n_frozen`` layers of the base (Keras indexing: layer 0 is the input)."""
    base = base_of(model)
    n_layers = len(base.layers)
    if not 0 <= n_frozen <= n_layers:
        raise ValueError(f"n_frozen must be in [0, {n_layers}], got {n_frozen}")
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= n_frozen


def with_new_head(model: "keras.Model", n_classes: int, dropout: float = 0.0) -> "keras.Model":
    """Drop the head, freeze everything else, attach a new trainable softmax head (stage 2)."""
    features = model.get_layer(POOL_NAME).output
    for layer in model.layers:
        layer.trainable = False
    return _attach_head(model.inputs, features, n_classes, dropout, "target_head")


def compile_for_training(model: "keras.Model", learning_rate: float, steps_per_execution: int = 1) -> None:
    """``steps_per_execution`` > 1 runs several batches per call: the same math with less per-step
    overhead, which dominates when little of the network trains."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)


def load_classifier(path: str | os.PathLike) -> "keras.Model":
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file {p} not found")
    try:
        return keras.models.load_model(p, compile=False)
    except Exception as e:
        raise ValueError(f"{p}: cannot be loaded as a Keras model ({str(e).splitlines()[0]})") from None
