"""report/claims.py on small hand-made run records whose answers are laid out exactly (no randomness
in the records): each claim's verdict at its boundaries, which sizes it compares, what it observes and
notes, and the statistics underneath (ranks, t-interval, McNemar, permutation and bootstrap p-values)."""

import math

import numpy as np
import pytest

from mstl.report import claims as C

N = 200


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    monkeypatch.setattr(C, "PERMUTATIONS", 1000)
    monkeypatch.setattr(C, "BOOTSTRAP", 500)


def _record(size, seed, acc, val=None, n=N):
    """The first round(acc * n) test images right: sizes with higher accuracy get every image a lower
    one gets right, and more - a paired difference with no noise."""
    y = np.arange(n) % 2
    hit = np.arange(n) < round(acc * n)
    return {"size": size, "seed": seed, "accuracy": float(hit.mean()), "val_accuracy": val,
            "test_pred": "".join(map(str, np.where(hit, y, 1 - y))), "roc_auc": None}


def _draw(k, acc, seeds=(1, 2), val=None, selection=None, optimal=None, n=N):
    """One data draw: ``acc`` {size: accuracy} (0 = the control), ``val`` {size: validation accuracy}."""
    stage2 = [_record(s, seed, a, (val or {}).get(s), n) for s, a in acc.items() for seed in seeds]
    return {"data_seed": k, "optimal": optimal or {}, "stage2": stage2, "y_test": np.arange(n) % 2,
            "selection": selection}


PEAK = {0: 0.6, 10_000: 0.6, 20_000: 0.7, 40_000: 0.8, 80_000: 0.65}


# --- statistics ---------------------------------------------------------------------------------

def test_t_interval_uses_the_t_table_then_the_normal():
    assert C.t_interval([1.0]) is None and C.t_interval([]) is None
    assert C.t_interval([1, 3]) == pytest.approx((2 - 12.706 * math.sqrt(2) / math.sqrt(2), 2 + 12.706))
    v31 = np.arange(31.0)  # 30 degrees of freedom: the table's last entry
    half = 2.042 * v31.std(ddof=1) / math.sqrt(31)
    assert C.t_interval(v31) == pytest.approx((15 - half, 15 + half))
    v32 = np.arange(32.0)  # beyond the table: 1.96
    half = 1.96 * v32.std(ddof=1) / math.sqrt(32)
    assert C.t_interval(v32) == pytest.approx((15.5 - half, 15.5 + half))
    assert C.t_interval([2, 2, 2]) == (2.0, 2.0)


def test_ranks_share_ties_and_spearman_is_the_correlation_of_ranks():
    assert C._ranks([3, 1, 3, 2]).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert C._ranks([5, 5, 5]).tolist() == [1.0, 1.0, 1.0]
    assert C._ranks([0.5, 0.1, 0.9, 0.1, 0.1]).tolist() == [3.0, 1.0, 4.0, 1.0, 1.0]
    x, y = [1, 2, 3, 4, 5, 6], [2, 1, 4, 4, 6, 5]
    assert C.spearman(x, y) == pytest.approx(np.corrcoef(C._ranks(x), C._ranks(y))[0, 1])
    assert C.spearman([1, 2, 3], [7, 7, 7]) == 0.0 and C.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_mcnemar_counts_only_discordant_pairs():
    assert C.mcnemar_exact(np.array([1, 0, 1]), np.array([1, 0, 1])) == 1.0
    assert C.mcnemar_exact(np.array([0, 1]), np.array([1, 0])) == 1.0  # balanced: p capped at 1
    a, b = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0, 0])  # concordant zeros and ones beside
    assert C.mcnemar_exact(a, b) == 1.0  # 2 against 2: capped at 1
    assert C.mcnemar_exact(np.array([0] * 10 + [1] * 5), np.zeros(15)) == pytest.approx(2 / 2 ** 5)  # zeros agree
    assert C.mcnemar_exact(np.array([0] * 6 + [1]), np.array([1] * 6 + [1])) == pytest.approx(2 / 2 ** 6)
    assert C.mcnemar_exact(np.array([1] * 5 + [0]), np.array([0] * 5 + [0])) == pytest.approx(2 / 2 ** 5)
    assert C.mcnemar_exact(np.array([0, 0, 1]), np.array([1, 1, 0])) == pytest.approx(2 * (1 + 3) / 8)


def test_trend_test_p_values():
    up = C.trend_test([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8])
    # no permutation of 8 reaches rho 1 (1 in 40,320): p = (0 + 1) / (1000 + 1) for a rise, 1 for a fall
    assert up["rho"] == pytest.approx(1.0) and up["n"] == 8
    assert up["p_rise"] == pytest.approx(1 / 1001) and up["p_fall"] == pytest.approx(1.0)
    down = C.trend_test([1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1])
    assert down["p_fall"] == pytest.approx(1 / 1001) and down["p_rise"] == pytest.approx(1.0)
    # two points: half the permutations equal the observed order, and they count (>= rho)
    two = C.trend_test([1, 2], [1, 2])
    assert 0.4 < two["p_rise"] < 0.6 and two["p_fall"] == pytest.approx(1.0)
    two_down = C.trend_test([1, 2], [2, 1])
    assert 0.4 < two_down["p_fall"] < 0.6 and two_down["p_rise"] == pytest.approx(1.0)
    assert C.trend_test([1, 2, 3], [4, 4, 4]) == {"rho": 0.0, "p_rise": 1.0, "p_fall": 1.0, "n": 3}
    x, y = [1, 2, 3, 4, 5, 6, 7], [3, 1, 4, 1, 5, 9, 2]
    t = C.trend_test(x, y)
    assert t["rho"] == pytest.approx(C.spearman(x, y)) and t == C.trend_test(x, y)  # seeded: repeatable
    assert 0.05 < t["p_rise"] < 0.95 and t["p_rise"] + t["p_fall"] >= 1


def test_paired_bootstrap_on_exact_differences():
    assert C.paired_bootstrap({}, {0: np.ones((1, 3))}) == {"delta": None, "interval": None, "p_value": None}
    n = 5
    better = np.array([[1, 0, 0, 0, 0]])  # A right on image 0 only; B never
    never = np.zeros((1, n))
    # the extra draw 9 of A has no B: left out
    t = C.paired_bootstrap({0: better, 9: np.ones((1, n))}, {0: never})
    assert t["delta"] == pytest.approx(0.2) and t["interval"][0] == 0.0 and t["interval"][1] >= 0.4
    assert 0 < t["p_value"] < 1  # some resamples miss image 0: boot == 0 counts on both sides
    # seeds resampled: A's two seeds differ wholly, so seed weights alone spread the difference
    seeds = np.array([[1] * 50, [0] * 50])
    s = C.paired_bootstrap({0: seeds}, {0: seeds})
    assert s["delta"] == 0 and s["interval"] == [-1.0, 1.0] and s["p_value"] == 1.0
    # two draws: the statistic is the mean over draws (draw 1 has no difference)
    a = {0: np.ones((2, 40)), 1: np.zeros((2, 40))}
    b = {0: np.zeros((2, 40)), 1: np.zeros((2, 40))}
    two = C.paired_bootstrap(a, b)
    assert two["delta"] == pytest.approx(0.5) and two["interval"] == [0.5, 0.5] and two["p_value"] == 0.0
    worse = C.paired_bootstrap(b, a)
    assert worse["delta"] == pytest.approx(-0.5) and worse["interval"] == [-0.5, -0.5] and worse["p_value"] == 0.0
    assert C.paired_bootstrap(a, b) == C.paired_bootstrap(a, b, seed=0)


def test_verdict_needs_the_whole_interval_on_one_side():
    v = C._verdict_delta
    assert v({"interval": None}) == "inconclusive"
    assert v({"interval": [0.01, 0.2]}) == "supported" and v({"interval": [0.0, 0.2]}) == "inconclusive"
    assert v({"interval": [-0.2, -0.01]}) == "contradicted" and v({"interval": [-0.2, 0.0]}) == "inconclusive"
    assert v({"interval": [-0.1, 0.5]}) == "inconclusive"


def test_units_mean_and_correct_answers():
    d = [_draw(0, {0: 0.5, 10_000: 0.75})]
    assert C._units_mean(d, 10_000) == pytest.approx(0.75) and C._units_mean(d, 0) == pytest.approx(0.5)
    assert C._units_mean(d, 123) is None
    hits = C._correct(d[0], 10_000)
    assert hits.shape == (2, N) and hits.sum() == 2 * 150 and hits[:, :150].all()
    assert C._correct(d[0], 40_000) is None


# --- the claims ---------------------------------------------------------------------------------

def test_intermediate_best_on_validation():
    val = {s: a for s, a in PEAK.items()}
    e = C.claim_intermediate_best([_draw(0, PEAK, val=val), _draw(1, PEAK, val=val)])
    assert e["verdict"] == "supported" and "note" not in e
    assert e["observed"] == {"best_size": 40_000, "chosen_on": "validation",
                             "mean_accuracy_by_size": {"10000": 0.6, "20000": 0.7, "40000": 0.8, "80000": 0.65}}
    assert set(e["vs"]) == {"10000", "80000"}
    assert e["p_value"] == max(t["p_value"] for t in e["vs"].values())
    assert e["interval"] == min((t["interval"] for t in e["vs"].values()), key=lambda iv: iv[0])
    assert e["interval"] == e["vs"]["80000"]["interval"]  # the closer rival has the lower bound
    assert e["vs"]["10000"]["delta"] == pytest.approx(0.2) and e["vs"]["80000"]["delta"] == pytest.approx(0.15)


def test_intermediate_best_is_chosen_on_validation_not_test():
    # on test 40k is best, on validation 20k: the validation choice is tested, and loses to nothing
    val = {0: 0.5, 10_000: 0.6, 20_000: 0.9, 40_000: 0.7, 80_000: 0.65}
    e = C.claim_intermediate_best([_draw(0, PEAK, val=val)])
    assert e["observed"]["best_size"] == 20_000 and e["observed"]["chosen_on"] == "validation"
    assert e["vs"]["10000"]["delta"] == pytest.approx(0.1) and e["vs"]["80000"]["delta"] == pytest.approx(0.05)


def test_intermediate_best_without_validation_says_it_chose_on_test():
    e = C.claim_intermediate_best([_draw(0, PEAK)])
    assert e["observed"]["best_size"] == 40_000 and e["observed"]["chosen_on"] == "test (optimistic)"
    assert e["verdict"] == "supported"
    assert e["note"] == ("the best size was picked on the same test images it is tested on, which favours "
                         "'supported'")


def test_intermediate_best_at_an_end_of_the_range():
    rising = {0: 0.5, 10_000: 0.6, 20_000: 0.7, 40_000: 0.65, 80_000: 0.8}
    e = C.claim_intermediate_best([_draw(0, rising, val=rising)])
    assert e["observed"]["best_size"] == 80_000 and list(e["vs"]) == ["20000"]  # the best intermediate one
    assert e["verdict"] == "contradicted" and e["vs"]["20000"]["delta"] == pytest.approx(0.1)
    assert e["note"] == ("the best size is an end of the range (80000); 'contradicted' needs it to beat every "
                         "intermediate size")
    falling = {0: 0.5, 10_000: 0.8, 20_000: 0.7, 40_000: 0.75, 80_000: 0.6}
    f = C.claim_intermediate_best([_draw(0, falling, val=falling)])
    assert f["observed"]["best_size"] == 10_000 and list(f["vs"]) == ["40000"] and f["verdict"] == "contradicted"
    tie = {0: 0.5, 10_000: 0.6, 20_000: 0.6, 40_000: 0.6, 80_000: 0.6}
    t = C.claim_intermediate_best([_draw(0, tie, val={**tie, 80_000: 0.61})])
    assert t["observed"]["best_size"] == 80_000 and t["verdict"] == "inconclusive"


def test_intermediate_best_needs_three_sizes_and_predictions():
    e = C.claim_intermediate_best([_draw(0, {0: 0.5, 10_000: 0.6, 20_000: 0.7})])
    assert e["verdict"] == "inconclusive" and e["note"] == "needs at least three bridge sizes (2 in this run)"
    assert e["observed"] is None and e["p_value"] is None
    d = _draw(0, PEAK, val=PEAK)
    for r in d["stage2"]:
        if r["size"] == 80_000:
            r["test_pred"] = ""
    e = C.claim_intermediate_best([d])
    assert e["verdict"] == "inconclusive" and "vs" not in e
    assert e["note"] == "records lack per-image predictions (made before they were recorded): rerun stage 2"


def test_bridge_is_the_deployed_size_against_the_control():
    acc = {0: 0.6, 10_000: 0.7, 20_000: 0.55, 40_000: 0.9}
    e = C.claim_bridge_beats_control([_draw(0, acc, selection={"size": 10_000, "chosen_on": "validation"})])
    assert e["verdict"] == "supported" and "note" not in e and "mcnemar_p" not in e  # two seeds
    assert e["observed"] == {"size": 10_000, "accuracy": 0.7, "control_accuracy": 0.6, "delta": 0.1}
    assert e["interval"][0] > 0 and e["p_value"] == 0.0
    worse = C.claim_bridge_beats_control([_draw(0, acc, selection={"size": 20_000})])
    assert worse["verdict"] == "contradicted" and worse["observed"]["size"] == 20_000
    # no selection: the best bridge size by mean accuracy; the control chosen: the best bridge size too
    for sel in (None, {}, {"size": 0}):
        assert C.claim_bridge_beats_control([_draw(0, acc, selection=sel)])["observed"]["size"] == 40_000
    test_chosen = C.claim_bridge_beats_control([_draw(0, acc, selection={"size": 10_000, "chosen_on": "test"})])
    assert test_chosen["note"] == ("the bridge size was chosen on the test split (no validation split): the "
                                   "comparison favours the bridge")


def test_bridge_gives_mcnemar_for_one_seed_of_one_draw_only():
    acc = {0: 0.6, 10_000: 0.7}
    one = C.claim_bridge_beats_control([_draw(0, acc, seeds=(1,))])
    a, b = C._correct(_draw(0, acc, seeds=(1,)), 10_000)[0], C._correct(_draw(0, acc, seeds=(1,)), 0)[0]
    assert one["mcnemar_p"] == C.mcnemar_exact(a, b) and one["mcnemar_p"] < 0.01
    assert "mcnemar_p" not in C.claim_bridge_beats_control([_draw(0, acc, seeds=(1,)), _draw(1, acc, seeds=(1,))])


def test_bridge_needs_a_control_a_bridge_and_predictions():
    for acc in ({10_000: 0.7, 20_000: 0.6}, {0: 0.6}):
        e = C.claim_bridge_beats_control([_draw(0, acc)])
        assert e["verdict"] == "inconclusive" and e["note"] == "the run has no control or no bridge size"
        assert e["observed"] is None
    d = _draw(0, {0: 0.6, 10_000: 0.7})
    d["stage2"][0]["test_pred"] = None
    d["stage2"][1]["test_pred"] = None
    e = C.claim_bridge_beats_control([d])
    assert e["note"] == "records lack per-image predictions (made before they were recorded): rerun stage 2"
    assert e["verdict"] == "inconclusive" and e["p_value"] is None


def _band(values):
    """One draw per value, one seed, two bridge sizes at that accuracy (and a control far away)."""
    return [{"data_seed": k, "stage2": [{"size": 0, "seed": 1, "accuracy": 0.1},
                                        {"size": 10_000, "seed": 1, "accuracy": v},
                                        {"size": 20_000, "seed": 1, "accuracy": v}]} for k, v in enumerate(values)]


def test_accuracy_band_boundaries():
    lo_b, hi_b = C.PAPER_BAND
    at_low = C.claim_accuracy_band(_band([lo_b, lo_b]))
    assert at_low["verdict"] == "supported" and at_low["interval"] == [lo_b, lo_b]
    assert at_low["observed"] == {"mean": lo_b, "units": 2}
    assert C.claim_accuracy_band(_band([hi_b, hi_b]))["verdict"] == "supported"
    assert C.claim_accuracy_band(_band([0.6, 0.6]))["verdict"] == "contradicted"
    assert C.claim_accuracy_band(_band([0.8, 0.8]))["verdict"] == "contradicted"
    straddle = C.claim_accuracy_band(_band([0.68, 0.70]))
    assert straddle["verdict"] == "inconclusive" and straddle["interval"][0] < lo_b < straddle["interval"][1]
    assert straddle["interval"] == [round(v, 4) for v in C.t_interval([0.68, 0.70])]
    assert C.claim_accuracy_band(_band([0.7001, 0.7003]))["interval"] == [round(v, 4) for v in C.t_interval([0.7001, 0.7003])]
    one = C.claim_accuracy_band(_band([0.7]))
    assert one["verdict"] == "inconclusive" and one["interval"] is None and one["observed"]["units"] == 1
    assert one["note"].startswith("one unit only")
    # units are (draw, seed): two seeds of one draw are two units, averaged over the bridge sizes only
    d = [{"data_seed": 0, "stage2": [{"size": 0, "seed": 1, "accuracy": 0.0}, {"size": 10_000, "seed": 1, "accuracy": 0.7},
                                     {"size": 20_000, "seed": 1, "accuracy": 0.72}, {"size": 10_000, "seed": 2, "accuracy": 0.71},
                                     {"size": 20_000, "seed": 2, "accuracy": 0.73}]}]
    e = C.claim_accuracy_band(d)
    assert e["observed"] == {"mean": 0.715, "units": 2}
    assert e["interval"] == [round(v, 4) for v in C.t_interval([0.71, 0.72])]


def test_depth_claim_observes_each_size_and_says_which_way():
    sizes = (10_000, 20_000, 40_000, 80_000)
    rising = {(s, seed): 80 + s // 2000 + seed for s in sizes for seed in (1, 2)}
    e = C.claim_depth_rises([{"optimal": rising}])
    assert e["verdict"] == "supported" and e["p_value"] < 0.01 and "note" not in e
    assert e["observed"]["rho"] == round(C.spearman([s for s, _ in rising], list(rising.values())), 3)
    assert e["observed"]["n"] == 8
    assert e["observed"]["optimal_by_size"] == {"10000": [86, 87], "20000": [91, 92], "40000": [101, 102], "80000": [121, 122]}
    falling = {k: 300 - v for k, v in rising.items()}
    f = C.claim_depth_rises([{"optimal": falling}])
    t = C.trend_test([s for s, _ in falling], list(falling.values()))
    assert f["verdict"] == "contradicted" and f["p_value"] == t["p_fall"] < 0.05
    assert f["note"] == "the depth falls with size (p for a fall given)"
    flat = C.claim_depth_rises([{"optimal": {(s, 1): 90 for s in sizes}}])
    assert flat["verdict"] == "inconclusive" and flat["p_value"] == 1.0
    one = C.claim_depth_rises([{"optimal": {(10_000, 1): 85, (10_000, 2): 90}}])
    assert one["verdict"] == "inconclusive" and one["note"] == "needs at least two bridge sizes"
    assert one["observed"] == {"10000": [85, 90]} and one["p_value"] is None


def test_evaluate_gives_the_four_claims_in_order_with_what_the_report_reads():
    d = [_draw(0, PEAK, val=PEAK, selection={"size": 40_000, "chosen_on": "validation"},
               optimal={(s, 1): 80 + s // 1000 for s in PEAK if s})]
    out = C.evaluate(d)
    assert [e["claim"] for e in out] == [C.claim_depth_rises(d)["claim"], C.claim_intermediate_best(d)["claim"],
                                         C.claim_bridge_beats_control(d)["claim"], C.claim_accuracy_band(d)["claim"]]
    for e in out:
        assert {"claim", "paper", "observed", "test", "p_value", "interval", "verdict"} <= set(e)
        assert e["verdict"] in ("supported", "contradicted", "inconclusive")
        assert all(isinstance(e[k], str) and e[k] for k in ("claim", "paper", "test"))
    assert len({e["claim"] for e in out}) == 4
