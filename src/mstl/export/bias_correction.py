"""Int8-ready copies of a classifier: weights pre-rounded to the int8 grid the converters will use, and
BatchNorm offsets corrected for the bias that rounding leaves (empirical bias correction, Nagel et al.,
"Data-free quantization", 2019, section 4.2).

Why: every convolution of MobileNetV2 is followed by a BatchNorm that both LiteRT and tf2onnx fold into
it; the folded kernel is then quantized per output channel, symmetric, to [-127, 127] (scale =
max|w| / 127) by both the TFLite converter and ONNX Runtime. On the ImageNet weights this project uses
(`../shared/weights`, de-quantized from a QAT model), that rounding alone moved the pooled features of
chest X-rays by 28% (relative L2) - most of it from a shift of each channel's mean (first depthwise
convolution: kernels up to |w| = 56 on ReLU6 inputs near 6). Rounding the folded kernels here, exactly as
the converter will, and moving each BatchNorm's offset so that every channel's mean output on
calibration images equals the float model's, took that to ~4% with float activations. The converter
then quantizes the already-rounded kernels without further error.
"""

from __future__ import annotations

import numpy as np

from ..edge.core.progress import say
from ..tf_env import keras

INT8_MAX = 127
INT7_MAX = 64  # ONNX Runtime's reduce_range grid for symmetric int8 weights: [-64, 64], scale max|w| / 64


def conv_bn_pairs(net: "keras.Model") -> list[tuple["keras.layers.Layer", "keras.layers.Layer"]]:
    """(convolution, the BatchNorm that reads only its output) pairs, in graph order."""
    pairs = []
    for conv in net.layers:
        if not isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) or conv.use_bias:
            continue
        readers = [l for l in net.layers if l is not conv and _reads(l, conv)]
        if len(readers) == 1 and isinstance(readers[0], keras.layers.BatchNormalization) and readers[0].center:
            pairs.append((conv, readers[0]))
    return pairs


def _reads(layer, producer) -> bool:
    try:
        return layer.input is producer.output
    except (AttributeError, ValueError):  # layers with several inputs or none
        return False


def _folded_scale(bn) -> np.ndarray:
    gamma = bn.gamma.numpy() if bn.scale else np.ones(bn.moving_variance.shape, np.float32)
    return gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)


def round_kernel(conv, bn, levels: int = INT8_MAX, moments: np.ndarray | None = None) -> float:
    """Round ``conv``'s kernel so that, once ``bn`` is folded into it, each output channel lies on the
    symmetric grid the converter will use (scale = max|w| / levels: 127 for int8, 64 for ONNX Runtime's
    7-bit reduce_range): to nearest, or with ``moments`` (gptq.input_moments) by GPTQ. Returns the
    relative L2 change of the folded kernel."""
    w = conv.kernel.numpy()
    k = _folded_scale(bn)
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    kk = k.reshape(1, 1, -1, 1) if depthwise else k.reshape(1, 1, 1, -1)
    folded = w * kk
    axes = (0, 1, 3) if depthwise else (0, 1, 2)
    if moments is not None:
        from .gptq import round_folded
        rounded = round_folded(folded, moments, levels, depthwise).astype(np.float32)
    else:
        scale = np.abs(folded).max(axis=axes, keepdims=True) / levels
        scale[scale == 0] = 1.0
        rounded = np.clip(np.round(folded / scale), -levels, levels) * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        new = np.where(kk != 0, rounded / kk, w)
    conv.kernel.assign(new.astype(w.dtype))
    norm = float(np.linalg.norm(folded))
    return float(np.linalg.norm(rounded - folded) / norm) if norm else 0.0


def _container(model: "keras.Model"):
    """The nested network holding the convolutions, and a function that maps raw pixels to its input."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and conv_bn_pairs(layer):
            before = []
            for l in model.layers:
                if l is layer:
                    break
                if not isinstance(l, keras.layers.InputLayer):
                    before.append(l)

            def feed(x, before=before):
                for l in before:
                    x = l(x)
                return x
            return layer, feed
    return model, (lambda x: x)


def _channel_means(net, bns, x: np.ndarray, batch: int = 32) -> list[np.ndarray]:
    probe = keras.Model(net.inputs[0], [keras.layers.GlobalAveragePooling2D()(bn.output) for bn in bns])
    sums = None
    for i in range(0, len(x), batch):
        outs = probe(x[i:i + batch], training=False)
        outs = [np.asarray(o).sum(axis=0) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
        sums = outs if sums is None else [s + o for s, o in zip(sums, outs)]
    return [s / len(x) for s in sums]


def int8_ready(model: "keras.Model", pixels: np.ndarray, equalize: bool = True,
               targets: dict | None = None, levels: int = INT8_MAX, rounding: str = "nearest",
               keep: frozenset[str] = frozenset()) -> dict:
    """Turn ``model`` into its int8-ready form, in place.

    ``pixels``: calibration images, raw 0..255. Layer by layer in graph order, the copy's kernel is
    rounded, then its BatchNorm's offset moved so that each channel's mean output on the calibration
    images equals the float network's - with every earlier layer already rounded and corrected, so a
    correction also absorbs the mean error that reaches it from below. Convolutions named in ``keep``
    stay unrounded (layers a mixed build runs in float: rounding them would carry the int8 weight error
    into float); their offsets are still corrected for what reaches them. Returns what was done, for the card.
    """
    if rounding not in ("nearest", "gptq"):
        raise ValueError(f"rounding must be 'nearest' or 'gptq', not {rounding!r}")
    net, feed = _container(model)
    pairs = conv_bn_pairs(net)
    if not pairs:
        raise ValueError("the model has no convolution + BatchNorm pairs to correct")
    x = np.asarray(feed(np.asarray(pixels, np.float32)))
    equalized = equalize_streams(net, x) if equalize else {"streams": 0}
    # Targets from the copy before any rounding: equal to the reference's, channel scaling aside.
    target = _channel_means(net, [b for _, b in pairs], x)
    if targets is not None:
        targets.update({bn.name: want for (_, bn), want in zip(pairs, target)})
    changes, shifts = [], []
    for (conv, bn), want in zip(pairs, target):
        if conv.name not in keep:
            moments = None
            if rounding == "gptq":
                from .gptq import input_moments
                moments = input_moments(net, conv, x)  # with every earlier layer already rounded
            changes.append(round_kernel(conv, bn, levels, moments))
        shift = _channel_means(net, [bn], x)[0] - want
        shifts.append(float(np.abs(shift).max()))
        bn.beta.assign((bn.beta.numpy() - shift).astype(np.float32))
    worst = int(np.argmax(shifts))
    say(f"  bias correction: {len(changes)} convolutions rounded to the {levels}-level grid (median kernel change "
        f"{100 * float(np.median(changes)) if changes else 0.0:.2f}%); largest channel-mean shift corrected {shifts[worst]:.3g} "
        f"at {pairs[worst][0].name}")
    return {"method": "int8-rounded folded kernels + empirical bias correction", "layers": len(pairs),
            "weight_levels": levels, "rounding": rounding, **({"unrounded": sorted(keep)} if keep else {}),
            "calibration_images": int(len(pixels)),
            "median_kernel_change": round(float(np.median(changes)), 5) if changes else 0.0,
            "largest_shift": {"layer": pairs[worst][0].name, "value": round(shifts[worst], 5)},
            "equalization": equalized}


def _graph(net):
    producer, readers = {}, {}
    for layer in net.layers:
        outs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for t in outs:
            producer[id(t)] = layer
    for layer in net.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        ins = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        for t in ins:
            readers.setdefault(id(t), []).append(layer)
    return producer, readers


def linear_streams(net) -> list[dict]:
    """The tensors that carry no activation function: a BatchNorm's output read only by additions and
    convolutions, joined through the additions (a residual stream). Scaling one channel of every
    tensor of a stream, and the matching input channel of every convolution reading it, leaves the
    network's function unchanged."""
    producer, readers = _graph(net)
    tensors = {id(l.output): l.output for l in net.layers if not isinstance(l, keras.layers.InputLayer)}
    parent: dict[int, int] = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a
    seeds = [id(l.output) for l in net.layers if isinstance(l, keras.layers.BatchNormalization)
             and readers.get(id(l.output)) and all(isinstance(r, (keras.layers.Add, keras.layers.Conv2D))
                                                   and not isinstance(r, keras.layers.DepthwiseConv2D)
                                                   for r in readers[id(l.output)])]
    members = set(seeds)
    grew = True
    while grew:
        grew = False
        for layer in net.layers:
            if isinstance(layer, keras.layers.Add):
                ids = [id(t) for t in layer.input] + [id(layer.output)]
                if any(i in members for i in ids):
                    for i in ids:
                        parent[find(i)] = find(ids[0])
                    if not all(i in members for i in ids):
                        members.update(ids)
                        grew = True
    groups: dict[int, list[int]] = {}
    for i in members:
        groups.setdefault(find(i), []).append(i)
    streams = []
    for ids in groups.values():
        makers = [producer[i] for i in ids]
        reads = {id(r): r for i in ids for r in readers.get(i, [])}
        ok = all(isinstance(m, keras.layers.Add) or (isinstance(m, keras.layers.BatchNormalization) and m.scale and m.center)
                 for m in makers)
        ok = ok and all(isinstance(r, keras.layers.Add) or (isinstance(r, keras.layers.Conv2D)
                                                            and not isinstance(r, keras.layers.DepthwiseConv2D))
                        for r in reads.values())
        if ok:
            streams.append({"tensors": [tensors[i] for i in ids],
                            "norms": [m for m in makers if isinstance(m, keras.layers.BatchNormalization)],
                            "convs": [r for r in reads.values() if isinstance(r, keras.layers.Conv2D)]})
    return streams


def equalize_streams(net, x: np.ndarray, strength: float = 0.5, limit: float = 16.0, batch: int = 32) -> dict:
    """Even out the channel ranges of every linear stream, exactly (the float function is unchanged).

    A per-tensor int8 activation scale is set by the widest channel; channels whose range is far
    smaller get few levels. Channel c is multiplied by t_c = (R / r_c) ** strength (at most ``limit``),
    where r_c is its largest |value| on the calibration images and R the stream's widest, and the
    convolutions reading it divide their input channel c by t_c."""
    streams = linear_streams(net)
    if not streams:
        return {"streams": 0}
    flat = [t for s in streams for t in s["tensors"]]
    probe = keras.Model(net.inputs[0], [keras.ops.max(keras.ops.abs(t), axis=(1, 2)) for t in flat])
    peaks = None
    for i in range(0, len(x), batch):
        outs = probe(x[i:i + batch], training=False)
        outs = [np.asarray(o).max(axis=0) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
        peaks = outs if peaks is None else [np.maximum(p, o) for p, o in zip(peaks, outs)]
    k = 0
    spread = []
    for s in streams:
        r = np.max(np.stack(peaks[k:k + len(s["tensors"])]), axis=0)
        k += len(s["tensors"])
        widest = float(r.max())
        t = np.clip((widest / np.maximum(r, widest / limit ** (1 / strength))) ** strength, 1.0, limit).astype(np.float32)
        spread.append(float(widest / max(np.median(r), 1e-12)))
        for bn in s["norms"]:
            bn.gamma.assign(bn.gamma.numpy() * t)
            bn.beta.assign(bn.beta.numpy() * t)
        for conv in s["convs"]:
            conv.kernel.assign(conv.kernel.numpy() / t.reshape(1, 1, -1, 1))
    return {"streams": len(streams), "median_range_spread": round(float(np.median(spread)), 2),
            "strength": strength, "limit": limit}


def activation_correct(model: "keras.Model", built: bytes, pixels: np.ndarray, targets: dict) -> dict:
    """A second correction: measure each linear BatchNorm output's per-channel mean in the built int8
    model itself (a .tflite in LiteRT, or a QDQ .onnx in ONNX Runtime) - activation rounding included,
    which the first pass cannot see - and move the offsets by what remains. ``targets``: the float
    channel means from ``int8_ready``. Changes ``model`` in place; returns the betas it replaced (to
    restore) and what it did."""
    net, _ = _container(model)
    linear = [bn for s in linear_streams(net) for bn in s["norms"] if bn.name in targets]
    means = _onnx_means(net, linear, built, pixels) if built[4:8] != b"TFL3" else _litert_means(linear, built, pixels)
    saved = {}
    for bn in linear:
        if bn.name in means:
            saved[bn.name] = bn.beta.numpy().copy()
            shift = means[bn.name] - targets[bn.name]
            bn.beta.assign((bn.beta.numpy() - shift).astype(np.float32))
    return {"saved": saved, "layers": len(saved)}


def _onnx_means(net, linear: list, onnx_bytes: bytes, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel means of the linear BatchNorm outputs as the QDQ model rounds them. ONNX keeps no
    layer names here (tf2onnx folds each BatchNorm into its convolution), so the model's convolutions
    are matched to Keras' in graph order, checked by their output channel counts."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    proto = onnx.load_from_string(onnx_bytes)
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def weight_channels(conv) -> int | None:
        w = conv.input[1]
        dq = producer.get(w)
        if dq is not None and dq.op_type == "DequantizeLinear":
            w = dq.input[0]
        return int(numpy_helper.to_array(inits[w]).shape[0]) if w in inits else None

    convs = [n for n in g.node if n.op_type == "Conv"]
    pairs = conv_bn_pairs(net)
    keras_convs = [c for c, _ in pairs]
    if len(convs) != len(keras_convs) or any(weight_channels(o) != (k.kernel.shape[2] * k.kernel.shape[3] if isinstance(
            k, keras.layers.DepthwiseConv2D) else k.kernel.shape[3]) for o, k in zip(convs, keras_convs)):
        raise ValueError("the ONNX convolutions do not match the Keras ones one to one; cannot refine")
    onnx_conv_of = {bn.name: onnx_conv for (_, bn), onnx_conv in zip(pairs, convs)}
    tensor = {}
    for bn in linear:
        out = onnx_conv_of[bn.name].output[0]
        q = next((r for r in readers.get(out, []) if r.op_type == "QuantizeLinear"), None)
        dq = next((r for r in readers.get(q.output[0], []) if r.op_type == "DequantizeLinear"), None) if q else None
        if dq is not None:
            tensor[bn.name] = dq.output[0]
    for name in tensor.values():
        g.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = list(tensor.values())
    sums = {k: 0.0 for k in tensor}
    x = np.asarray(pixels, np.float32)
    for i in range(0, len(x), 32):
        outs = sess.run(names, {sess.get_inputs()[0].name: x[i:i + 32]})
        for k, o in zip(tensor, outs):
            sums[k] = sums[k] + o.mean(axis=(2, 3)).sum(axis=0)  # NCHW inside the converted graph
    return {k: total / len(x) for k, total in sums.items()}


def _litert_means(linear: list, litert_bytes: bytes, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel means of the linear BatchNorm outputs in the LiteRT int8 model, found by tensor name."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=litert_bytes, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    details = it.get_tensor_details()
    found = {}
    for bn in linear:
        for d in details:
            first = d["name"].split(";")[0]
            if len(d["shape"]) == 4 and (first.endswith(f"/{bn.name}_1/batchnorm/add_1") or first.endswith(f"/{bn.name}/batchnorm/add_1")):
                found[bn.name] = d
                break
    from ..edge.core.runtimes import litert_quant, to_float, to_input
    inp = it.get_input_details()[0]
    in_quant = litert_quant(inp)
    sums = {k: 0.0 for k in found}
    for img in np.asarray(pixels):
        it.set_tensor(inp["index"], to_input(img[None], inp["dtype"], in_quant))
        it.invoke()
        for name, d in found.items():
            sums[name] = sums[name] + to_float(it.get_tensor(d["index"]), litert_quant(d)).mean(axis=(0, 1, 2))
    return {name: total / len(pixels) for name, total in sums.items()}


def restore_betas(model: "keras.Model", saved: dict) -> None:
    net, _ = _container(model)
    for layer in net.layers:
        if layer.name in saved:
            layer.beta.assign(saved[layer.name])
