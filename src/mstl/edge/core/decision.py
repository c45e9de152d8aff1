"""A clinical operating point and calibrated probabilities for a binary classifier.

Temperature scaling (Guo et al. 2017) rescales the log-probabilities by one scalar fitted by negative
log-likelihood; it leaves every argmax as it was. It works on probabilities as well as on logits
(a softmax's log-probabilities differ from its logits by a constant per image), so it applies to any
artifact's output - the exported graph stays the one the export gate verified, and the temperature
travels in the card. The decision threshold is then chosen on the calibrated probability of the
positive class, on data the test never sees, for a stated target: a sensitivity, a specificity,
Youden's J, or a fixed value. numpy only: the bench, the app and a board use it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .metrics import expected_calibration_error, wilson_interval

RULES = ("sensitivity", "specificity", "youden", "threshold")
DEFAULT_RULE = "sensitivity=0.95"
ECE_BINS = 15
ECE_DRAWS = 1000  # label draws behind the calibrated model's ECE interval
ECE_SEED = 0
T_RANGE = (0.05, 20.0)


def parse_rule(text: str) -> tuple[str, float | None]:
    """'sensitivity=0.95' -> ('sensitivity', 0.95); 'youden' -> ('youden', None). ValueError says why."""
    name, _, value = text.strip().partition("=")
    name = name.strip().lower()
    if name not in RULES:
        raise ValueError(f"--operating-point {text!r}: use sensitivity=S, specificity=S, youden or threshold=T")
    if name == "youden":
        if value:
            raise ValueError(f"--operating-point {text!r}: youden takes no value")
        return name, None
    try:
        v = float(value)
    except ValueError:
        raise ValueError(f"--operating-point {text!r}: {name} needs a number, e.g. {name}=0.95") from None
    if name == "threshold" and not 0 <= v <= 1:
        raise ValueError(f"--operating-point {text!r}: threshold must be in [0, 1]")
    if name != "threshold" and not 0 < v < 1:
        raise ValueError(f"--operating-point {text!r}: {name} must be between 0 and 1")
    return name, v


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, np.float64)[np.arange(len(y)), np.asarray(y)], 1e-12, 1.0)
    return float(-np.mean(np.log(p)))


def fit_temperature(probs: np.ndarray, y: np.ndarray, iters: int = 80) -> float | None:
    """The T in ``T_RANGE`` minimising the NLL of ``calibrate(probs, T)`` (golden-section search on
    log T: the NLL is unimodal in it for one scalar). None when the answers are all right: the NLL
    then falls as T goes to 0, so no temperature is identifiable from them."""
    if np.all(np.asarray(probs).argmax(1) == np.asarray(y)):
        return None
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(calibrate(probs, math.exp(a)), y), nll(calibrate(probs, math.exp(b)), y)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(calibrate(probs, math.exp(a)), y)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(calibrate(probs, math.exp(b)), y)
    return float(math.exp((lo + hi) / 2))


def rates(score: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity and specificity of ``score >= threshold`` with their 95% Wilson intervals."""
    y = np.asarray(y).astype(bool)
    pos = np.asarray(score) >= threshold
    tp, fn = int(np.sum(pos & y)), int(np.sum(~pos & y))
    tn, fp = int(np.sum(~pos & ~y)), int(np.sum(pos & ~y))
    out: dict[str, Any] = {"threshold": float(threshold), "n_positive": tp + fn, "n_negative": tn + fp}
    for key, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp)):
        out[key] = k / n if n else None
        out[f"{key}_ci95"] = list(wilson_interval(k, n)) if n else None
    return out


def rates_at(probs: np.ndarray, y: np.ndarray, decision: dict[str, Any]) -> dict[str, Any]:
    """``rates`` at a card's operating point: its threshold on the calibrated positive probability
    (``y``: class indices)."""
    pos = int(decision.get("positive_index", 1))
    score = calibrate(probs, float(decision.get("temperature", 1.0)))[:, pos]
    return rates(score, (np.asarray(y) == pos).astype(int), float(decision.get("threshold", 0.5)))


def choose_threshold(score: np.ndarray, y: np.ndarray, rule: tuple[str, float | None]) -> float:
    """The threshold the rule picks on this data. sensitivity=S: the most specific point whose sensitivity
    here is at least S (and of those, the most sensitive); specificity=S: the most sensitive point whose
    specificity is at least S; youden: the one maximising sensitivity + specificity - 1."""
    name, value = rule
    if name == "threshold":
        return float(value)
    score, y = np.asarray(score, np.float64), np.asarray(y).astype(bool)
    if y.all() or not y.any():
        raise ValueError("an operating point needs positive and negative images; this split has one class only")
    candidates = np.unique(np.concatenate([score, [0.0, 1.0 + 1e-9]]))
    sens = np.array([np.mean(score[y] >= t) for t in candidates])
    spec = np.array([np.mean(score[~y] < t) for t in candidates])
    if name == "sensitivity":  # the most specific point that keeps the sensitivity; then the most sensitive
        ok = sens >= value
        best = ok & (spec == spec[ok].max())
        best &= sens == sens[best].max()
    elif name == "specificity":
        ok = spec >= value
        best = ok & (sens == sens[ok].max())
        best &= spec == spec[best].max()
    else:
        j = sens + spec - 1
        best = j == j.max()
    k = np.flatnonzero(best)
    lo, hi = int(k.min()), int(k.max())
    # Every threshold in (the candidate below the first, the last] decides these images alike: take the
    # middle of that gap, not its edge at one image's score, so the next image like it is not a coin toss.
    return float(min(((candidates[lo - 1] if lo else 0.0) + candidates[hi]) / 2, 1.0))


def brier(probs: np.ndarray, y: np.ndarray, positive: int = 1) -> float:
    return float(np.mean((np.asarray(probs, np.float64)[:, positive] - (np.asarray(y) == positive)) ** 2))


def calibration_report(probs: np.ndarray, y: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE (15 bins) and Brier score before and after temperature scaling, and the ECE that a perfectly
    calibrated model would show on as many images with the same calibrated confidences (labels drawn
    from those probabilities, ``ECE_DRAWS`` times): on ~100 test images that is itself ~0.04-0.06, so an
    ECE over a goal such as 0.03 there says nothing against the calibration. (A bootstrap interval of the
    ECE itself is no help: resampling inflates it - on the shared X-rays 0.012 gave [0.018, 0.075].)"""
    after = calibrate(probs, temperature)
    y = np.asarray(y)
    rng = np.random.default_rng(ECE_SEED)
    n = len(y)
    cum = np.cumsum(after, axis=1)
    floor = [expected_calibration_error((rng.random((n, 1)) > cum).sum(1).clip(0, after.shape[1] - 1), after, ECE_BINS)
             for _ in range(ECE_DRAWS)]
    return {"ece_before": expected_calibration_error(y, probs, ECE_BINS),
            "ece_after": expected_calibration_error(y, after, ECE_BINS),
            "ece_if_calibrated": {"median": float(np.median(floor)),
                                  "ci95": [float(v) for v in np.percentile(floor, [2.5, 97.5])],
                                  "images": int(n), "draws": ECE_DRAWS},
            "brier_before": brier(probs, y), "brier_after": brier(after, y), "ece_bins": ECE_BINS}


def operating_point(val_probs: np.ndarray, val_y: np.ndarray, rule_text: str = DEFAULT_RULE,
                    positive: int = 1) -> dict[str, Any]:
    """Temperature and threshold fitted on validation answers (``val_y``: class indices; ``positive``:
    the positive class's index)."""
    rule = parse_rule(rule_text)
    fitted = fit_temperature(val_probs, np.asarray(val_y))
    t = 1.0 if fitted is None else fitted
    y = (np.asarray(val_y) == positive).astype(int)
    score = calibrate(val_probs, t)[:, positive]
    threshold = choose_threshold(score, y, rule)
    out = {"rule": rule_text, "temperature": t, "threshold": threshold, "validation": rates(score, y, threshold)}
    if fitted is None:
        out["temperature_note"] = ("not fitted: every validation image is classified right, so the likelihood "
                                   "has no minimum (it falls as T goes to 0); T = 1, the model's own probabilities")
    elif min(abs(math.log(fitted / b)) for b in T_RANGE) < 1e-3:
        out["temperature_note"] = f"at the edge of the searched range {T_RANGE}: the validation set can hardly fix it"
    return out


def decide(probs: np.ndarray, decision: dict[str, Any] | None, band: float = 0.0) -> list[dict[str, Any]]:
    """Per image: the calibrated positive probability and the decision at the card's operating point;
    inside ``band`` of the threshold, 'uncertain'. Without a ``decision`` (an older card), argmax at 0.5."""
    probs = np.asarray(probs, np.float64)
    if not decision:
        return [{"positive_probability": float(p[1]) if len(p) == 2 else None, "side": None,
                 "label_index": int(np.argmax(p)), "uncertain": False, "threshold": 0.5, "calibrated": False}
                for p in probs]
    pos = int(decision.get("positive_index", 1))
    cal = calibrate(probs, float(decision.get("temperature", 1.0)))
    t = float(decision["threshold"])
    out = []
    for p in cal:
        s = float(p[pos])
        out.append({"positive_probability": s, "side": "above" if s >= t else "below",
                    "label_index": pos if s >= t else 1 - pos, "uncertain": bool(band and abs(s - t) < band),
                    "threshold": t, "calibrated": True})
    return out
