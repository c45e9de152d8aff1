"""The decision offset an int8 artifact leaves near the boundary, and what removing it would do.

    PYTHONPATH=src python benchmarks/int8_probes/offset.py RUN/exports [ARTIFACT ...]

For each int8 artifact of an export (two-class classifiers): the error of its logit difference
(log p1 - log p0) against the Keras model's on the ERROR_POOL decisive selection images nearest the
boundary - mean, median, std - and the confirmation flips as shipped and with that selection mean
subtracted from every logit difference (the head's offset moved; simulated on the outputs, no build).
The mean is what the BatchNorm-level bias corrections do not see: they even out each channel's mean
over all calibration images, most of them far from the boundary.
"""
import json
import sys
from pathlib import Path

import numpy as np

from mstl.edge.core.agreement import GATE_LIST, GATE_REFERENCE, SELECTION
from mstl.edge.core.cards import read_manifest
from mstl.edge.core.filelist import load_sources, read_list
from mstl.edge.core.metrics import top1_agreement
from mstl.edge.core.runtimes import load_runtime
from mstl.export.gate import ERROR_POOL, nearest_boundary

EPS = 1e-7


def logit_diff(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p[:, 1]) - np.log(p[:, 0])


def from_diff(d: np.ndarray) -> np.ndarray:
    p1 = 1 / (1 + np.exp(-d))
    return np.stack([1 - p1, p1], 1)


def main(exports: Path, names: list[str]) -> None:
    manifest = read_manifest(exports)
    sources, parts = read_list(exports / GATE_LIST)
    ref = np.load(exports / GATE_REFERENCE)
    sel = parts == SELECTION
    pixels = load_sources(sources, manifest["image_size"], manifest["resize_method"])
    rows = [a for a in manifest["artifacts"] if a.get("precision") == "int8" and a.get("size_bytes")]
    rows = [a for a in rows if not names or a["name"] in names]
    d_ref = logit_diff(ref)
    margin = np.abs(ref[:, 1] - ref[:, 0])
    sel_idx = np.flatnonzero(sel)
    pool = sel_idx[nearest_boundary(ref[sel_idx])[1]]  # the pool export/offset.py measures on
    wide = sel_idx[nearest_boundary(ref[sel_idx], 2 * ERROR_POOL)[1]]
    print(f"gate images {len(ref)}: selection {int(sel.sum())}, confirmation {int((~sel).sum())}; "
          f"error pool {len(pool)} (selection margin <= {margin[pool].max():.3f})")
    card0 = json.loads((exports / (rows[0]["path"] + ".json")).read_text()) if rows else {}
    op = card0.get("decision") or {}
    for a in rows:
        probs = load_runtime(exports / a["path"], threads=2).predict(pixels)
        d = logit_diff(probs)
        err = d - d_ref
        print(f"{a['name']} ({a.get('recipe', '?')}): near-boundary logit error mean {err[pool].mean():+.3f} "
              f"median {float(np.median(err[pool])):+.3f} std {float(err[pool].std()):.3f}")
        slope, icpt = np.polyfit(d_ref[wide], err[wide], 1)
        fixes = {"as shipped": d}
        for k in (100, ERROR_POOL):
            fixes[f"mean of {k} nearest removed"] = d - float(err[pool[:k]].mean())
        fixes[f"line on {len(wide)} nearest (a {icpt:+.3f}, b {slope:+.3f}) removed"] = (d - icpt) / (1 + slope)
        for label, fixed_d in fixes.items():
            fixed = from_diff(fixed_d)
            c, s_ = top1_agreement(fixed[~sel], ref[~sel]), top1_agreement(fixed[sel], ref[sel])
            line = f"  {label}: confirmation flips {c['flips']}/{c['n_compared']}, selection {s_['flips']}"
            if op:
                cut = np.log(op["threshold"] / (1 - op["threshold"]))
                want, got = d_ref / op["temperature"] >= cut, fixed_d / op["temperature"] >= cut
                line += f"; operating-point decisions differing on confirmation {int((want != got)[~sel].sum())}"
            print(line)
        if op:
            near_op = np.flatnonzero(sel)[np.argsort(np.abs(d_ref[sel] / op["temperature"] - cut))[:ERROR_POOL]]
            off = float(err[near_op].mean())
            got = (d - off) / op["temperature"] >= cut
            print(f"  mean of {ERROR_POOL} nearest the operating point ({off:+.3f}) removed: operating-point "
                  f"decisions differing on confirmation {int((want != got)[~sel].sum())}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
