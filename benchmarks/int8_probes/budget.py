"""Which activation tensors make the int8 noise? Usage: RUN PIXELS.npy.

Checks export/noise.py's first-order shares against the simulated int8 build (noise.FakeQuant) on a run's
gate: flips and error with every tensor quantized, and with the k largest shares left in float."""
import sys
from pathlib import Path

import numpy as np

from mstl.edge.core.metrics import top1_agreement
from mstl.export.bias_correction import int8_ready
from mstl.export.gate import split
from mstl.export.noise import NEAR_IMAGES, FakeQuant, shares
from mstl.tf_env import tf
from _common import calibration_pixels, deployed

run = Path(sys.argv[1]); ex = run / "exports"
ref = np.load(ex / "gate-reference.npy"); px = np.load(sys.argv[2]); conf = ~split(len(px)); sel = ~conf
cal = calibration_pixels(run); m = deployed(run); int8_ready(m, cal); fq = FakeQuant(m, cal)


def ld(p):
    p = np.clip(p, 1e-6, 1)
    return np.log(p[:, 1]) - np.log(p[:, 0])


def probs(**kw):
    return np.concatenate([tf.nn.softmax(fq(px[i:i + 64].astype(np.float32), **kw)).numpy() for i in range(0, len(px), 64)])


def report(label, p):
    ts, tc = top1_agreement(p[sel], ref[sel]), top1_agreement(p[conf], ref[conf])
    e = ld(p) - ld(ref); near = np.abs(ref[:, 1] - .5) < .25
    print(f"{label}: selection {ts['flips']} flips, confirmation {tc['flips']} ({100 * tc['agreement']:.2f}%); "
          f"err near boundary {e[near].mean():+.3f} +- {e[near].std():.3f}", flush=True)


report("int8-ready float", probs(quantize=False))
report("simulated int8 (all tensors)", probs())
idx = np.flatnonzero(sel)
idx = idx[np.argsort(np.abs(ld(ref[idx])))][:NEAR_IMAGES]
share = shares(fq, px[idx])
order = sorted(share, key=lambda n: -share[n])
cum = 0.0
for n in order[:40]:
    cum += share[n]
    print(f"  {n:34s} step {fq.scale(n):.4f}  share {100 * share[n]:5.1f}%  cumulative {100 * cum:5.1f}%")
for k in (1, 2, 4, 8, 16, 24, 32):
    report(f"simulated, {k} largest shares float", probs(skip=frozenset(order[:k])))
