"""ONNX builders: tf2onnx for float32, ONNX Runtime static quantization (QDQ, u8 activations / s8
weights) for int8. Weights are quantized per channel: per tensor, MobileNetV2's depthwise kernels
(batch norm folded in) lose too much - 74.8% top-1 agreement on the demo model against 100% per
channel, which also ran faster there (0.75 ms vs 0.92 ms at 96 px, 1 thread)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..formats import BuildOptions
from ..tf_env import tf

OPSET = 17
INPUT_NAME = "input"


def _fp32_proto(model):
    import tf2onnx

    size = int(model.input_shape[1])
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return proto


def build_fp32(model, workdir: Path, opts: BuildOptions = BuildOptions()) -> bytes:
    return _fp32_proto(model).SerializeToString()


def build_int8(model, workdir: Path, opts: BuildOptions) -> bytes:
    """``activations="int8"`` (s8s8) is the fallback: more exact on some models, about 2x slower on x86
    (measured on the chest X-ray model: 98.9% agreement at 3.08 ms against 97.7% at 1.66 ms for u8s8)."""
    return quantize_qdq(float_graph(model, workdir), opts)


def float_graph(model, workdir: Path) -> Path:
    """The float graph that ONNX Runtime's quantizer reads (after its pre-processing); its node names
    are the ones ``BuildOptions.float_nodes`` names."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = workdir / "model-fp32.onnx"
    fp32.write_bytes(build_fp32(model, workdir))
    pre = workdir / "model-pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    return pre


def quantize_qdq(pre: Path, opts: BuildOptions) -> bytes:
    """Static QDQ quantization of a pre-processed float graph; the nodes in ``opts.float_nodes`` stay
    in float. Activation ranges are calibrated once per graph and calibration set, and reused (ONNX
    Runtime's calibration cache): the mixed-precision search rebuilds the same graph many times."""
    import hashlib

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    opts.needs_calibration()
    from .diagnose import array_reader
    digest = hashlib.sha256(pre.read_bytes() + np.ascontiguousarray(opts.calibration).tobytes()).hexdigest()[:16]
    cache = pre.with_name(f"calibration-{digest}.json")
    out = pre.with_name("model-int8.onnx")
    quantize_static(str(pre), str(out), None if cache.exists() else array_reader(INPUT_NAME, opts.calibration),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8 if opts.activations == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=opts.reduce_range,
                    nodes_to_exclude=list(opts.float_nodes), calibration_cache_path=str(cache))
    return out.read_bytes()


class MixedBuilder:
    """Rebuilds one model's int8 graph with chosen nodes in float (export/mixed.py), from one float
    graph and one calibration."""

    def __init__(self, model, workdir: Path, opts: BuildOptions):
        workdir.mkdir(parents=True, exist_ok=True)
        self.pre, self.opts = float_graph(model, workdir), opts

    def build(self, float_nodes: tuple[str, ...]) -> bytes:
        from dataclasses import replace
        return quantize_qdq(self.pre, replace(self.opts, float_nodes=tuple(float_nodes)))

    def rank(self, pixels: np.ndarray):
        """Layers by sensitivity, measured on this builder's own full-int8 graph (its node names)."""
        from .mixed import ranked_onnx
        return ranked_onnx(self.pre, self.build(()), pixels)


def embed_metadata(data: bytes, card: dict) -> bytes:
    """Labels and preprocessing into the model's metadata_props."""
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in (("mstl_card", json.dumps(card, sort_keys=True)), ("labels", json.dumps(card["labels"])),
                       ("preprocessing", json.dumps(card["input"], sort_keys=True))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def read_metadata(path: str | Path) -> dict | None:
    import onnx

    for p in onnx.load(str(path)).metadata_props:
        if p.key == "mstl_card":
            return json.loads(p.value)
    return None


def op_types(path: str | Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}
