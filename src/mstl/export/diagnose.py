"""Where a quantized artifact loses accuracy: its intermediate tensors against those of its float32
sibling (same format, same graph), as signal-to-quantization-noise ratios, layer by layer.

LiteRT: both interpreters keep every tensor (``experimental_preserve_all_tensors``); tensors are
matched by name (the converter names them after the Keras layers in both files) and integer ones are
dequantized with their scale and zero point. ONNX: ONNX Runtime's own QDQ debugging helpers
(``onnxruntime.quantization.qdq_loss_debug``) match each float tensor with its dequantized twin.
No TensorFlow needed: the report can be made on the device that runs the artifact.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..edge.core.progress import say

SHOW = 8


def sqnr_db(ref: np.ndarray, got: np.ndarray, channel_axis: int | None = -1) -> float:
    """Signal is each channel's variation across images and positions, not its raw power: a channel's
    constant offset is carried by any bias, and counting it hides a layer whose quantized output lost
    everything but that offset (every real weight rounded to 0 leaves the bias: raw-power SQNR reads
    that as good, and blames the layer after it)."""
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - got) ** 2))
    if channel_axis is None or ref.ndim < 2:
        signal = float(np.sum((ref - ref.mean()) ** 2))
    else:
        axes = tuple(a for a in range(ref.ndim) if a != channel_axis % ref.ndim)
        signal = float(np.sum((ref - ref.mean(axis=axes, keepdims=True)) ** 2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(max(signal, 1e-30) / noise)


def _short(name: str) -> str:
    """'classifier_1/base_1/block_3_project_BN_1/batchnorm/add_1;...' -> 'block_3_project_BN'."""
    first = name.split(";")[0]
    parts = [p for p in first.split("/") if p and not re.fullmatch(r"(classifier|base|functional)(_\d+)?", p)]
    layer = parts[0] if parts else first
    return re.sub(r"_\d+$", "", layer)


def _litert_tensors(path: Path, pixels: np.ndarray) -> tuple[list[str], dict[str, np.ndarray], dict[str, list[str]]]:
    from ai_edge_litert.interpreter import Interpreter

    import warnings
    with warnings.catch_warnings():  # its "for debugging only" warning: this is debugging
        warnings.simplefilter("ignore", UserWarning)
        it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    from ..edge.core.runtimes import litert_quant, to_float, to_input
    inp = it.get_input_details()[0]
    in_quant = litert_quant(inp)
    details = it.get_tensor_details()
    order, acts = [], {}
    for k in range(len(pixels)):
        it.set_tensor(inp["index"], to_input(pixels[k:k + 1], inp["dtype"], in_quant))
        it.invoke()
        for d in details:
            if len(d["shape"]) not in (2, 4) or d["shape"][0] != 1 or d["shape"][-1] < 2:
                continue  # activations and logits only (kernels and biases are constants)
            try:
                t = it.get_tensor(d["index"])
            except ValueError:
                continue
            t = to_float(t, litert_quant(d))
            if d["name"] not in acts:
                order.append(d["name"])
            acts.setdefault(d["name"], []).append(t)
    names = {d["index"]: d["name"] for d in details}
    inputs = {names[int(o)]: [names[int(i)] for i in op["inputs"] if int(i) in names]
              for op in it._get_ops_details() for o in op["outputs"] if int(o) in names}
    # Activations are what some op computes; kernels and biases are what none does. (Not "what varies
    # across images": a quantized layer whose real weights all round to 0 has a constant output, and
    # it is the one most worth reporting.)
    acts = {k: np.concatenate(v) for k, v in acts.items() if k in inputs}
    return [n for n in order if n in acts], acts, inputs


def litert_layers(fp32: Path, quant: Path, pixels: np.ndarray) -> list[dict[str, Any]]:
    order, ref, inputs = _litert_tensors(fp32, pixels)
    _, got, _ = _litert_tensors(quant, pixels)
    out = []
    for name in order:
        if name in got and got[name].shape == ref[name].shape:
            out.append({"layer": _short(name), "tensor": name, "shape": list(ref[name].shape[1:]),
                        "sqnr_db": sqnr_db(ref[name], got[name]), "inputs": inputs.get(name, [])})
    return out


def array_reader(input_name: str, images: np.ndarray):
    """An ONNX Runtime CalibrationDataReader over an array of images, one at a time (batch 1)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(images):
                return None
            self.i += 1
            return {input_name: np.asarray(images[self.i - 1:self.i], dtype=np.float32)}
    return Reader()


def onnx_layers(fp32: Path, quant: Path, pixels: np.ndarray) -> list[dict[str, Any]]:
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    name = onnx.load(str(fp32)).graph.input[0].name

    with tempfile.TemporaryDirectory(prefix="mstl-explain-") as tmp:
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(fp32), str(f_aug))
        modify_model_output_intermediate_tensors(str(quant), str(q_aug))
        f_act = collect_activations(str(f_aug), array_reader(name, pixels))
        q_act = collect_activations(str(q_aug), array_reader(name, pixels))
    nodes = onnx.load(str(fp32)).graph.node
    order = [n.output[0] for n in nodes]
    inputs = {n.output[0]: list(n.input) for n in nodes}
    match = create_activation_matching(q_act, f_act)
    out = []
    for tensor in order:
        m = match.get(tensor)
        if not m or not m.get("float") or not m.get("post_qdq"):
            continue
        ref, got = np.concatenate(m["float"]), np.concatenate(m["post_qdq"])
        if ref.shape != got.shape or ref.size < 2 * len(pixels) or not np.issubdtype(ref.dtype, np.floating):
            continue  # shapes and scalars, not activations or logits
        out.append({"layer": _short(tensor), "tensor": tensor,
                    "sqnr_db": sqnr_db(ref, got, 1 if ref.ndim == 4 else -1)})  # NCHW
    compared = {l["tensor"] for l in out}
    for l in out:  # a Conv's own output is not quantized: its step is seen from the compared tensors around it
        l["inputs"] = _nearest_compared(l["tensor"], inputs, compared)
    return out


def _nearest_compared(tensor: str, inputs: dict[str, list[str]], compared: set[str]) -> list[str]:
    """The compared tensors that ``tensor`` is computed from, walking back through the ones that were not."""
    found, stack, seen = [], list(inputs.get(tensor, [])), set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in compared:
            found.append(t)
        else:
            stack.extend(inputs.get(t, []))
    return found


def blame(layers: list[dict[str, Any]], show: int = SHOW) -> dict[str, Any]:
    """The layers whose own step loses the most - the SQNR of their output below that of their worst
    compared input, found through the graph (through ops that were not compared, such as reshapes) -
    and the last tensor."""
    by_name = {l["tensor"]: l for l in layers}
    for layer in layers:
        ins = [by_name[i]["sqnr_db"] for i in layer.get("inputs", []) if i in by_name]
        here = layer["sqnr_db"]
        layer["drop_db"] = (min(ins) - here) if ins and np.isfinite(min(ins)) and np.isfinite(here) else None
    ranked = sorted((l for l in layers if l["drop_db"] is not None), key=lambda l: -l["drop_db"])
    return {"worst_steps": ranked[:show], "final": layers[-1] if layers else None, "layers": layers}


def explain_exports(out_dir: Path, rows: list[dict[str, Any]], pixels: np.ndarray) -> dict[str, Any]:
    """For every quantized artifact that was written, its blame report; printed and saved as
    ``explain-<artifact>.json`` beside it."""
    reports = {}
    fp32 = {r["format"]: out_dir / r["path"] for r in rows if r["precision"] == "fp32" and r.get("size_bytes")}
    for r in rows:
        if r["precision"] == "fp32" or not r.get("size_bytes") or r["format"] not in fp32:
            continue
        quant = out_dir / r["path"]
        say(f"explain {r['name']}: tensors against {fp32[r['format']].name} on {len(pixels)} images")
        fn = litert_layers if r["format"] == "tflite" else onnx_layers
        try:
            report = blame(fn(fp32[r["format"]], quant, pixels))
        except Exception as e:  # the diagnosis is advice: a runtime that cannot expose tensors says so
            say(f"  cannot compare tensors: {str(e).splitlines()[0][:200]}")
            continue
        say(f"  {len(report['layers'])} tensors matched; the steps that lose the most (SQNR before -> after):")
        for l in report["worst_steps"]:
            say(f"    {l['layer']:<34} {l['sqnr_db'] + l['drop_db']:6.1f} -> {l['sqnr_db']:6.1f} dB  ({-l['drop_db']:+.1f})")
        if report["final"]:
            say(f"  output of the last matched tensor ({report['final']['layer']}): {report['final']['sqnr_db']:.1f} dB")
        path = out_dir / f"explain-{r['name']}.json"
        path.write_text(json.dumps(report, indent=2, default=float))
        reports[r["name"]] = report
    return reports
