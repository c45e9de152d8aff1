"""Run configuration: frozen dataclasses, named presets, and the config identity.

The resolved config is written into every run dir (``config.json``) and is enough to rerun it.
Its *identity* (``config_hash``) leaves out paths, timestamps and knobs that do not change results,
so that a run dir can be resumed from another working directory or after the data moved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

PAPER_SIZES = (10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000, 80_000)
SCALINGS = ("imagenet", "unit")
RESIZE_METHODS = ("bilinear", "bicubic", "nearest", "area", "lanczos")
BN_MODES = ("inference", "train")
SWEEP_MODES = ("restart", "continue")


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 150
    resize_method: str = "bilinear"
    # "imagenet" = [-1, 1], what MobileNetV2's ImageNet weights were trained on; "unit" = the paper's [0, 1].
    scaling: str = "imagenet"
    patient_split: bool = True


@dataclass(frozen=True)
class ModelConfig:
    alpha: float = 1.0
    # "imagenet" (Keras download, cached), "none", or a path to a local weights file.
    weights: str = "imagenet"
    bn_mode: str = "inference"
    dropout: float = 0.2


@dataclass(frozen=True)
class Stage1Config:
    sizes: tuple[int, ...] = PAPER_SIZES
    val_fraction: float = 0.1
    start_frozen: int = 150
    unfreeze_step: int = 5
    min_frozen: int = 0
    patience: int = 3
    mode: str = "restart"
    include_head_only: bool = False
    epochs: int = 10
    early_stopping_patience: int = 2
    learning_rate: float = 1e-4
    batch_size: int = 32


@dataclass(frozen=True)
class Stage2Config:
    target_size: int = 2800
    test_fraction: float = 0.15
    val_fraction: float = 0.15
    positive_class: str | None = None
    batch_size: int = 8
    max_epochs: int = 25
    stop_train_accuracy: float = 0.85
    learning_rate: float = 1e-3
    control: bool = True


@dataclass(frozen=True)
class RunConfig:
    preset: str = "paper"
    seeds: tuple[int, ...] = (1,)
    data_seed: int = 0  # subsets and splits; fixed across training seeds so that only training varies
    stage1_seeds: int = 1  # how many of `seeds` also repeat stage 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    # Dataset locations; None = the embedded demo datasets at the preset's scale.
    bridge: str | None = None
    target: str | None = None
    demo_bridge_per_class: int = 0
    demo_target_per_class: int = 0
    mixed_precision: bool = False
    cache: bool = True  # False: the plain path, no activation or embedding caches (for comparison)
    prefix_cache: str = "float32"  # stage-1 frozen-prefix activations: float32 (exact) | float16 (half the memory)
    cache_budget_gb: float = 8.0

    def validate(self) -> "RunConfig":
        problems = []
        if self.data.scaling not in SCALINGS:
            problems.append(f"scaling must be one of {SCALINGS}, got {self.data.scaling!r}")
        if self.data.resize_method not in RESIZE_METHODS:
            problems.append(f"resize method must be one of {RESIZE_METHODS}, got {self.data.resize_method!r}")
        if self.data.image_size < 32:
            problems.append(f"image size must be at least 32 (MobileNetV2's minimum), got {self.data.image_size}")
        if self.model.bn_mode not in BN_MODES:
            problems.append(f"bn mode must be one of {BN_MODES}, got {self.model.bn_mode!r}")
        if self.stage1.mode not in SWEEP_MODES:
            problems.append(f"sweep mode must be one of {SWEEP_MODES}, got {self.stage1.mode!r}")
        if not self.stage1.sizes or any(s <= 0 for s in self.stage1.sizes):
            problems.append(f"stage-1 sizes must be positive, got {self.stage1.sizes}")
        if self.stage1.unfreeze_step <= 0:
            problems.append("unfreeze step must be positive")
        if not 0 <= self.stage1.min_frozen <= self.stage1.start_frozen:
            problems.append("need 0 <= min_frozen <= start_frozen")
        for name in ("val_fraction",):
            v = getattr(self.stage1, name)
            if not 0 < v < 1:
                problems.append(f"stage-1 {name} must be in (0, 1), got {v}")
        for name in ("test_fraction", "val_fraction"):
            v = getattr(self.stage2, name)
            if not 0 < v < 1:
                problems.append(f"stage-2 {name} must be in (0, 1), got {v}")
        if self.prefix_cache not in ("float32", "float16"):
            problems.append(f"prefix cache must be float32 or float16, got {self.prefix_cache!r}")
        if not self.seeds:
            problems.append("at least one seed is needed")
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))
        return self

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        sub = {"data": DataConfig, "model": ModelConfig, "stage1": Stage1Config, "stage2": Stage2Config}
        kwargs = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name in sub:
                v = _from_sub(sub[f.name], v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[f.name] = v
        return cls(**kwargs)

    def identity(self) -> dict[str, Any]:
        """What decides results: everything but locations and pure bookkeeping."""
        d = self.to_dict()
        for k in ("bridge", "target", "preset", "cache", "cache_budget_gb"):
            d.pop(k, None)
        # float32 caching reproduces the plain path; only float16 storage can change results
        d["prefix_cache"] = d["prefix_cache"] == "float16"
        w = d["model"]["weights"]
        if w not in ("imagenet", "none"):
            d["model"]["weights"] = "file:" + _file_digest(w)
        return d

    def config_hash(self, data_fingerprint: str = "") -> str:
        blob = json.dumps({"config": self.identity(), "data": data_fingerprint}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _from_sub(cls, d):
    kw = {}
    for f in fields(cls):
        if f.name in d:
            v = d[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)


def _file_digest(path: str) -> str:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:16]
    except OSError:
        return "missing:" + path.rsplit("/", 1)[-1]


def preset(name: str) -> RunConfig:
    """Named presets. ``paper`` follows PROTOCOL.md; ``demo`` fits 2 CPU cores; ``smoke`` runs in seconds."""
    if name == "paper":
        return RunConfig(preset="paper")
    if name == "demo":
        return RunConfig(
            preset="demo",
            data=DataConfig(image_size=96),
            model=ModelConfig(weights="imagenet"),
            stage1=Stage1Config(
                sizes=(150, 300, 600), start_frozen=140, unfreeze_step=10, min_frozen=100, patience=2,
                epochs=3, early_stopping_patience=1, learning_rate=2e-4, batch_size=32, val_fraction=0.2,
            ),
            # The synthetic target is easy: at the paper's 0.85 the head stops after 2 epochs with soft
            # outputs that int8 rounding flips (97% agreement measured); 0.99 trains it to a settled state.
            stage2=Stage2Config(target_size=480, batch_size=8, max_epochs=25, learning_rate=1e-3,
                                stop_train_accuracy=0.99),
            demo_bridge_per_class=150,
            demo_target_per_class=160,
        )
    if name == "smoke":
        return RunConfig(
            preset="smoke",
            data=DataConfig(image_size=32),
            model=ModelConfig(alpha=0.35, weights="none", dropout=0.0),
            stage1=Stage1Config(
                sizes=(24, 48), start_frozen=140, unfreeze_step=20, min_frozen=120, patience=1,
                epochs=1, early_stopping_patience=1, learning_rate=1e-3, batch_size=16, val_fraction=0.25,
            ),
            stage2=Stage2Config(target_size=60, batch_size=8, max_epochs=3, learning_rate=1e-3),
            demo_bridge_per_class=16,
            demo_target_per_class=40,
        )
    raise ValueError(f"unknown preset {name!r}: choose paper, demo or smoke")


PRESETS = ("paper", "demo", "smoke")


def override(cfg: RunConfig, **changes: Any) -> RunConfig:
    """Apply dotted overrides like ``{"stage1.sizes": (10, 20)}``; None values are ignored."""
    groups: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if "." in key:
            g, k = key.split(".", 1)
            groups.setdefault(g, {})[k] = value
        else:
            top[key] = value
    for g, kv in groups.items():
        top[g] = replace(getattr(cfg, g), **kv)
    return replace(cfg, **top).validate()
