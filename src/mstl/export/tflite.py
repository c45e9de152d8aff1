"""TFLite (LiteRT) builders, through a SavedModel: with Keras 3, `from_keras_model` prints ~18k
characters per call, and a `tf.function` through `from_concrete_functions` keeps the weights as
variables (a 0.2 MB file whose int8 form fails at invoke)."""

from __future__ import annotations

import functools

import json
import tempfile
from pathlib import Path

import numpy as np

from ..edge.core.formats import BuildOptions
from ..tf_env import tf


def _converter(model, workdir: Path):
    saved = workdir / f"saved_model-{id(model)}"  # one per model: the int8-ready copy is another model
    if not saved.exists():
        model.export(str(saved), format="tf_saved_model", verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(str(saved))


def _convert(model, workdir: Path, configure=None) -> bytes:
    conv = _converter(model, workdir)
    if configure:
        configure(conv)
    return conv.convert()


def build_fp32(model, workdir: Path, opts: BuildOptions = BuildOptions()) -> bytes:
    return _convert(model, workdir)


def build_fp16(model, workdir: Path, opts: BuildOptions = BuildOptions()) -> bytes:
    def cfg(c):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16]
    return _convert(model, workdir, cfg)


def build_dynamic(model, workdir: Path, opts: BuildOptions = BuildOptions()) -> bytes:
    def cfg(c):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
    return _convert(model, workdir, cfg)


def _int8_config(opts: BuildOptions, calibrate_only: bool = False):
    """Full integer. Scaling lives inside the graph and calibration uses raw 0..255 pixels, so a uint8
    input takes raw pixels directly (scale 1, zero point 0)."""
    opts.needs_calibration()
    cal = np.array(opts.calibration, dtype=np.float32)
    # The input's quantization range is what calibration saw; one pixel at 0 and one at 255 make it
    # exactly 0..255, so the uint8 input takes raw pixels (scale 1, zero point 0) with no clipping.
    cal[0, 0, 0, :] = 0.0
    cal[0, 0, 1, :] = 255.0

    def representative():
        for i in range(len(cal)):
            yield [cal[i:i + 1]]

    def cfg(c):
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = representative
        if calibrate_only:  # ranges only; quantized afterwards with some layers left out (MixedBuilder)
            c._experimental_calibrate_only = True
            return
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if opts.io != "float":
            c.inference_input_type = tf.uint8 if opts.io == "uint8" else tf.int8
            c.inference_output_type = tf.uint8 if opts.io == "uint8" else tf.int8
    return cfg


def build_int8(model, workdir: Path, opts: BuildOptions) -> bytes:
    return _convert(model, workdir, _int8_config(opts))


class MixedBuilder:
    """One calibration, then int8 builds with chosen layers kept in float: the converter's own MLIR
    quantizer with ``denylisted_nodes`` (the layer's full output tensor name; a name it does not know
    is ignored silently, so export/macs.py checks afterwards which layers really are float)."""

    def __init__(self, model, workdir: Path, opts: BuildOptions):
        workdir.mkdir(parents=True, exist_ok=True)
        self.opts = opts
        self.fp32 = _convert(model, workdir)
        self.calibrated = _convert(model, workdir, _int8_config(opts, calibrate_only=True))

    def build(self, float_nodes: tuple[str, ...]) -> bytes:
        from tensorflow.lite.python.convert import mlir_quantize
        io = {"uint8": tf.uint8, "int8": tf.int8, "float": tf.float32}[self.opts.io]
        return bytes(mlir_quantize(self.calibrated, disable_per_channel=False, fully_quantize=False,
                                   input_data_type=io, output_data_type=io, denylisted_nodes=list(float_nodes)))

    @functools.cached_property
    def full_int8(self) -> bytes:
        """The build with nothing in float: ranked on, and its MACs counted, once."""
        return self.build(())

    def rank(self, pixels: np.ndarray):
        from .mixed import ranked_tflite
        return ranked_tflite(self.fp32, self.full_int8, pixels)

    def node_macs(self) -> dict[str, int]:
        from .macs import layer_macs
        return {l.name: l.macs for l in layer_macs(self.full_int8)}

    def unit_nodes(self, units) -> dict[str, tuple[str, ...]]:
        """Keras layer -> the ops of this graph that compute it: the converter names each op after the
        Keras layers it fused, as path segments ``.../<layer>_<n>/...`` (an op may carry several)."""
        import re

        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_content=self.fp32)
        tensors = {t["index"]: t["name"] for t in it.get_tensor_details()}
        ops = [tensors[int(o["outputs"][0])] for o in it._get_ops_details()]
        out = {}
        for u in units:
            pattern = re.compile(rf"(^|[/;]){re.escape(u)}(_\d+)?/")
            found = tuple(n for n in ops if pattern.search(n))
            if found:
                out[u] = found
        return out


def embed_metadata(data: bytes, card: dict) -> bytes:
    """Store the model card (labels, preprocessing) in the TFLite metadata table as 'mstl_card'."""
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(data))
    buf = schema_fb.BufferT()
    buf.data = np.frombuffer(json.dumps(card, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    meta = schema_fb.MetadataT()
    meta.name = "mstl_card"
    meta.buffer = len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [meta]
    return bytes(fbu.convert_object_to_bytearray(model))


def read_metadata(path: str | Path) -> dict | None:
    """The embedded card, read back with the flatbuffer schema (used by tests and `mstl-export`)."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    for m in model.metadata or []:
        name = m.name.decode() if isinstance(m.name, bytes) else m.name
        if name == "mstl_card":
            return json.loads(bytes(model.buffers[m.buffer].data).decode())
    return None


def tensor_types(path: str | Path) -> set[str]:
    """Names of the tensor types in a TFLite file (e.g. {'INT8', 'UINT8', 'INT32'})."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    return {fbu.type_to_name(t.type) for sg in model.subgraphs for t in sg.tensors}


def workdir():
    return tempfile.TemporaryDirectory(prefix="mstl-tflite-")
