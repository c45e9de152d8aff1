"""metrics.py against brute-force definitions on small inputs: every figure the gate, the bench and the
report print. Pure numpy."""

import itertools
import math

import numpy as np
import pytest

from mstl.edge.core.metrics import (DECISIVE_MARGIN, classification_report, confusion_matrix, expected_calibration_error,
                          percentiles, roc_auc, top1_agreement, wilson_interval)


def _wilson_by_formula(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_wilson_matches_the_formula_and_is_clamped():
    for n in (1, 2, 7, 50):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            want = _wilson_by_formula(k, n)
            assert (lo, hi) == pytest.approx(want, abs=1e-12), (k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            # the interval of the complement is the mirror image
            assert wilson_interval(n - k, n) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)
    assert wilson_interval(3, 0) == (0.0, 1.0) and wilson_interval(0, -1) == (0.0, 1.0)
    assert wilson_interval(5, 10, z=1.0) == pytest.approx(_wilson_by_formula(5, 10, 1.0))
    assert wilson_interval(5, 10, z=1.0)[1] < wilson_interval(5, 10)[1]


def test_top1_agreement_on_decisive_answers_only():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.52, 0.48], [0.7, 0.3], [0.5 + DECISIVE_MARGIN - 1e-3, 0.5]])
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9], [0.6, 0.4], [0.0, 1.0]])
    ref = np.vstack([ref, [0.5, 0.5 + DECISIVE_MARGIN + 1e-3]])  # just above the margin: compared, agrees
    probs = np.vstack([probs, [0.3, 0.7]])
    out = top1_agreement(probs, ref)
    # row 2 is a near-tie, row 4 just under the margin: 4 compared, row 1 flips
    assert out["n_compared"] == 4 and out["flips"] == 1 and out["agreement"] == pytest.approx(3 / 4)
    assert out["ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert out["max_abs_diff"] == pytest.approx(0.549)  # over all rows, near-ties included
    none = top1_agreement(ref[2:3], ref[2:3])
    assert none["agreement"] is None and none["ci95"] is None and none["n_compared"] == 0 and none["flips"] == 0
    empty = top1_agreement(np.zeros((0, 2)), np.zeros((0, 2)))
    assert empty["max_abs_diff"] is None and empty["n_compared"] == 0
    three = top1_agreement(np.array([[0.1, 0.2, 0.7]]), np.array([[0.2, 0.3, 0.5]]))
    assert three["n_compared"] == 1 and three["agreement"] == 1.0  # the margin is top-1 minus top-2


def test_confusion_matrix_counts_every_pair():
    y = [0, 1, 2, 2, 1, 0, 2]
    p = [0, 2, 2, 1, 1, 0, 2]
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 2]] and cm.dtype == np.int64
    assert confusion_matrix([0], [0], 2).tolist() == [[1, 0], [0, 0]]


def _auc_by_pairs(y, s):
    pos = [b for a, b in zip(y, s) if a]
    neg = [b for a, b in zip(y, s) if not a]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_is_the_pairwise_win_rate_with_ties_as_halves():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 30))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            y[0] = 1 - y[0]
        s = rng.integers(0, 5, n) / 4  # many ties
        assert roc_auc(y, s) == pytest.approx(_auc_by_pairs(y, s)), trial
    assert roc_auc([0, 0, 1, 1, 1], [0.3, 0.3, 0.3, 0.9, 0.3]) == pytest.approx(_auc_by_pairs([0, 0, 1, 1, 1], [0.3, 0.3, 0.3, 0.9, 0.3]))
    assert roc_auc([0, 0], [0.1, 0.2]) is None and roc_auc([1], [0.1]) is None
    assert roc_auc([True, False], [0.9, 0.1]) == 1.0 and roc_auc([1, 0], [0.1, 0.9]) == 0.0


def _ece_by_bins(y, probs, bins=10):
    conf, correct = probs.max(1), probs.argmax(1) == np.asarray(y)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    return sum(np.mean(which == b) * abs(correct[which == b].mean() - conf[which == b].mean())
               for b in range(bins) if np.any(which == b))


def test_expected_calibration_error_by_bins():
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.35, 0.65], [0.5, 0.5], [0.15, 0.85], [1.0, 0.0], [0.62, 0.38]])
    y = [0, 1, 1, 0, 0, 0, 1]
    assert expected_calibration_error(y, probs) == pytest.approx(_ece_by_bins(y, probs))
    assert expected_calibration_error(y, probs, bins=4) == pytest.approx(_ece_by_bins(y, probs, 4))
    # 0.5 belongs to the bin that ends at 0.5, 1.0 to the last one: a perfectly calibrated pair
    assert expected_calibration_error([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]]), bins=2) == pytest.approx(0.0)
    assert expected_calibration_error([0], np.array([[0.0, 0.0]])) == pytest.approx(1.0)  # confidence 0: first bin
    assert expected_calibration_error([0], np.array([[0.3, 0.1]]), bins=2) == pytest.approx(0.7)


def test_classification_report_two_classes():
    y = [0, 0, 0, 1, 1]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    r = classification_report(y, probs, ["neg", "pos"])
    assert r["n"] == 5 and r["accuracy"] == pytest.approx(0.6)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(3, 5))
    assert r["sensitivity"] == pytest.approx(0.5) and r["specificity"] == pytest.approx(2 / 3)
    assert r["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert r["per_class"]["neg"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3), "support": 3}
    assert r["per_class"]["pos"] == {"precision": pytest.approx(0.5), "recall": pytest.approx(0.5), "support": 2}
    assert r["confusion_matrix"] == [[2, 1], [1, 1]]
    assert r["roc_auc"] == pytest.approx(roc_auc(y, probs[:, 1]))
    assert r["ece"] == pytest.approx(expected_calibration_error(y, probs))
    none_pos = classification_report([0, 0], np.array([[0.9, 0.1], [0.2, 0.8]]), ["neg", "pos"])
    assert none_pos["sensitivity"] is None and none_pos["specificity"] == pytest.approx(0.5)
    assert none_pos["per_class"]["pos"] == {"precision": 0.0, "recall": None, "support": 0}
    assert none_pos["balanced_accuracy"] == pytest.approx(0.5) and none_pos["roc_auc"] is None
    all_pos = classification_report([1, 1], np.array([[0.9, 0.1], [0.9, 0.1]]), ["neg", "pos"])
    assert all_pos["specificity"] is None and all_pos["sensitivity"] == 0.0
    assert all_pos["per_class"]["pos"]["precision"] is None  # never predicted


def test_classification_report_three_classes_and_empty():
    y = [0, 1, 2, 2]
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]])
    r = classification_report(y, probs, ["a", "b", "c"])
    assert "sensitivity" not in r and r["accuracy"] == pytest.approx(0.75)
    want = np.mean([roc_auc(np.asarray(y) == c, probs[:, c]) for c in range(3)])
    assert r["roc_auc"] == pytest.approx(want)
    assert r["balanced_accuracy"] == pytest.approx((1 + 0 + 1) / 3)
    missing = classification_report([0, 0], np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]), ["a", "b", "c"])
    assert missing["roc_auc"] is None  # one class present: no one-vs-rest AUC at all
    part = classification_report([0, 1, 1], np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1]]), ["a", "b", "c"])
    assert part["roc_auc"] == pytest.approx(np.mean([roc_auc([1, 0, 0], [0.6, 0.2, 0.5]), roc_auc([0, 1, 1], [0.3, 0.5, 0.4])]))
    empty = classification_report([], np.zeros((0, 2)), ["neg", "pos"])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ece"] is None
    assert empty["balanced_accuracy"] is None and (empty["ci_low"], empty["ci_high"]) == (0.0, 1.0)


def test_percentiles_of_samples():
    s = percentiles([4.0, 1.0, 3.0, 2.0])
    assert s["mean"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert s["p50"] == pytest.approx(2.5) and s["p90"] == pytest.approx(3.7) and s["p99"] == pytest.approx(3.97)
    one = percentiles([7.0])
    assert one == {"mean": 7.0, "std": 0.0, "min": 7.0, "max": 7.0, "p50": 7.0, "p90": 7.0, "p99": 7.0}
    with pytest.raises(ValueError, match="no timing samples"):
        percentiles([])
