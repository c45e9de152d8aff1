"""Mixed precision, the last int8 rung: the best full-int8 build with the fewest ops kept in float that
bring its agreement on the selection images over the gate's target.

What is kept in float is a list of candidates, tried as a prefix: k = 1, 2, 4, ... until the gate's
selection target is met, then the smallest passing k between the last two. A candidate is a set of
nodes of the converted graph:
- an *outlier layer*, one whose own step loses at least ``OUTLIER_DB`` of signal-to-quantization
  noise in the full-int8 build (the SQNR-drop report of ``--explain``: LiteRT tensors by name, ONNX
  Runtime's ``qdq_loss_debug``): a layer whose weights the int8 grid cannot hold. These come first.
- a *region* (export/noise.py): the ops that make and read one activation tensor, so that the tensor
  leaves the int8 grid - ranked by its share of the answer's int8 error per multiply-accumulate it
  takes out of int8. Keeping single layers in float cannot do this: such a layer still reads and
  writes int8 tensors (measured on the shared chest X-rays: the 17 depthwise convolutions in float
  left 17 of 18 flips).
A k whose ops would leave less than ``MIN_INT8_MAC_SHARE`` of the multiply-accumulates in int8 is
never tried; when none passes, the step with the fewest flips estimated from its measured count and
the count its errors predict (``sure_agreement``) goes to confirmation, which rejects it under the gate. The ops kept in float, the int8 share and every
step are recorded in the card."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..edge.core.formats import MIN_INT8_MAC_SHARE
from .diagnose import blame, litert_layers, onnx_layers
from .macs import LayerMacs

RANK_IMAGES = 32  # selection images the per-layer SQNR is measured on
OUTLIER_DB = 10.0  # a layer's own SQNR drop from which its weights alone are the problem
REGION_EPS = 0.002  # share of all MACs added to a region's cost: among free regions, the noisiest first


@dataclass(frozen=True)
class Candidate:
    name: str  # the layer or tensor it is for (a layer: its ONNX node / TFLite output tensor name)
    macs: int  # what its nodes add to the MACs kept in float by the candidates before it
    drop_db: float  # a layer: the SQNR its own step loses; a region: its % of the int8 error variance
    label: str = ""  # for people
    nodes: tuple[str, ...] = ()  # what the builder keeps in float (a layer: its own name)
    kind: str = "layer"

    @property
    def float_nodes(self) -> tuple[str, ...]:
        return self.nodes or (self.name,)


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


def outliers(ranked: list[Candidate]) -> list[Candidate]:
    """The layers whose own step loses ``OUTLIER_DB`` or more, labelled apart from the regions."""
    return [replace(c, label=f"{c.label} (own step)") for c in ranked if c.drop_db >= OUTLIER_DB]


def regions(noise, unit_nodes: dict[str, tuple[str, ...]], node_macs: dict[str, int],
            taken: tuple[Candidate, ...] = ()) -> list[Candidate]:
    """The noise measurement's tensors (export/noise.py ``Noise``) as regions of the converted graph,
    greedily by share of the error per MAC that each adds to what is already in float (regions share
    ops: a block's projection and the addition after it both need the next expansion). ``unit_nodes``:
    a Keras layer -> its nodes in this graph; a tensor whose layers the graph does not show is left out."""
    total = sum(node_macs.values()) or 1
    kept = {n for c in taken for n in c.float_nodes}
    pool = []
    for t in noise:
        if t.share <= 0 or not all(u in unit_nodes for u in t.units):
            continue
        pool.append((t, tuple(dict.fromkeys(n for u in t.units for n in unit_nodes[u]))))
    out = []
    while pool:
        def gain(item):
            t, nodes = item
            return t.share / (sum(node_macs.get(n, 0) for n in nodes if n not in kept) + REGION_EPS * total)
        best = max(pool, key=gain)
        pool.remove(best)
        t, nodes = best
        added = sum(node_macs.get(n, 0) for n in nodes if n not in kept)
        kept.update(nodes)
        out.append(Candidate(t.tensor, added, round(100 * t.share, 2), t.tensor, nodes, "region"))
    return out


def sure_agreement(step: dict[str, Any]) -> float:
    """What a step that did not pass is ranked by: its flips estimated from both the count it measured
    and the count its errors predict (``gate.expected_flips``), each weighted by the inverse of its
    variance - Poisson for the measured count, the prediction's standard error for the other. The
    prediction carries most of the weight: on ~1,900 selection images a build flips 3-20 images, a count
    with Poisson noise of 25-60%, while the prediction averages every near-boundary error over every
    margin (measured on the shared chest X-rays, Intel Xeon, predicted against actual confirmation flips
    of four shipped builds: 19.2 / 24, 15.3 / 14, 20.4 / 21, 28.7 / 29 of ~3,720, standard errors
    2.0-3.2; their selection counts were 3, 3, 11, 17 of ~1,860). The lower of the two figures, the rule
    before, picked the paper-rule TFLite build that flipped 3 by luck (5.6 predicted) over one predicted
    at 4.0; on confirmation they flipped 24 and 16 of 3,720. A count
    over the prediction by more than 2 Poisson standard deviations and one flip says the prediction
    missed something: the count alone stands then."""
    measured, expected = step.get("agreement") or 0.0, step.get("expected_agreement")
    n, se = step.get("n_compared") or 0, step.get("expected_agreement_se")
    if expected is None or not n:
        return measured
    counted, predicted = (1 - measured) * n, (1 - expected) * n
    if counted > predicted + 2 * np.sqrt(predicted) + 1:
        return measured
    if se is None:
        return expected
    w_count, w_pred = 1 / max(predicted, 1.0), 1 / max((se * n) ** 2, 1e-6)
    return 1 - (counted * w_count + predicted * w_pred) / (w_count + w_pred) / n


def fewest_float(candidates: list[Candidate], node_macs: dict[str, int], attempt: Callable[[tuple[str, ...]], dict[str, Any]],
                 floor: float = MIN_INT8_MAC_SHARE) -> dict[str, Any]:
    """Search k, the number of candidates (a prefix) kept in float. ``node_macs``: every weighted node
    of the graph and its MACs. ``attempt(nodes)`` builds and returns the gate's selection figures
    (``passes``, ``agreement``). Returns the smallest passing k's attempt (``passes`` True) or the best
    one tried, and every step."""
    # A candidate that would take the int8 share under the floor is passed over, not a wall: the ones
    # after it in the ranking may still fit.
    total = sum(node_macs.values()) or 1
    budget, fits, kept, share = (1 - floor) * total + 1e-9, [], set(), [1.0]
    for c in candidates:
        new = set(c.float_nodes) - kept
        cost = sum(node_macs.get(n, 0) for n in new)
        if (1 - share[-1]) * total + cost <= budget:
            fits.append(c)
            kept |= new
            share.append(share[-1] - cost / total)
    candidates = fits
    k_max = len(candidates)
    results: dict[int, dict[str, Any]] = {}

    def nodes_of(k: int) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for c in candidates[:k] for n in c.float_nodes))

    def at(k: int) -> dict[str, Any]:
        if k not in results:
            results[k] = {**attempt(nodes_of(k)), "float_candidates": k, "int8_mac_share": round(share[k], 4)}
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
    chosen = results[hi] if hi is not None else max(steps, key=sure_agreement, default=None)
    k = chosen["float_candidates"] if chosen else 0
    return {"chosen": chosen, "k_max": k_max, "steps": steps, "float_nodes": list(nodes_of(k)),
            "float_labels": [c.label for c in candidates[:k]],
            "ranking": [{"layer": c.label, "kind": c.kind, "score": c.drop_db, "macs": c.macs, "nodes": list(c.float_nodes)}
                        for c in candidates[:max(k_max, 1) + 4]]}
