"""The export gate's verdict (mstl/edge/core/agreement.py) on small hand-made answers: every figure it reports,
each boundary of its rules, and the held-out deltas. Pure numpy: no model, no runtime."""

import numpy as np
import pytest

from mstl.edge.core.agreement import CONSTANT_STD, MARGIN, MIN_DECISIVE_FLIPS, paired_deltas, verify
from mstl.edge.core.metrics import roc_auc, wilson_interval


def _two_class(n, p_first=0.9):
    """``n`` decisive Keras answers alternating between the classes."""
    first = np.where(np.arange(n) % 2 == 0, p_first, 1 - p_first)
    return np.stack([first, 1 - first], 1)


def _flip(probs, rows):
    out = probs.copy()
    out[rows] = out[rows][:, ::-1]
    return out


def test_every_figure_of_a_passing_verdict():
    ref = _two_class(400)
    ref[:10] = [0.51, 0.49]  # near-ties: not compared
    probs = _flip(ref, [20, 21])
    out = verify(None, np.zeros((400, 4, 4, 3), np.uint8), ref, 0.99, probs=probs)
    assert out["status"] == "ok" and "reason" not in out and "warning" not in out
    assert (out["n_compared"], out["n_images"], out["n_near_ties"], out["flips"]) == (390, 400, 10, 2)
    assert out["agreement"] == pytest.approx(388 / 390)
    assert out["agreement_ci95"] == pytest.approx(list(wilson_interval(388, 390)))
    assert out["agreement_all"] == pytest.approx(398 / 400)
    assert out["max_abs_diff"] == pytest.approx(0.8)
    assert out["threshold"] == 0.99 and out["reference_nearly_constant"] is False
    assert "heldout" not in out


def test_below_the_threshold_fails_naming_the_numbers():
    ref = _two_class(400)
    out = verify(None, np.zeros((400, 1)), ref, 0.99, probs=_flip(ref, range(8)))
    assert out["status"] == "failed"
    assert out["reason"] == ("top-1 agreement 98.00% is below the 99.0% threshold by 1.00 points "
                             "(400 images compared, 8 flips)")
    # exactly at the threshold passes (not strictly above)
    at = verify(None, np.zeros((400, 1)), ref, 0.98, probs=_flip(ref, range(8)))
    assert at["status"] == "ok" and "reason" not in at


def test_nothing_decisive_fails():
    ref = np.tile([0.5 + MARGIN / 4, 0.5 - MARGIN / 4], (50, 1))  # margin MARGIN / 2
    ref[::2] = ref[::2, ::-1]
    out = verify(None, np.zeros((50, 1)), ref, 0.5, probs=ref)
    assert out["status"] == "failed" and out["n_compared"] == 0 and out["agreement"] is None
    assert out["reason"] == f"no image with a top-1 margin above {MARGIN}: nothing to compare"
    assert "warning" not in out and out["n_near_ties"] == 50


def test_close_to_noise_warning_exactly_when_few_flips_cross_the_threshold():
    for n, noisy in ((299, True), (300, False), (1000, False)):
        ref = _two_class(n)
        out = verify(None, np.zeros((n, 1)), ref, 0.99, probs=ref)
        assert ("warning" in out) == noisy, n
        if noisy:
            assert out["warning"] == (f"only {n} images compared: {MIN_DECISIVE_FLIPS} flips move agreement "
                                      "across the 99.0% threshold, so the verdict is close to noise; verify on more images")


def test_nearly_constant_reference_is_said_beside_the_few_images_warning():
    ref = np.tile([0.9, 0.1], (40, 1))
    ref[0] += [CONSTANT_STD, -CONSTANT_STD]  # std still well under CONSTANT_STD
    out = verify(None, np.zeros((40, 1)), ref, 0.99, probs=ref)
    assert out["reference_nearly_constant"] is True and out["status"] == "ok"
    assert "only 40 images compared" in out["warning"] and "nearly constant" in out["warning"]
    many = np.tile([0.9, 0.1], (5000, 1))
    alone = verify(None, np.zeros((5000, 1)), many, 0.99, probs=many)
    assert alone["warning"] == ("the Keras model's outputs are nearly constant over these images: any artifact "
                                "'agrees' with it, so agreement proves little")
    varied = _two_class(5000, 0.9)
    assert verify(None, np.zeros((5000, 1)), varied, 0.99, probs=varied)["reference_nearly_constant"] is False
    # just above the limit in one class column is not constant
    edge = np.tile([0.9, 0.1], (5000, 1))
    edge[::2] += [3 * CONSTANT_STD, -3 * CONSTANT_STD]
    assert verify(None, np.zeros((5000, 1)), edge, 0.99, probs=edge)["reference_nearly_constant"] is False


def test_the_runtime_answers_when_no_probabilities_are_given():
    ref = _two_class(300)

    class Fake:
        def predict(self, pixels):
            assert len(pixels) == 300
            return _flip(ref, [0])

    out = verify(Fake(), np.zeros((300, 2)), ref, 0.99)
    assert out["flips"] == 1 and out["agreement_all"] == pytest.approx(299 / 300)


def test_heldout_deltas_use_the_masked_images_only():
    ref = _two_class(300)
    y = ref.argmax(1)
    probs = _flip(ref, range(0, 300, 10))  # 30 wrong answers, all on images 0, 10, 20, ...
    mask = np.arange(300) % 10 != 0  # none of them held out
    out = verify(None, np.zeros((300, 1)), ref, 0.5, labels=y, heldout=mask, probs=probs)
    assert out["heldout"]["n"] == 270 and out["heldout"]["accuracy_delta"] == 0
    every = verify(None, np.zeros((300, 1)), ref, 0.5, labels=y, probs=probs)["heldout"]
    assert every["n"] == 300 and every["accuracy_delta"] == pytest.approx(-0.1)
    assert every["accuracy"] == pytest.approx(0.9) and every["accuracy_keras"] == 1.0


def test_paired_deltas_figures_and_intervals():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    score_r = np.clip(y * 0.3 + rng.uniform(0, 0.7, n), 0, 1)
    ref = np.stack([1 - score_r, score_r], 1)
    probs = ref.copy()
    same = paired_deltas(y, ref, probs)
    assert same["accuracy_delta"] == 0 and same["accuracy_delta_ci95"] == [0.0, 0.0]
    assert same["roc_auc_delta"] == 0 and same["roc_auc_delta_ci95"] == [0.0, 0.0]
    assert same["roc_auc"] == pytest.approx(roc_auc(y, score_r)) == same["roc_auc_keras"]
    wrong = (ref.argmax(1) != y).nonzero()[0]
    better = ref.copy()
    better[wrong] = better[wrong][:, ::-1]  # the artifact fixes every Keras mistake
    d = paired_deltas(y, ref, better)
    acc_r = float(np.mean(ref.argmax(1) == y))
    assert d["n"] == n and d["accuracy_keras"] == pytest.approx(acc_r) and d["accuracy"] == 1.0
    assert d["accuracy_delta"] == pytest.approx(1 - acc_r)
    lo, hi = d["accuracy_delta_ci95"]
    assert 0 < lo < d["accuracy_delta"] < hi <= 1 - acc_r + 0.1
    assert d["roc_auc"] == pytest.approx(roc_auc(y, better[:, 1])) and d["roc_auc_keras"] == pytest.approx(roc_auc(y, score_r))
    assert d["roc_auc_delta"] == pytest.approx(d["roc_auc"] - d["roc_auc_keras"])
    alo, ahi = d["roc_auc_delta_ci95"]
    assert 0 < alo < d["roc_auc_delta"] < ahi
    assert paired_deltas(y, ref, better) == paired_deltas(y, ref, better, seed=0)  # the default seed
    assert paired_deltas(y, ref, better, seed=1)["accuracy_delta_ci95"] != [lo, hi]


def test_paired_deltas_without_auc_and_empty():
    assert paired_deltas(np.zeros(0, int), np.zeros((0, 2)), np.zeros((0, 2))) == {"n": 0}
    y = np.array([0, 1, 2, 0, 1, 2])
    three = np.eye(3)[y] * 0.8 + 0.2 / 3
    out = paired_deltas(y, three, three)
    assert out["accuracy"] == 1.0 and "roc_auc" not in out and "roc_auc_delta_ci95" not in out
    one_class = paired_deltas(np.zeros(5, int), _two_class(5), _two_class(5))
    assert "roc_auc" not in one_class and one_class["n"] == 5
