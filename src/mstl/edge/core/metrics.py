"""Classification statistics medical users expect (numpy only: the bench on a board uses them too)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# Near-ties (top-1 minus top-2 probability below this) say nothing about whether two models agree:
# the export gate, the verification bundle and the device page compare only the images above it.
DECISIVE_MARGIN = 0.05


def top_margin(probs: np.ndarray) -> np.ndarray:
    """Each row's top probability minus its second."""
    ranked = np.sort(np.asarray(probs, np.float64), axis=1)
    return ranked[:, -1] - ranked[:, -2]


def decisive(reference: np.ndarray) -> np.ndarray:
    """The rows the reference answers decisively (top-1 margin over ``DECISIVE_MARGIN``): ties are not judged."""
    return top_margin(reference) > DECISIVE_MARGIN


def top1_agreement(probs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement with the reference on the images it answers decisively (margin over
    ``DECISIVE_MARGIN``), its 95% interval, and the largest probability difference on all of them."""
    probs, reference = np.asarray(probs, np.float64), np.asarray(reference, np.float64)
    clear = decisive(reference)
    n = int(clear.sum())
    same = int(np.sum(probs[clear].argmax(1) == reference[clear].argmax(1)))
    return {"agreement": same / n if n else None, "n_compared": n, "flips": n - same,
            "ci95": list(wilson_interval(same, n)) if n else None,
            "max_abs_diff": float(np.abs(probs - reference).max()) if len(probs) else None}


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion, clamped to [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return min(lo, p), max(hi, p)


def flips_p_value(flips: int, n: int, max_rate: float) -> float:
    """P(at least ``flips`` flips in ``n`` images) for an artifact that flips a ``max_rate`` share of them:
    small only when the count says the rate is higher. A gate at 99% judged on 100 images by its
    threshold alone fails a build that meets it one time in four (2 flips); this does not."""
    if flips <= 0:
        return 1.0
    if max_rate <= 0:
        return 0.0
    if max_rate >= 1:
        return 1.0
    log_p, log_q = math.log(max_rate), math.log1p(-max_rate)
    below = sum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
                for k in range(flips))
    return max(0.0, 1.0 - below)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def roc_auc(y_true: Sequence[int], score: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties); None with one class only."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width confidence bins over the top-1 probability."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_report(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy with a Wilson interval, balanced accuracy, per-class precision/recall, ROC AUC, ECE,
    confusion matrix; sensitivity/specificity when there are two classes (index 1 = positive)."""
    y = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    pred = probs.argmax(axis=1)
    n = len(y)
    correct = int((pred == y).sum())
    lo, hi = wilson_interval(correct, n)
    cm = confusion_matrix(y, pred, k)
    per_class = {}
    recalls = []
    for c, name in enumerate(class_names):
        tp = int(cm[c, c])
        support = int(cm[c].sum())
        predicted = int(cm[:, c].sum())
        recall = tp / support if support else None
        if recall is not None:
            recalls.append(recall)
        per_class[name] = {"precision": tp / predicted if predicted else None, "recall": recall, "support": support}
    out: dict[str, Any] = {
        "n": n,
        "accuracy": correct / n if n else None,
        "ci_low": lo,
        "ci_high": hi,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ece": expected_calibration_error(y, probs) if n else None,
    }
    if k == 2:
        tn, fp, fn, tp = (int(v) for v in cm.ravel())
        out["sensitivity"] = tp / (tp + fn) if tp + fn else None
        out["specificity"] = tn / (tn + fp) if tn + fp else None
        out["roc_auc"] = roc_auc(y, probs[:, 1])
    else:
        aucs = [roc_auc(y == c, probs[:, c]) for c in range(k)]
        aucs = [a for a in aucs if a is not None]
        out["roc_auc"] = float(np.mean(aucs)) if aucs else None  # macro one-vs-rest
    return out


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timing samples")
    return {
        "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()), "max": float(a.max()),
        "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
    }


def percent(v: float | None, unit: str = "%") -> str:
    """A proportion as a percentage to one decimal ("93.4%"; a table column's unit is its header's, so
    unit ""), or "-" where there is none: every report, note and terminal line writes rates this way."""
    return "-" if v is None else f"{100 * v:.1f}{unit}"


def percent_with_ci(v: float | None, ci: Sequence[float] | None, unit: str = "%") -> str:
    """A proportion and its 95% interval, "93.4% [90.1, 95.2]"; the bare percentage where no interval
    was computed, "-" where there is no proportion."""
    if v is None or ci is None:
        return percent(v, unit)
    lo, hi = ci
    return f"{percent(v, unit)} [{100 * lo:.1f}, {100 * hi:.1f}]"
