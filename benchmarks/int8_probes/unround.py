"""How much of the int8-ready model's error (weights rounded, activations float) the layers a mixed build
keeps in float carry: the int8-ready model again with those convolutions left unrounded (``int8_ready(keep=)``).

    PYTHONPATH=src .venv/bin/python benchmarks/int8_probes/unround.py RUN PIXELS.npy CONV[,CONV...] [CONV,... ...]

Each argument after PIXELS is one comma-separated set of convolution layer names to leave unrounded."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import calibration_pixels, deployed  # noqa: E402

from mstl.edge.core.metrics import top1_agreement  # noqa: E402
from mstl.export.bias_correction import int8_ready  # noqa: E402
from mstl.export.gate import split  # noqa: E402

run = Path(sys.argv[1])
ref = np.load(run / "exports" / "gate-reference.npy")
px = np.load(sys.argv[2]).astype(np.float32)
conf = ~split(len(px))
cal = calibration_pixels(run)


def ld(p):
    p = np.clip(p, 1e-6, 1)
    return np.log(p[:, 1]) - np.log(p[:, 0])


near = np.abs(ref[:, 1] - .5) < .25
for arg in [""] + sys.argv[3:]:
    keep = frozenset(a for a in arg.split(",") if a)
    m = deployed(run)
    int8_ready(m, cal, keep=keep)
    p = m.predict(px, batch_size=64, verbose=0)
    t = top1_agreement(p[conf], ref[conf])
    e = ld(p) - ld(ref)
    print(f"unrounded {sorted(keep) or 'none'}: confirmation {100 * t['agreement']:.2f}% ({t['flips']} of "
          f"{t['n_compared']}); logit-diff error near boundary {e[near].mean():+.3f} +- {e[near].std():.3f}", flush=True)
