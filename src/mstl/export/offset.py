"""The decision offset of an int8 build, removed from its head in the built file.

Near the boundary an int8 build's logits are off the Keras model's by a mean that the BatchNorm-level
corrections (bias_correction.py) cannot see: those even out each channel's mean over all calibration
images, most of them far from the boundary, where the int8 error differs. Measured on the shared chest
X-rays (corrected preset, paper stop rule, Intel Xeon with avx512_vnni, `benchmarks/int8_probes/offset.py`):
the shipped TFLite build's logit difference was +0.113 +- 0.220 off on the 300 selection images nearest
the boundary; subtracting that mean took its confirmation flips from 31 to 25 of 3,720 (ONNX: -0.012,
15 -> 13). A slope term changed nothing there (b = +0.02), so only the offset is removed.

The shift is one number per class, the mean of ``log p_int8 - log p_keras`` over the gate's
``ERROR_POOL`` decisive selection images nearest the boundary (centred across classes: softmax ignores a
common shift), and it is subtracted from the bias of the layer whose output the softmax reads: in the
int32 bias of a quantized head, on its own grid (scale = input scale x weight scale), or in a float one.
No rebuild, so ranges and rounding elsewhere stay those that were measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROB_FLOOR = 1e-6  # an int8 softmax can answer exactly 0
# The largest shift taken off, as a share of the spread of the Keras model's own logits (per class, over
# the selection images). Measured on the shared chest X-rays: shifts of 2.6-2.9% of that spread; one far
# larger is a build that is wrong, not off by a rounding mean, and moving its head would hide that from
# the gate (a build with its two classes swapped went from 0% to 95% selection agreement on the smoke
# model, whose logits all lie close together).
MAX_SHIFT_SHARE = 0.1


def _centred_log(p: np.ndarray) -> np.ndarray:
    z = np.log(np.clip(np.asarray(p, np.float64), PROB_FLOOR, 1))
    return z - z.mean(axis=1, keepdims=True)


def logit_spread(reference: np.ndarray) -> np.ndarray:
    """Per class, the standard deviation of the reference's centred log-probabilities."""
    return _centred_log(reference).std(axis=0)


def logit_shift(probs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-class mean of the build's log-probability error on these images, centred across classes."""
    return (_centred_log(probs) - _centred_log(reference)).mean(axis=0)


def _int32_minus(q: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """An int32 bias with ``shift`` taken off on its own grid (``scale`` per channel or one)."""
    moved = np.asarray(q).astype(np.int64) - np.round(shift / np.asarray(scale, np.float64)).astype(np.int64)
    return np.clip(moved, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)


def remove(fmt: str, data: bytes, shift: np.ndarray) -> tuple[bytes, dict[str, Any]] | None:
    """``data`` with ``shift`` taken off the logits, and where; None when the head is not found."""
    return (_tflite if fmt == "tflite" else _onnx)(data, np.asarray(shift, np.float64))


def _tflite(data: bytes, shift: np.ndarray):
    from tensorflow.lite.tools import flatbuffer_utils as fbu
    model = fbu.read_model_from_bytearray(bytearray(data))
    sg = model.subgraphs[0]
    ops = {int(o): op for op in sg.operators for o in op.outputs}
    softmax = [op for op in sg.operators if fbu.opcode_to_name(model, op.opcodeIndex) == "SOFTMAX"]
    if len(softmax) != 1:
        return None
    head = ops.get(int(softmax[0].inputs[0]))
    while head is not None and fbu.opcode_to_name(model, head.opcodeIndex) in ("QUANTIZE", "DEQUANTIZE"):
        head = ops.get(int(head.inputs[0]))  # a head kept in float by the mixed rung sits between these
    if head is None or fbu.opcode_to_name(model, head.opcodeIndex) != "FULLY_CONNECTED" or len(head.inputs) < 3 \
            or head.inputs[2] < 0:
        return None
    bias = sg.tensors[int(head.inputs[2])]
    buf = model.buffers[bias.buffer]
    kind = fbu.type_to_name(bias.type)
    if kind == "INT32":
        new = _int32_minus(np.frombuffer(bytes(buf.data), np.int32), bias.quantization.scale, shift)
    elif kind == "FLOAT32":
        new = (np.frombuffer(bytes(buf.data), np.float32) - shift).astype(np.float32)
    else:
        return None
    if new.shape != shift.shape:
        return None
    buf.data = np.frombuffer(new.tobytes(), np.uint8)
    where = {"layer": bias.name.decode() if isinstance(bias.name, bytes) else bias.name, "bias": kind.lower()}
    return bytes(fbu.convert_object_to_bytearray(model)), where


def _onnx(data: bytes, shift: np.ndarray):
    import onnx
    from onnx import numpy_helper
    model = onnx.load_from_string(data)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    softmax = [n for n in g.node if n.op_type == "Softmax"]
    if len(softmax) != 1:
        return None
    node = producer.get(softmax[0].input[0])
    while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ("Gemm", "Add"):
        return None
    bias_names = [node.input[2]] if node.op_type == "Gemm" and len(node.input) > 2 else list(node.input)
    for name in bias_names:
        if name in inits and numpy_helper.to_array(inits[name]).shape == shift.shape:  # a float bias
            b = numpy_helper.to_array(inits[name]).astype(np.float64)
            inits[name].CopyFrom(numpy_helper.from_array((b - shift).astype(np.float32), name))
            return model.SerializeToString(), {"layer": node.name, "bias": "float32"}
        dq = producer.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits and dq.input[1] in inits:
            q = numpy_helper.to_array(inits[dq.input[0]])
            if q.dtype != np.int32 or q.shape != shift.shape:
                continue
            new = _int32_minus(q, numpy_helper.to_array(inits[dq.input[1]]), shift)
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new, dq.input[0]))
            return model.SerializeToString(), {"layer": node.name, "bias": "int32"}
    return None
