"""The one table of export formats. It drives export, argument checks, verification, the bench and
the parametrized tests. Importable without TensorFlow: builders are named, and imported only when used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

IO_TYPES = ("uint8", "int8", "float")
CPU_KINDS = ("any", "exact-u8s8", "saturating-u8s8")


@dataclass(frozen=True)
class Recipe:
    """One way to build a format. ``prepared``: build from the int8-ready copy of the model (kernels
    rounded to the int8 grid, channel ranges evened out, biases corrected: export/bias_correction.py)."""
    name: str
    options: tuple[tuple[str, object], ...] = ()  # builder keyword arguments, as pairs (hashable)
    prepared: bool = False
    refine: bool = False  # a second correction measured on the built int8 model itself (LiteRT or ONNX Runtime)
    # The last rung: the best full-int8 rung above it, with the fewest layers kept in float that the
    # gate needs (ranked by measured sensitivity: export/mixed.py).
    mixed: bool = False
    note: str = ""
    # The CPUs the artifact is built for: "any"; "exact-u8s8", where ONNX Runtime's u8s8 products are
    # exact (VNNI, or not x86); "saturating-u8s8", x86 with AVX2 and no VNNI, where u8s8 byte pairs are
    # summed in int16 with saturation (VPMADDUBSW) unless weights keep to 7 bits.
    cpus: str = "any"

    def __post_init__(self):
        if self.cpus not in CPU_KINDS:
            raise ValueError(f"recipe {self.name!r}: cpus must be one of {CPU_KINDS}, got {self.cpus!r}")

    @property
    def kwargs(self) -> dict:
        return dict(self.options)


DEFAULT_RECIPE = Recipe("default")
ACTIVATION_TYPES = ("uint8", "int8")
ROUNDINGS = ("nearest", "gptq")


@dataclass(frozen=True)
class BuildOptions:
    """Everything a builder may be told, typed: a misspelt recipe option fails here, naming itself,
    instead of vanishing into a builder's keyword arguments."""
    calibration: Any = None  # raw 0..255 calibration images, (N, S, S, 3), for the int8 forms
    io: str = "uint8"  # int8 TFLite input/output type
    activations: str = "uint8"  # ONNX int8 activation type
    reduce_range: bool = False  # ONNX int8: 7-bit weights, so that u8s8 int16 pair sums cannot saturate
    float_nodes: tuple[str, ...] = ()  # int8 forms: these layers (node / tensor names) stay in float
    rounding: str = "nearest"  # prepared recipes: the int8-ready kernels rounded to nearest, or by GPTQ

    def __post_init__(self):
        if self.io not in IO_TYPES:
            raise ValueError(f"io must be one of {IO_TYPES}, got {self.io!r}")
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, got {self.activations!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")

    def with_recipe(self, recipe: Recipe) -> "BuildOptions":
        try:
            return replace(self, **recipe.kwargs)
        except TypeError:
            known = [f.name for f in fields(self)]
            bad = [k for k in recipe.kwargs if k not in known]
            raise ValueError(f"recipe {recipe.name!r}: unknown build option(s) {bad}; known: {known}") from None

    def needs_calibration(self) -> None:
        if self.calibration is None or len(self.calibration) == 0:
            raise ValueError("this form needs calibration images (BuildOptions.calibration)")


@dataclass(frozen=True)
class Format:
    key: str  # "tflite-int8"
    format: str  # "tflite" | "onnx"
    precision: str  # "fp32" | "fp16" | "dynamic" | "int8"
    flag: str | None  # the mstl-export flag that adds it; None = always exported (the reference)
    options: tuple[str, ...]  # export options it accepts
    builder: str  # "module:function", imported lazily (needs TensorFlow)
    runtime: str  # "litert" | "onnxruntime"
    min_agreement: float  # verification threshold on top-1 agreement with the Keras model
    note: str = ""
    # Tried in order, fastest first, until one passes verification; () = the default build only.
    recipes: tuple[Recipe, ...] = ()

    @property
    def ladder(self) -> tuple[Recipe, ...]:
        return self.recipes or (DEFAULT_RECIPE,)

    def ladder_for(self, exact_u8s8: bool) -> list[tuple[Recipe, str | None]]:
        """Every recipe in order, each with the reason it is skipped for the CPUs the export is built for
        (None: tried)."""
        out = []
        for r in self.ladder:
            skip = None
            if r.mixed:
                pass  # builds on whichever full-int8 rung was tried and measured best
            elif r.cpus == "exact-u8s8" and not exact_u8s8:
                skip = ("8-bit weights: u8s8 int16 pair sums can saturate on x86 with AVX2 and no VNNI (s8 "
                        "activations run through the same kernels there), which this export is built for")
            elif r.cpus == "saturating-u8s8" and exact_u8s8:
                skip = "7-bit weights are only needed where u8s8 can saturate (x86 without VNNI); this CPU has exact u8s8"
            out.append((r, skip))
        return out

    @property
    def suffix(self) -> str:
        return f".{self.format}"

    def filename(self, stem: str) -> str:
        return f"{stem}-{self.precision}{self.suffix}"

    def rejected_filename(self, stem: str) -> str:
        """Where an artifact that failed verification goes: never the name apps and the bench pick."""
        return f"{stem}-{self.precision}-rejected{self.suffix}"

    def load_module(self):
        return importlib.import_module(self.builder.split(":")[0])

    def load_builder(self) -> Callable:
        return getattr(self.load_module(), self.builder.split(":")[1])


U8 = (("activations", "uint8"),)
MIXED = Recipe("mixed", mixed=True, note="the best full-int8 rung above, with the fewest outlier layers and noisiest "
               "activation-tensor regions kept in float that the gate needs (at least MIN_INT8_MAC_SHARE of "
               "multiply-accumulates in int8)")
MIN_INT8_MAC_SHARE = 0.8  # below this an artifact is not called int8
U8_R7 = (("activations", "uint8"), ("reduce_range", True))

FORMATS: tuple[Format, ...] = (
    Format("tflite-fp32", "tflite", "fp32", None, (), "mstl.export.tflite:build_fp32", "litert", 0.999),
    Format("tflite-fp16", "tflite", "fp16", "fp16", (), "mstl.export.tflite:build_fp16", "litert", 0.999,
           "float16 weights, float32 compute on CPU"),
    Format("tflite-dynamic", "tflite", "dynamic", "dynamic", (), "mstl.export.tflite:build_dynamic", "litert", 0.98,
           "int8 weights, float activations: often SLOWER than fp32 on x86"),
    Format("tflite-int8", "tflite", "int8", "int8", ("io", "calibration"), "mstl.export.tflite:build_int8", "litert",
           0.99, "full integer: int8 weights and activations",
           # Both prepared recipes run at the same speed as minmax. The refined one costs one more
           # conversion; it corrects all linear offsets at once, which helped on one X-ray model
           # (99.05 -> 99.52%) and overshot on another (97.86% against 99.52%): measured, not assumed,
           # by the gate - the plain bias-corrected recipe stays as the next rung.
           recipes=(Recipe("minmax", note="the converter's own: min-max ranges, per-channel int8 kernels"),
                    Recipe("bias-corrected-activations", prepared=True, refine=True,
                           note="int8-ready model whose linear offsets are corrected again for the int8 model's "
                                "own activation rounding"),
                    Recipe("bias-corrected", prepared=True,
                           note="int8-ready model: kernels pre-rounded, channel ranges equalized, biases corrected"),
                    # Where the 8-bit weight grid is a large part of the error, float regions cannot
                    # help (they run the rounded kernels): measured on the converged-head X-ray model
                    # (AMD EPYC, 2026-12-07), GPTQ took its float-activation error 0.204 -> 0.115, and
                    # the mixed build on it predicted 99.46% against 99.35% on nearest-rounded kernels
                    # and confirmed 99.60% (15 of 3,737) against 99.30% (26). 2-3x the preparation of
                    # a nearest-rounded rung, so it runs only when those missed.
                    Recipe("gptq-bias-corrected", (("rounding", "gptq"),), prepared=True,
                           note="int8-ready model, its kernels rounded by GPTQ (each layer's rounding error "
                                "cancelled on its calibration inputs)"),
                    MIXED)),
    Format("onnx-fp32", "onnx", "fp32", None, (), "mstl.export.onnx:build_fp32", "onnxruntime", 0.999),
    Format("onnx-int8", "onnx", "int8", "int8", ("calibration",), "mstl.export.onnx:build_int8", "onnxruntime", 0.99,
           "static QDQ, int8 per-channel weights",
           # The refined recipe (measured on the paper-rule X-ray model): same agreement as plain
           # bias correction (99.52%), test accuracy -1.1 -> +1.1 pt against fp32, same speed.
           # On x86 without VNNI (or --portable-int8) the u8s8 rungs give way to 7-bit-weight ones
           # (ONNX Runtime's quantization guide: reduce_range is for U8S8 on AVX2/AVX-512 without
           # VNNI). No refined 7-bit rung: its all-layers-at-once correction overshot with the larger
           # 7-bit errors (demo model: 66.4% agreement, against 99.29% for plain bias correction).
           recipes=(Recipe("u8s8-minmax", U8, note="uint8 activations: the fast form on x86", cpus="exact-u8s8"),
                    Recipe("u8s8-r7-minmax", U8_R7, note="uint8 activations, 7-bit weights: exact on x86 without VNNI",
                           cpus="saturating-u8s8"),
                    Recipe("u8s8-bias-corrected-activations", U8, prepared=True, refine=True, cpus="exact-u8s8",
                           note="uint8 activations on the int8-ready model, linear offsets corrected again for "
                                "the QDQ model's own activation rounding"),
                    Recipe("u8s8-bias-corrected", U8, prepared=True, cpus="exact-u8s8",
                           note="uint8 activations on the int8-ready model"),
                    Recipe("u8s8-r7-bias-corrected", U8_R7, prepared=True, cpus="saturating-u8s8",
                           note="uint8 activations and 7-bit weights on the int8-ready model"),
                    # On x86 without VNNI ONNX Runtime runs s8 activations through the same u8s8 kernels
                    # (shifted by 128), so 8-bit weights saturate there too - measured on an AVX2-only
                    # AMD EPYC, paper-rule X-ray model: s8s8 with 8-bit weights 93.40% on selection
                    # against 99.41% for u8s8-r7. Such CPUs get the 7-bit form.
                    Recipe("s8s8-bias-corrected", (("activations", "int8"),), prepared=True, cpus="exact-u8s8",
                           note="int8 activations: more exact on some models, about 2x slower on x86"),
                    Recipe("s8s8-r7-bias-corrected", (("activations", "int8"), ("reduce_range", True)), prepared=True,
                           cpus="saturating-u8s8",
                           note="int8 activations and 7-bit weights on the int8-ready model: exact on x86 without VNNI"),
                    # The 7-bit grid is coarse enough that its rounding shows (export/gptq.py): measured on
                    # the paper-rule X-ray model, --portable-int8 (Intel Xeon): the shipped mixed build
                    # 29 -> 15 confirmation flips of 3,720 with GPTQ-rounded kernels. 2-3x the export
                    # time of a nearest-rounded rung, so it comes after them.
                    Recipe("u8s8-r7-gptq-bias-corrected", U8_R7 + (("rounding", "gptq"),), prepared=True,
                           cpus="saturating-u8s8",
                           note="uint8 activations and 7-bit weights on the int8-ready model, its kernels rounded by "
                                "GPTQ (each layer's rounding error cancelled on its calibration inputs)"),
                    MIXED)),
)

FORMAT_NAMES = ("tflite", "onnx")


def by_key(key: str) -> Format:
    for f in FORMATS:
        if f.key == key:
            return f
    raise KeyError(f"unknown format {key!r}; known: {', '.join(f.key for f in FORMATS)}")


def for_file(path: str) -> str:
    """The format family of an artifact file, from its suffix."""
    for fam in ("tflite", "onnx", "keras"):
        if str(path).endswith(f".{fam}"):
            return fam
    raise ValueError(f"{path}: unknown artifact type (expected .tflite, .onnx or .keras)")


PRECISIONS = tuple(dict.fromkeys(f.precision for f in FORMATS))


def precision_of(path: str) -> str:
    """The precision an artifact's file name says (``classifier-int8.tflite``, ``...-int8-rejected.onnx``),
    for files without a card; "unknown" when it says none."""
    stem = Path(str(path)).name.rsplit(".", 1)[0].removesuffix("-rejected")
    return next((p for p in PRECISIONS if stem.endswith(f"-{p}")), "unknown")


def thresholds(overrides: dict[str, float | None] | None = None) -> dict[str, float]:
    """Agreement threshold per precision: the table's, unless overridden. A precision the table has not
    is refused (a misspelt key would otherwise leave its gate at the default, silently)."""
    out = {f.precision: f.min_agreement for f in FORMATS}
    unknown = sorted(set(overrides or {}) - set(out))
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown} for a threshold; known: {', '.join(out)}")
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return out


def select(formats: list[str], flags: set[str], options: dict[str, object] | None = None) -> list[Format]:
    """The formats an export produces: the fp32 reference of each family, plus the flagged forms.
    Raises ValueError for an unknown family or an option that no selected format accepts."""
    unknown = [f for f in formats if f not in FORMAT_NAMES]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}: choose from {', '.join(FORMAT_NAMES)}")
    chosen = [f for f in FORMATS if f.format in formats and (f.flag is None or f.flag in flags)]
    for flag in flags:
        if not any(f.flag == flag for f in chosen):
            fams = sorted({f.format for f in FORMATS if f.flag == flag})
            raise ValueError(f"--{flag} applies to {', '.join(fams)} only, which is not among --format {','.join(formats)}")
    for opt, value in (options or {}).items():
        if value is not None and not any(opt in f.options for f in chosen):
            takers = [f.key for f in FORMATS if opt in f.options]
            raise ValueError(f"--{opt} is only accepted by {', '.join(takers)}; add the flag that exports one of them")
    return chosen
