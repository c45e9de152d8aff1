"""Mixed precision, the last int8 rung: the best full-int8 build with the fewest layers kept in float
that bring its agreement on the selection images over the gate's target.

Layers are ranked once by measured sensitivity - how much signal-to-quantization-noise each layer's own
step loses in the full-int8 build (the SQNR-drop report of ``--explain``: LiteRT tensors by name, ONNX
Runtime's ``qdq_loss_debug``), the measure that TFLite's QuantizationDebugger and ONNX Runtime's QDQ
debugging tools give. Then the k worst are kept in float for k = 1, 2, 4, ... until the gate's
selection target is met, and the smallest passing k is found between the last two; a k that would
leave less than ``MIN_INT8_MAC_SHARE`` of the multiply-accumulates in int8 is never tried, and when
none passes the artifact is rejected. Which layers stayed in float, the int8 share and every step are
recorded in the card."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..edge.core.formats import MIN_INT8_MAC_SHARE
from .diagnose import blame, litert_layers, onnx_layers
from .macs import LayerMacs

RANK_IMAGES = 32  # selection images the per-layer SQNR is measured on


@dataclass(frozen=True)
class Candidate:
    name: str  # what the builder keeps in float (ONNX node name / TFLite output tensor name)
    macs: int
    drop_db: float  # SQNR this layer's own step loses in the full-int8 build
    label: str = ""  # the Keras layer it comes from, for people


def rank(weighted: list[LayerMacs], tensors: list[dict[str, Any]], owner: Callable[[str], str | None]
         ) -> list[Candidate]:
    """Weighted layers, most sensitive first. ``tensors``: the per-tensor SQNR report; ``owner`` maps a
    reported tensor to the weighted layer whose step produced it (None: not a weighted layer's)."""
    macs = {l.name: l.macs for l in weighted}
    worst: dict[str, float] = {}
    label: dict[str, str] = {}
    for t in blame(tensors, show=len(tensors))["layers"]:
        layer = owner(t["tensor"])
        if layer in macs and t.get("drop_db") is not None and float(t["drop_db"]) > worst.get(layer, -np.inf):
            worst[layer], label[layer] = float(t["drop_db"]), t["layer"]
    ranked = sorted(worst, key=lambda n: -worst[n])
    return [Candidate(n, macs[n], round(worst[n], 3), label[n]) for n in ranked]


def onnx_owner(pre: Path) -> Callable[[str], str | None]:
    """Tensor -> the Conv/Gemm/MatMul node whose step shows in it: walking back through single-input
    ops (ONNX Runtime reports the activation after the ReLU6; the builder excludes the Conv); for a
    residual addition, the later of its weighted inputs (the block's projection)."""
    import onnx
    g = onnx.load(str(pre)).graph
    order = {n.name: i for i, n in enumerate(g.node)}
    producer = {o: n for n in g.node for o in n.output if n.op_type != "Constant"}
    weighted = {"Conv", "Gemm", "MatMul"}

    def owner(tensor: str) -> str | None:
        node = producer.get(tensor)
        for _ in range(4):
            if node is None:
                return None
            if node.op_type in weighted:
                return node.name
            moving = [producer[i] for i in node.input if i in producer]
            if node.op_type == "Add":
                convs = [n for n in moving if n.op_type in weighted]
                return max(convs, key=lambda n: order[n.name]).name if convs else None
            if len(moving) != 1:
                return None
            node = moving[0]
        return None
    return owner


def ranked_onnx(pre: Path, qdq: bytes, pixels: np.ndarray) -> list[Candidate]:
    """``qdq`` must be quantized from ``pre`` itself: tf2onnx numbers unnamed nodes anew on every
    conversion, so names are only comparable within one float graph."""
    from .macs import layer_macs
    with tempfile.TemporaryDirectory(prefix="mstl-rank-") as tmp:
        q = Path(tmp) / "q.onnx"
        q.write_bytes(qdq)
        weighted = layer_macs(q)
        tensors = onnx_layers(pre, q, pixels[:RANK_IMAGES])
    return rank(weighted, tensors, onnx_owner(pre))


def ranked_tflite(fp32: bytes, int8: bytes, pixels: np.ndarray) -> list[Candidate]:
    """Tensors are matched by name (the converter names them after the Keras layers in both files)."""
    from .macs import layer_macs
    with tempfile.TemporaryDirectory(prefix="mstl-rank-") as tmp:
        f, q = Path(tmp) / "f.tflite", Path(tmp) / "q.tflite"
        f.write_bytes(fp32)
        q.write_bytes(int8)
        weighted = layer_macs(q)
        tensors = litert_layers(f, q, pixels[:RANK_IMAGES])
    names = {l.name for l in weighted}
    return rank(weighted, tensors, lambda t: t if t in names else None)


def fewest_float(candidates: list[Candidate], total_macs: int, attempt: Callable[[tuple[str, ...]], dict[str, Any]],
                 floor: float = MIN_INT8_MAC_SHARE) -> dict[str, Any]:
    """Search k, the number of top-ranked candidates kept in float. ``attempt(names)`` builds and returns
    the gate's selection figures (``passes``, ``agreement``). Returns the smallest passing k's attempt
    (``passes`` True) or the best one tried, and every step."""
    # A layer that alone would take the int8 share under the floor is passed over, not a wall: the
    # layers after it in the ranking may still fit.
    budget, fits = (1 - floor) * total_macs + 1e-9, []
    for c in candidates:
        if sum(f.macs for f in fits) + c.macs <= budget:
            fits.append(c)
    candidates = fits
    share = [1.0]
    for c in candidates:
        share.append(share[-1] - c.macs / total_macs)
    k_max = len(candidates)
    results: dict[int, dict[str, Any]] = {}

    def at(k: int) -> dict[str, Any]:
        if k not in results:
            names = tuple(c.name for c in candidates[:k])
            results[k] = {**attempt(names), "float_layers": k, "int8_mac_share": round(share[k], 4)}
        return results[k]

    lo, hi, k = 0, None, 1
    while k_max and k <= k_max:
        if at(k)["passes"]:
            hi = k
            break
        lo, k = k, (k * 2 if k * 2 <= k_max or k == k_max else k_max)
    if hi is None and k_max and k_max not in results:
        hi = k_max if at(k_max)["passes"] else None
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid)["passes"]:
            hi = mid
        else:
            lo = mid
    steps = [results[k] for k in sorted(results)]
    if hi is not None:
        chosen = results[hi]
    else:
        chosen = max(steps, key=lambda r: r.get("agreement") or 0, default=None)
    return {"chosen": chosen, "k_max": k_max, "steps": steps,
            "float_layers": [c.name for c in candidates[:chosen["float_layers"]]] if chosen else [],
            "float_labels": [c.label for c in candidates[:chosen["float_layers"]]] if chosen else [],
            "ranking": [{"layer": c.label, "node": c.name, "drop_db": c.drop_db, "macs": c.macs}
                        for c in candidates[:max(k_max, 1) + 4]]}
