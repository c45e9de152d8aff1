"""The verification gate: an artifact is compared with its Keras model on held-out images fed as a
device feeds them, and is "ok" only above its format's agreement threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtimes import Runtime

MARGIN = 0.05  # near-ties (top-1 minus top-2 below this) say nothing about agreement
CONSTANT_STD = 1e-3


def verify(rt: Runtime, pixels: np.ndarray, reference: np.ndarray, min_agreement: float) -> dict[str, Any]:
    probs = rt.predict(pixels)
    ref_sorted = np.sort(reference, axis=1)
    margin = ref_sorted[:, -1] - ref_sorted[:, -2]
    clear = margin > MARGIN
    n = int(clear.sum())
    agree = float(np.mean(probs[clear].argmax(1) == reference[clear].argmax(1))) if n else None
    constant = bool(reference.std(axis=0).max() < CONSTANT_STD)
    out: dict[str, Any] = {
        "agreement": agree, "n_compared": n, "n_images": int(len(pixels)),
        "n_near_ties": int(len(pixels) - n),
        "max_abs_diff": float(np.abs(probs - reference).max()) if len(pixels) else None,
        "threshold": min_agreement, "reference_nearly_constant": constant,
    }
    if n == 0:
        out["status"], out["reason"] = "failed", f"no image with a top-1 margin above {MARGIN}: nothing to compare"
    elif agree < min_agreement:
        out["status"] = "failed"
        out["reason"] = (f"top-1 agreement {100 * agree:.2f}% is below the {100 * min_agreement:.1f}% threshold "
                         f"by {100 * (min_agreement - agree):.2f} points ({n} images compared)")
    else:
        out["status"] = "ok"
    if constant:
        out["warning"] = ("the Keras model's outputs are nearly constant over these images: any artifact "
                          "'agrees' with it, so agreement proves little")
    return out
