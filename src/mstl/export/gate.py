"""The gate's images, split once into a part that chooses and a part that judges.

Every image that did not calibrate an artifact can check its agreement with the Keras model (no label
needed), so the gate takes them all - held-out target images, training images that did not calibrate,
and extra unlabelled images of the same kind (generated ones for the demo, ``--gate-extra`` for real
data). A fixed-seed split makes a *selection* part, on which the recipe ladder and the mixed-precision
search choose, and a *confirmation* part, which gives the verdict that ships and is never used to
choose: a recipe picked because it passed on some images is judged on others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..edge.core.agreement import paired_deltas, verify

SELECTION_SHARE = 1 / 3
SPLIT_SEED = 0
# A rung is chosen only when its selection agreement clears the threshold by this much: with ~1,000
# selection images one flip is 0.1 point, so a rung that merely touches the threshold there would fail
# on the confirmation images about half the time.
SELECTION_MARGIN = 0.005
PROVISIONAL_BELOW = 1000  # confirmation images under which a verdict is marked provisional
CONFIRM_WANTED = 2000  # confirmation images the gate asks for (the demo draws extra images to reach it)


def images_needed(confirm: int) -> int:
    """Gate images in all for ``confirm`` confirmation images."""
    return int(np.ceil(confirm / (1 - SELECTION_SHARE)))


def split(n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """The selection mask over ``n`` gate images (fixed seed: the same images on every export)."""
    order = np.random.default_rng(seed).permutation(n)
    mask = np.zeros(n, bool)
    mask[order[:int(round(n * SELECTION_SHARE))]] = True
    return mask


def selection_target(threshold: float) -> float:
    return min(threshold + SELECTION_MARGIN, (1 + threshold) / 2)


@dataclass
class Gate:
    pixels: np.ndarray
    reference: np.ndarray  # the Keras model's probabilities
    labels: np.ndarray | None  # for the held-out images' accuracy deltas
    heldout: np.ndarray  # bool: held-out target images (labelled)
    selection: np.ndarray  # bool: chooses; the rest confirms

    @classmethod
    def build(cls, pixels, reference, labels, heldout) -> "Gate":
        return cls(pixels, reference, labels, np.asarray(heldout, bool), split(len(pixels)))

    @property
    def confirmation(self) -> np.ndarray:
        return ~self.selection

    def choose(self, probs_selection: np.ndarray, threshold: float) -> dict[str, Any]:
        """Agreement on the selection images; ``passes`` when it clears the threshold with margin."""
        sel = self.selection
        check = verify(None, self.pixels[sel], self.reference[sel], threshold, probs=probs_selection)
        target = selection_target(threshold)
        return {"agreement": check["agreement"], "flips": check["flips"], "n_compared": check["n_compared"],
                "agreement_ci95": check["agreement_ci95"], "max_abs_diff": check["max_abs_diff"],
                "target": target, "passes": check["agreement"] is not None and check["agreement"] >= target}

    def judge(self, probs: np.ndarray, threshold: float) -> dict[str, Any]:
        """The verdict: agreement on the confirmation images (with its 95% interval); the selection
        figure beside it; accuracy deltas on every held-out image (they choose nothing)."""
        conf = self.confirmation
        out = verify(None, self.pixels[conf], self.reference[conf], threshold, probs=probs[conf])
        out["on"] = "confirmation images (never used to choose a recipe or a layer)"
        out["selection"] = self.choose(probs[self.selection], threshold)
        out["gate_images"] = int(len(self.pixels))
        out["provisional"] = bool(out["n_compared"] < PROVISIONAL_BELOW)
        if out["provisional"]:
            note = (f"provisional: {out['n_compared']} confirmation images compared, fewer than "
                    f"{PROVISIONAL_BELOW}; add unlabelled images of the same kind with --gate-extra DIR")
            out["warning"] = f"{out['warning']}; {note}" if out.get("warning") else note
        if self.labels is not None and self.heldout.any():
            h = self.heldout
            out["heldout"] = paired_deltas(np.asarray(self.labels)[h], self.reference[h], probs[h])
        return out
