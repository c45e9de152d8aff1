"""ONNX builders: tf2onnx for float32, ONNX Runtime static quantization (QDQ, u8 activations / s8
weights) for int8. Weights are quantized per channel: per tensor, MobileNetV2's depthwise kernels
(batch norm folded in) lose too much - 74.8% top-1 agreement on the demo model against 100% per
channel, which also ran faster there (0.75 ms vs 0.92 ms at 96 px, 1 thread)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np

from ..edge.core.formats import BuildOptions
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
                    nodes_to_exclude=list(opts.float_nodes), calibration_cache_path=str(cache),
                    extra_options={"TensorQuantOverrides": _pixel_ranges_of(pre)})
    return keep_float(out.read_bytes(), opts.float_nodes) if opts.float_nodes else out.read_bytes()


def keep_float(data: bytes, float_nodes: tuple[str, ...]) -> bytes:
    """Make the layers left out of quantization stay float in ONNX Runtime itself. Its basic graph
    optimizer ``WeightBiasQuantization`` quantizes, per tensor and at session load, the float weights of
    every Conv/Gemm whose input comes from a DequantizeLinear with one scale - exactly what an excluded
    layer between quantized ones looks like - so ``nodes_to_exclude`` alone gives a layer worse than
    the int8 it replaced (measured: a planted layer excluded this way still flipped 27 of 600 answers).
    Each such layer reads its input through its own DequantizeLinear with the same scale given per
    channel: the same values, and a pattern the optimizer leaves alone."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(data)
    g = model.graph
    init = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    wanted = set(float_nodes)
    for node in list(g.node):
        if node.name not in wanted or node.op_type not in ("Conv", "Gemm") or node.input[1] not in init:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in init:
            continue
        scale = numpy_helper.to_array(init[dq.input[1]])
        if scale.size != 1:
            continue
        zp = numpy_helper.to_array(init[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in init else None
        w = numpy_helper.to_array(init[node.input[1]])
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            channels = w.shape[1] * group
        else:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            channels = w.shape[1] if trans_b else w.shape[0]
        base = f"{node.name}/float_input"
        g.initializer.append(numpy_helper.from_array(np.full(channels, scale.item(), scale.dtype), f"{base}_scale"))
        inputs = [dq.input[0], f"{base}_scale"]
        if zp is not None:
            g.initializer.append(numpy_helper.from_array(np.full(channels, zp.item(), zp.dtype), f"{base}_zero_point"))
            inputs.append(f"{base}_zero_point")
        g.node.insert(list(g.node).index(node), helper.make_node("DequantizeLinear", inputs, [base], name=base, axis=1))
        node.input[0] = base
    return model.SerializeToString()


PREPROCESSING_OPS = {"Cast", "Mul", "Add", "Sub", "Div", "Transpose", "Identity"}


def _pixel_ranges_of(pre: Path) -> dict[str, list[dict[str, float]]]:
    """``pixel_ranges`` once per float graph: the mixed-precision search quantizes the same one many times."""
    st = pre.stat()
    return copy.deepcopy(_cached_pixel_ranges(str(pre), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=4)
def _cached_pixel_ranges(path: str, mtime_ns: int, size: int) -> dict[str, list[dict[str, float]]]:
    return pixel_ranges(Path(path))


def pixel_ranges(pre: Path) -> dict[str, list[dict[str, float]]]:
    """The input and the preprocessing that follows it (up to the first weighted layer) quantized over
    every pixel value, 0-255, not over what the calibration images happened to hold: an X-ray brighter
    than all of them is otherwise clipped before the first convolution (TFLite's uint8 input is exact
    already). The ranges are the float graph's own answers for a black and a white image."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(pre))
    g = model.graph
    chain, tensors = {INPUT_NAME}, [INPUT_NAME]
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    for n in g.node:  # nodes are in topological order
        moving = [i for i in n.input if i and i not in consts]
        if n.op_type in PREPROCESSING_OPS and moving and all(i in chain for i in moving):
            chain.update(n.output)
            tensors += list(n.output)
    known = {v.name for v in list(g.output)}
    for t in tensors[1:]:
        if t not in known:
            g.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [d.dim_value or 1 for d in g.input[0].type.tensor_type.shape.dim]
    seen: dict[str, list[float]] = {}
    for value in (0.0, 255.0):
        got = sess.run(tensors[1:], {INPUT_NAME: np.full(shape, value, np.float32)})
        for t, a in zip(tensors, [np.full(shape, value, np.float32)] + got):
            seen.setdefault(t, []).extend([float(np.min(a)), float(np.max(a))])
    return {t: [{"rmin": np.float32(min(v)), "rmax": np.float32(max(v))}] for t, v in seen.items()}


class MixedBuilder:
    """Rebuilds one model's int8 graph with chosen nodes in float (export/mixed.py), from one float
    graph and one calibration."""

    def __init__(self, model, workdir: Path, opts: BuildOptions):
        workdir.mkdir(parents=True, exist_ok=True)
        self.pre, self.opts = float_graph(model, workdir), opts
        self.keras_order = keras_units(model)

    def build(self, float_nodes: tuple[str, ...]) -> bytes:
        from dataclasses import replace
        return quantize_qdq(self.pre, replace(self.opts, float_nodes=tuple(float_nodes)))

    @functools.cached_property
    def full_int8(self) -> bytes:
        """The build with nothing in float: ranked on, and its MACs counted, once."""
        return self.build(())

    def rank(self, pixels: np.ndarray):
        """Layers by sensitivity, measured on this builder's own full-int8 graph (its node names)."""
        from .mixed import ranked_onnx
        return ranked_onnx(self.pre, self.full_int8, pixels)

    def node_macs(self) -> dict[str, int]:
        from .macs import layer_macs
        return {l.name: l.macs for l in layer_macs(self.full_int8)}

    def unit_nodes(self, units) -> dict[str, tuple[str, ...]]:
        wanted = set(units)
        return {u: n for u, n in unit_nodes(self.pre, *self.keras_order).items() if u in wanted}


def keras_units(model) -> tuple[list[str], list[str], str, str]:
    """The classifier's weighted layers (convolutions, then the head) and its additions, in graph order;
    the names of its scaling and its pooling."""
    from ..tf_env import keras
    from .bias_correction import _container
    net, _ = _container(model)
    weighted = [l.name for l in net.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    weighted += [l.name for l in model.layers if isinstance(l, keras.layers.Dense)]
    adds = [l.name for l in net.layers if isinstance(l, keras.layers.Add)]
    scaling = next(l.name for l in model.layers if isinstance(l, keras.layers.Rescaling))
    pool = next(l.name for l in model.layers if isinstance(l, keras.layers.GlobalAveragePooling2D))
    return weighted, adds, scaling, pool


def unit_nodes(pre: Path, weighted: list[str], adds: list[str], scaling: str, pool: str) -> dict[str, tuple[str, ...]]:
    """Keras layer -> its nodes in the pre-processed ONNX graph. tf2onnx gives most convolutions no
    name of their layer (``Conv__339``), so they are matched by order - both graphs list them in the
    same topological order - and checked by count; each convolution takes the Clip (its ReLU6) that
    reads it; the scaling is every node before the first convolution; the pooling is what lies between
    the last convolution's activation and the head."""
    import onnx
    g = onnx.load(str(pre)).graph
    nodes = list(g.node)
    convs = [n for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")]
    if len(convs) != len(weighted):
        raise ValueError(f"{len(convs)} weighted ONNX nodes for {len(weighted)} Keras layers: cannot match them")
    first = nodes.index(convs[0])
    onnx_adds = [n for n in nodes[first:] if n.op_type == "Add"]
    if len(onnx_adds) != len(adds):
        raise ValueError(f"{len(onnx_adds)} ONNX additions for {len(adds)} Keras ones: cannot match them")
    readers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out: dict[str, tuple[str, ...]] = {}
    for layer, node in zip(weighted, convs):
        clips = [r.name for r in readers.get(node.output[0], []) if r.op_type in ("Clip", "Relu")]
        out[layer] = (node.name, *clips)
    out.update({layer: (node.name,) for layer, node in zip(adds, onnx_adds)})
    out[scaling] = tuple(n.name for n in nodes[:first] if n.op_type not in ("Constant",))
    head = nodes.index(convs[-1])
    out[pool] = tuple(n.name for n in nodes[nodes.index(convs[-2]) + 1:head] if n.op_type not in ("Clip", "Relu", "Constant"))
    return out


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
