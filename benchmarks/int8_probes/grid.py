"""How much of the int8 error is the weight grid, and what GPTQ rounding does to it.
Usage: RUN PIXELS.npy [LEVELS:ROUNDING ...] (default 127:nearest 64:nearest 64:gptq; PIXELS.npy is written
from the gate's list when it does not exist).

For each int8-ready model (weights on the 127-level grid, or ONNX Runtime's 64-level 7-bit one; rounded
to nearest or by GPTQ): flips with float activations and in the simulated int8 build (noise.FakeQuant),
on the gate's selection and confirmation images, and the logit-difference error near the boundary."""
import sys
from pathlib import Path

import numpy as np

from mstl.edge.core.filelist import read_list
from mstl.edge.core.metrics import top1_agreement
from mstl.edge.core.preprocess import Preprocess
from mstl.export.bias_correction import int8_ready
from mstl.export.gate import split
from mstl.export.noise import FakeQuant
from mstl.tf_env import tf
from _common import calibration_pixels, deployed

run = Path(sys.argv[1]); ex = run / "exports"; cache = Path(sys.argv[2])
ref = np.load(ex / "gate-reference.npy")
if not cache.exists():
    np.save(cache, Preprocess(150, "bilinear").load_many(read_list(ex / "gate.tsv")[0]))
px = np.load(cache); conf = ~split(len(px)); sel = ~conf
# Only images within 0.3 of the boundary can flip at these errors (logit-difference error std ~0.2): the
# others are kept out of the simulation, and counted as agreeing.
near = np.abs(ref[:, 1] - 0.5) < 0.3
n_sel, n_conf = int(sel.sum()), int(conf.sum())
px, ref, conf, sel = px[near], ref[near], conf[near], sel[near]
print(f"{int(near.sum())} of {len(near)} gate images within 0.3 of the boundary", flush=True)
cal = calibration_pixels(run)


def ld(p):
    p = np.clip(p, 1e-6, 1)
    return np.log(p[:, 1]) - np.log(p[:, 0])


def report(label, p):
    ts, tc = top1_agreement(p[sel], ref[sel]), top1_agreement(p[conf], ref[conf])
    e = ld(p) - ld(ref); near = np.abs(ref[:, 1] - .5) < .25
    print(f"{label}: selection {ts['flips']} flips of {n_sel}, confirmation {tc['flips']} of {n_conf}; "
          f"err near boundary {e[near].mean():+.3f} +- {e[near].std():.3f}", flush=True)


for spec in sys.argv[3:] or ["127:nearest", "64:nearest", "64:gptq"]:
    levels, rounding = int(spec.split(":")[0]), spec.split(":")[1]
    m = deployed(run); info = int8_ready(m, cal, levels=levels, rounding=rounding)
    fq = FakeQuant(m, cal)
    print(f"{levels}-level weights, {rounding} rounding (median kernel change {info['median_kernel_change']})")
    for quantize in (False, True):
        p = np.concatenate([tf.nn.softmax(fq(px[i:i + 64].astype(np.float32), quantize=quantize)).numpy()
                            for i in range(0, len(px), 64)])
        report(f"  {'simulated int8' if quantize else 'int8-ready float'}", p)
