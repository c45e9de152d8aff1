"""Is an int8 build's logit error linear in the pooled features (could a refitted head cancel it)?
Usage: RUN EXPORTS_DIR ARTIFACT PIXELS.npy [BAND]

Ridge regressions of the build's logit-difference error on the Keras model's 1,280 pooled features,
fitted on the selection images within BAND (probability margin, default 0.9) of the boundary and
judged on the confirmation images: the error's spread near the boundary before and after, and the
confirmation flips with the fitted part taken off."""
import sys
from pathlib import Path

import numpy as np

from mstl.edge.core.agreement import GATE_LIST, GATE_REFERENCE, SELECTION
from mstl.edge.core.filelist import read_list
from mstl.edge.core.metrics import DECISIVE_MARGIN
from mstl.edge.core.runtimes import load_runtime
from mstl.tf_env import keras
from _common import deployed

run, ex, artifact, pixels = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], np.load(sys.argv[4])
band = float(sys.argv[5]) if len(sys.argv) > 5 else 0.9
_, parts = read_list(ex / GATE_LIST)
ref, sel = np.load(ex / GATE_REFERENCE), parts == SELECTION
probs = load_runtime(ex / artifact, threads=2).predict(pixels)
m = deployed(run)
pool = next(l for l in m.layers if isinstance(l, keras.layers.GlobalAveragePooling2D))
features = keras.Model(m.inputs, pool.output)
F = np.concatenate([np.asarray(features(pixels[i:i + 128].astype(np.float32), training=False))
                    for i in range(0, len(pixels), 128)])


def ld(p):
    return np.log(np.clip(p[:, 1], 1e-7, 1)) - np.log(np.clip(p[:, 0], 1e-7, 1))


err, d = ld(probs) - ld(ref), ld(ref)
margin = np.abs(ref[:, 1] - ref[:, 0])
near, conf = margin < band, ~sel
X = np.c_[F, np.ones(len(F))]
fit = sel & near
print(f"{artifact}: fitted on {int(fit.sum())} selection images within {band} of the boundary, "
      f"judged on {int((conf & near).sum())} confirmation images")


def flips(e):
    c = conf & (margin > DECISIVE_MARGIN)
    return int(((d[c] > 0) != (d[c] + e[c] > 0)).sum())


for lam in (1e-1, 1, 10, 100, 1e3, 1e4, 1e5):
    w = np.linalg.solve(X[fit].T @ X[fit] + lam * np.eye(X.shape[1]), X[fit].T @ err[fit])
    rest = err - X @ w
    print(f"  ridge {lam:g}: error std near the boundary, confirmation {err[conf & near].std():.3f} -> "
          f"{rest[conf & near].std():.3f} (selection {err[fit].std():.3f} -> {rest[fit].std():.3f}); "
          f"confirmation flips {flips(err)} -> {flips(rest)}")
