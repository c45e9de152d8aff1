"""The verification gate: an artifact is compared with its Keras model on target images fed as a
device feeds them, and is "ok" only above its format's agreement threshold.

Agreement is a property of the conversion, not of generalisation, so every target image that did not
calibrate the artifact counts (held-out and training images alike); accuracy and ROC AUC deltas,
which are about generalisation, use the held-out images alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import DECISIVE_MARGIN, roc_auc, top1_agreement
from .runtimes import Runtime

# The gate's images as export leaves them in the exports folder, so that the bench can judge the
# artifacts again elsewhere (bench/emulate.py): every gate image with its label, or SELECTION for a
# selection image, and the Keras model's probabilities for them.
GATE_LIST = "gate.tsv"
GATE_REFERENCE = "gate-reference.npy"
SELECTION = -2  # the gate list's label for a selection image

MARGIN = DECISIVE_MARGIN
CONSTANT_STD = 1e-3
MIN_DECISIVE_FLIPS = 3  # fewer images than this many flips' worth below the threshold: verdict is noise
BOOTSTRAP = 2000


def verify(rt: Runtime, pixels: np.ndarray, reference: np.ndarray, min_agreement: float,
           labels: np.ndarray | None = None, heldout: np.ndarray | None = None, probs: np.ndarray | None = None
           ) -> dict[str, Any]:
    """``labels`` (with the boolean mask ``heldout``) add accuracy and ROC AUC deltas against the Keras
    model on the held-out images, with paired-bootstrap 95% intervals."""
    probs = rt.predict(pixels) if probs is None else probs
    top1 = top1_agreement(probs, reference)
    n, agree, flips = top1["n_compared"], top1["agreement"], top1["flips"]
    constant = bool(reference.std(axis=0).max() < CONSTANT_STD)
    out: dict[str, Any] = {
        "agreement": agree, "n_compared": n, "n_images": int(len(pixels)), "flips": flips,
        "agreement_ci95": top1["ci95"],
        "agreement_all": float(np.mean(probs.argmax(1) == reference.argmax(1))) if len(pixels) else None,
        "n_near_ties": int(len(pixels) - n),
        "max_abs_diff": top1["max_abs_diff"],
        "threshold": min_agreement, "reference_nearly_constant": constant,
    }
    if labels is not None:
        mask = np.ones(len(labels), bool) if heldout is None else np.asarray(heldout, bool)
        out["heldout"] = paired_deltas(np.asarray(labels)[mask], reference[mask], probs[mask])
    if n == 0:
        out["status"], out["reason"] = "failed", f"no image with a top-1 margin above {MARGIN}: nothing to compare"
    elif agree < min_agreement:
        out["status"] = "failed"
        out["reason"] = (f"top-1 agreement {100 * agree:.2f}% is below the {100 * min_agreement:.1f}% threshold "
                         f"by {100 * (min_agreement - agree):.2f} points ({n} images compared, {flips} flips)")
    else:
        out["status"] = "ok"
    if n and n * (1 - min_agreement) < MIN_DECISIVE_FLIPS:
        out["warning"] = (f"only {n} images compared: {MIN_DECISIVE_FLIPS} flips move agreement across the "
                          f"{100 * min_agreement:.1f}% threshold, so the verdict is close to noise; verify on more images")
    if constant:  # beside the few-images warning, not instead of it: both are true
        note = ("the Keras model's outputs are nearly constant over these images: any artifact "
                "'agrees' with it, so agreement proves little")
        out["warning"] = f"{out['warning']}; {note}" if out.get("warning") else note
    return out


def paired_accuracy_delta(y: np.ndarray, ref_pred: np.ndarray, pred: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Accuracy of the artifact's predicted labels minus the Keras model's, with a 95% paired-bootstrap
    interval over images (the same resamples as ``paired_deltas`` for the same ``seed`` and count)."""
    y, n = np.asarray(y), len(y)
    if n == 0:
        return {"n": 0}
    return _accuracy_delta(y, ref_pred, pred, _resamples(n, seed))


def _resamples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP, n))


def _accuracy_delta(y: np.ndarray, ref_pred: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    n = len(y)
    hit_a, hit_r = np.asarray(pred) == y, np.asarray(ref_pred) == y
    d_acc = hit_a[idx].mean(1) - hit_r[idx].mean(1)
    return {"n": int(n), "accuracy_keras": float(hit_r.mean()), "accuracy": float(hit_a.mean()),
            "accuracy_delta": float(hit_a.mean() - hit_r.mean()),
            "accuracy_delta_ci95": [float(np.percentile(d_acc, 2.5)), float(np.percentile(d_acc, 97.5))]}


def paired_deltas(y: np.ndarray, ref: np.ndarray, probs: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Accuracy (and, for two classes, ROC AUC) of the artifact minus the Keras model's on the same
    images, with 95% intervals from a paired bootstrap over images."""
    n = len(y)
    if n == 0:
        return {"n": 0}
    idx = _resamples(n, seed)
    out = _accuracy_delta(np.asarray(y), ref.argmax(1), probs.argmax(1), idx)
    if ref.shape[1] == 2 and len(set(y.tolist())) == 2:
        auc_r, auc_a = roc_auc(y, ref[:, 1]), roc_auc(y, probs[:, 1])
        deltas = []
        for rows in idx[:500]:  # AUC is costlier; 500 resamples give the interval to ~0.1 point
            a, r = roc_auc(y[rows], probs[rows, 1]), roc_auc(y[rows], ref[rows, 1])
            if a is not None and r is not None:
                deltas.append(a - r)
        out.update({"roc_auc_keras": auc_r, "roc_auc": auc_a, "roc_auc_delta": auc_a - auc_r,
                    "roc_auc_delta_ci95": [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))]})
    return out
