import numpy as np
import pytest

from mstl.edge.core.metrics import classification_report, confusion_matrix, percentiles, roc_auc, wilson_interval


def test_wilson_known_values():
    lo, hi = wilson_interval(72, 100)
    assert lo == pytest.approx(0.6251, abs=1e-4) and hi == pytest.approx(0.7986, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(10, 10)
    assert lo <= 1.0 <= hi


def test_auc_with_ties_and_degenerate():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1], [0.2, 0.3]) is None


def test_confusion_and_report():
    y = [0, 0, 1, 1, 1]
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    assert confusion_matrix(y, p.argmax(1), 2).tolist() == [[1, 1], [1, 2]]
    r = classification_report(y, p, ["neg", "pos"])
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["sensitivity"] == pytest.approx(2 / 3) and r["specificity"] == pytest.approx(0.5)
    # Wilson interval for 3 of 5 (hand-computed): [0.2307, 0.8824]
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.2307, 0.8824), abs=1e-3)
    assert r["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)


def test_percentiles():
    s = percentiles(list(range(1, 101)))
    assert s["p50"] == pytest.approx(50.5) and s["p90"] == pytest.approx(90.1) and s["max"] == 100
