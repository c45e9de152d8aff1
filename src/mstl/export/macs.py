"""Where a quantized artifact does its multiply-accumulates, read from the artifact itself: per layer
with weights (convolution, depthwise convolution, fully connected / Gemm / MatMul), the MACs of one
image and whether they run on int8 operands. An artifact with some layers kept in float says, through
this, how much of it is still int8 (formats.MIN_INT8_MAC_SHARE). No TensorFlow: LiteRT reads .tflite,
the onnx package reads .onnx."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LayerMacs:
    name: str  # TFLite: the layer's output tensor; ONNX: the node's name
    op: str
    macs: int
    int8: bool


def layer_macs(artifact: str | Path | bytes) -> list[LayerMacs]:
    """``artifact``: a .tflite / .onnx file, or its bytes."""
    if isinstance(artifact, bytes):
        return _tflite(artifact) if artifact[4:8] == b"TFL3" else _onnx(artifact)
    data = Path(artifact).read_bytes()
    return _tflite(data) if str(artifact).endswith(".tflite") else _onnx(data)


def int8_share(layers: list[LayerMacs]) -> float:
    total = sum(l.macs for l in layers)
    return sum(l.macs for l in layers if l.int8) / total if total else 0.0


def summary(artifact: str | Path | bytes) -> dict:
    layers = layer_macs(artifact)
    return {"int8_mac_share": round(int8_share(layers), 4), "macs": int(sum(l.macs for l in layers)),
            "float_layers": [l.name for l in layers if not l.int8]}


_TFLITE_WEIGHTED = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise", "FULLY_CONNECTED": "fc"}


def _tflite(data: bytes) -> list[LayerMacs]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        kind = _TFLITE_WEIGHTED.get(op["op_name"])
        if kind is None:
            continue
        x, w = tensors[int(op["inputs"][0])], tensors[int(op["inputs"][1])]
        y = tensors[int(op["outputs"][0])]
        wshape, yshape = [int(v) for v in w["shape"]], [int(v) for v in y["shape"]]
        per_out = int(np.prod(yshape[1:]))  # one image
        if kind == "conv":  # filter [O, kh, kw, I]
            macs = per_out * wshape[1] * wshape[2] * wshape[3]
        elif kind == "depthwise":  # filter [1, kh, kw, C]
            macs = per_out * wshape[1] * wshape[2]
        else:  # weights [O, I]
            macs = per_out * wshape[1]
        int8 = np.dtype(w["dtype"]) == np.int8 and np.issubdtype(np.dtype(x["dtype"]), np.integer)
        out.append(LayerMacs(y["name"], op["op_name"], int(macs), bool(int8)))
    return out


def _onnx(data: bytes) -> list[LayerMacs]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.output) + list(g.input)}

    def weight(name: str) -> tuple[list[int] | None, bool]:
        """The weight's shape and whether it arrives dequantized from an integer initializer."""
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
            return list(inits[node.input[0]].dims), True
        if name in inits:
            return list(numpy_helper.to_array(inits[name]).shape), False
        return None, False

    out = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        wshape, wq = weight(n.input[1])
        if wshape is None:
            continue
        src = producer.get(n.input[0])
        xq = src is not None and src.op_type == "DequantizeLinear"
        if n.op_type == "Conv":  # weight [O, I/group, kh, kw]; MACs = output positions x the kernel
            y = shapes.get(n.output[0]) or []
            spatial = int(np.prod(y[2:])) if len(y) >= 3 and all(y[2:]) else 0
            macs = spatial * int(np.prod(wshape))
        else:
            macs = int(np.prod(wshape))
        out.append(LayerMacs(n.name, n.op_type, macs, bool(wq and xq)))
    return out
