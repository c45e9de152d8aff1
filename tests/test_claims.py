"""The claims' tests find an effect that is built into synthetic records, and say inconclusive where
there is none, at about their stated error rate."""

import numpy as np
import pytest

from mstl.report import claims as C


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    monkeypatch.setattr(C, "PERMUTATIONS", 2000)
    monkeypatch.setattr(C, "BOOTSTRAP", 1000)


SIZES = (10_000, 20_000, 40_000, 60_000, 80_000)


def _draws(rng, n_draws=3, seeds=(1, 2), depth=lambda s: 85, acc=lambda s: 0.72, n_test=400, control=0.72):
    """Synthetic run records: per draw a test set, per size and seed a stage-1 depth and per-image predictions
    whose accuracy is ``acc(size)`` (``control`` for the control)."""
    out = []
    for k in range(n_draws):
        y = rng.integers(0, 2, n_test)
        stage2, optimal = [], {}
        for size in (0,) + SIZES:
            p = control if size == 0 else acc(size)
            for seed in seeds:
                hit = rng.random(n_test) < p
                pred = np.where(hit, y, 1 - y)
                stage2.append({"size": size, "seed": seed, "accuracy": float(hit.mean()), "val_accuracy": float(p),
                               "test_pred": "".join(map(str, pred)), "roc_auc": None})
                if size:
                    optimal[(size, seed)] = int(depth(size) + rng.integers(-5, 6))
        out.append({"data_seed": k, "optimal": optimal, "stage2": stage2, "y_test": y,
                    "selection": {"size": 40_000, "chosen_on": "validation"}})
    return out


def test_rising_depth_is_supported_and_flat_depth_is_not():
    rng = np.random.default_rng(0)
    rising = C.claim_depth_rises(_draws(rng, depth=lambda s: 80 + s / 2000))
    assert rising["verdict"] == "supported" and rising["p_value"] < 0.01
    falling = C.claim_depth_rises(_draws(rng, depth=lambda s: 130 - s / 2000))
    assert falling["verdict"] == "contradicted"


def test_bridge_against_control():
    rng = np.random.default_rng(1)
    better = C.claim_bridge_beats_control(_draws(rng, acc=lambda s: 0.80, control=0.70))
    assert better["verdict"] == "supported" and better["interval"][0] > 0 and better["p_value"] < 0.01
    worse = C.claim_bridge_beats_control(_draws(rng, acc=lambda s: 0.62, control=0.72))
    assert worse["verdict"] == "contradicted"
    one = C.claim_bridge_beats_control(_draws(np.random.default_rng(10), n_draws=1, seeds=(1,)))
    assert "mcnemar_p" in one  # one seed, one draw: exact McNemar is given too


def test_intermediate_best_size():
    rng = np.random.default_rng(2)
    peak = C.claim_intermediate_best(_draws(rng, acc=lambda s: 0.82 if s == 40_000 else 0.70))
    assert peak["verdict"] == "supported" and peak["observed"]["best_size"] == 40_000
    flat = C.claim_intermediate_best(_draws(np.random.default_rng(3), n_draws=1, seeds=(1,)))
    assert flat["verdict"] == "inconclusive"
    two = C.claim_intermediate_best([{**d, "stage2": [r for r in d["stage2"] if r["size"] in (0, 10_000, 20_000)]}
                                     for d in _draws(rng)])
    assert two["verdict"] == "inconclusive" and "three bridge sizes" in two["note"]


def test_accuracy_band():
    rng = np.random.default_rng(4)
    inside = C.claim_accuracy_band(_draws(rng, acc=lambda s: 0.72, n_test=4000))
    assert inside["verdict"] == "supported"
    above = C.claim_accuracy_band(_draws(rng, acc=lambda s: 0.90))
    assert above["verdict"] == "contradicted" and above["interval"][0] > 0.745
    one = C.claim_accuracy_band(_draws(rng, n_draws=1, seeds=(1,)))
    assert one["verdict"] == "inconclusive" and one["interval"] is None


def test_mcnemar_and_t_interval_against_known_values():
    a = np.array([1] * 10 + [0] * 0 + [1] * 50)
    b = np.array([0] * 10 + [1] * 0 + [1] * 50)
    assert C.mcnemar_exact(a, b) == pytest.approx(2 / 2 ** 10)  # 10 discordant pairs, all one way
    lo, hi = C.t_interval([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx((2 - 4.303 / np.sqrt(3), 2 + 4.303 / np.sqrt(3)), rel=1e-3)
    assert C.spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)


# How often a test decides when there is nothing to find, measured on many null runs (fixed seeds).
# benchmarks/claims_null_rates.py, 1,000 runs each at the claims' own resample counts: depth 4.3%
# (95% CI 3.2-5.7%), bridge with one draw and one seed 5.2% (4.0-6.8%) - the nominal 5% (README).
# Here: NULL_RUNS runs at the reduced counts, and the rate's 99% interval must hold 5% and stay under
# 10%: a test at alpha 0.10, or one-sided where it should be two-sided, fails.
NULL_RUNS = 300


def _null_rate(hits: int) -> tuple[float, float]:
    from mstl.edge.core.metrics import wilson_interval
    return wilson_interval(hits, NULL_RUNS, z=2.576)


def test_false_rise_rate_is_the_stated_5_percent():
    hits = sum(C.claim_depth_rises(_draws(np.random.default_rng(i)))["verdict"] == "supported"
               for i in range(NULL_RUNS))
    lo, hi = _null_rate(hits)
    assert lo <= C.ALPHA <= hi and hi < 2 * C.ALPHA, (hits, lo, hi)


def test_false_bridge_decision_rate_is_the_stated_5_percent():
    """Two-sided: 'supported' and 'contradicted' together, with one draw and one seed (the smallest run)."""
    hits = sum(C.claim_bridge_beats_control(_draws(np.random.default_rng(10 + i), n_draws=1, seeds=(1,)))["verdict"]
               != "inconclusive" for i in range(NULL_RUNS))
    lo, hi = _null_rate(hits)
    assert lo <= C.ALPHA <= hi and hi < 2 * C.ALPHA, (hits, lo, hi)
