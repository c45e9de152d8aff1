"""The operating point and temperature scaling: chosen on one set of answers, applied everywhere."""

import numpy as np
import pytest

from mstl.edge.core.decision import (calibrate, calibration_report, choose_threshold, decide, fit_temperature,
                           operating_point, parse_rule, rates)


def _answers(n=600, seed=0, sharp=1.0):
    """A binary classifier's probabilities that are calibrated when ``sharp`` is 1; logits x ``sharp``."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 2.0, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    z = sharp * logit
    p1 = 1 / (1 + np.exp(-z))
    return np.stack([1 - p1, p1], 1), y


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99])
def test_a_threshold_chosen_for_sensitivity_s_gives_at_least_s_where_it_was_chosen(target):
    probs, y = _answers()
    t = choose_threshold(probs[:, 1], y, ("sensitivity", target))
    r = rates(probs[:, 1], y, t)
    assert r["sensitivity"] >= target
    # and no higher threshold is better: past the first score above it the sensitivity is lost or the
    # specificity gains nothing; it sits inside a gap between scores, not on one image's score
    edge = probs[:, 1][probs[:, 1] >= t].min()
    up = rates(probs[:, 1], y, edge + 1e-9)
    assert up["sensitivity"] < target or up["specificity"] <= r["specificity"]
    assert t not in set(probs[:, 1].tolist())
    # a perfectly separated set: the threshold between the classes, nobody missed for nothing
    sep = np.r_[np.linspace(0.1, 0.4, 20), np.linspace(0.6, 0.9, 20)]
    ys = np.r_[np.zeros(20, int), np.ones(20, int)]
    t2 = choose_threshold(sep, ys, ("sensitivity", target))
    assert rates(sep, ys, t2)["sensitivity"] == 1.0 and rates(sep, ys, t2)["specificity"] == 1.0
    assert t2 == pytest.approx(0.5)
    s = choose_threshold(probs[:, 1], y, ("specificity", target))
    assert rates(probs[:, 1], y, s)["specificity"] >= target


def test_a_planted_miscalibration_is_undone_by_temperature_scaling():
    probs, y = _answers(sharp=3.0)  # logits x 3: overconfident
    t = fit_temperature(probs, y)
    assert 2.4 < t < 3.6
    c = calibration_report(probs, y, t)
    assert c["ece_after"] < c["ece_before"] / 2 and c["brier_after"] < c["brier_before"]
    assert (calibrate(probs, t).argmax(1) == probs.argmax(1)).all()  # argmax unchanged
    good, yg = _answers(seed=1)
    assert 0.8 < fit_temperature(good, yg) < 1.25
    # all answers right: no temperature can be fitted (the likelihood falls towards T = 0); say so
    right = probs.argmax(1)
    assert fit_temperature(probs, right) is None
    op = operating_point(probs, right, "youden")
    assert op["temperature"] == 1.0 and "not fitted" in op["temperature_note"]


def test_operating_point_fits_on_validation_and_decide_applies_it_with_a_band():
    probs, y = _answers(sharp=3.0)
    op = operating_point(probs, y, "sensitivity=0.95")
    assert op["validation"]["sensitivity"] >= 0.95 and op["temperature"] > 2
    decision = {"threshold": op["threshold"], "temperature": op["temperature"], "positive_index": 1}
    got = decide(probs, decision, band=0.05)
    scores = calibrate(probs, op["temperature"])[:, 1]
    assert [g["label_index"] for g in got] == (scores >= op["threshold"]).astype(int).tolist()
    unsure = [g for g in got if g["uncertain"]]
    assert unsure and all(abs(g["positive_probability"] - op["threshold"]) < 0.05 for g in unsure)
    old = decide(probs[:3], None)  # an old card without a decision: argmax at 0.5, said so
    assert [o["label_index"] for o in old] == probs[:3].argmax(1).tolist()
    assert all(o["threshold"] == 0.5 and not o["calibrated"] for o in old)


@pytest.mark.parametrize("text", ["sensitivity", "sensitivity=1.5", "recall=0.9", "youden=0.3", "threshold=x"])
def test_a_bad_rule_says_what_is_accepted(text):
    with pytest.raises(ValueError, match="--operating-point"):
        parse_rule(text)


def test_a_run_carries_its_operating_point_into_every_card(smoke_run, smoke_exports):
    import json
    sel = json.loads((smoke_run / "selection.json").read_text())
    d = sel["decision"]
    assert d["chosen_on"].startswith("target validation split") and d["validation"]["sensitivity"] >= 0.95
    assert "test" in d and (smoke_run / "figures" / "roc.png").is_file()
    report = (smoke_run / "report.md").read_text()
    assert "## Operating point" in report and "perfectly calibrated model would show an ECE of" in report
    assert d["calibration_test"]["ece_if_calibrated"]["images"] == d["test"]["n_positive"] + d["test"]["n_negative"]
    for card_path in smoke_exports.glob("*.json"):
        if card_path.name in ("manifest.json",):
            continue
        card = json.loads(card_path.read_text())
        if "verification" not in card:
            continue
        assert card["decision"]["threshold"] == d["threshold"] and card["decision"]["temperature"] == d["temperature"]
        agree = card["verification"]["decision_agreement"]
        assert agree["n_compared"] > 0 and agree["threshold"] == d["threshold"]
        # float forms decide as Keras does; int8 is reported, not gated (the barely trained smoke model
        # crowds its answers at the threshold: there its decisions differ more often than its top-1)
        assert agree["agreement"] >= (0.999 if card["precision"] in ("fp32", "fp16") else 0.9), (card_path.name, agree)
        held = agree["heldout"]  # the card's decision, on every held-out image
        assert held["n"] == card["verification"]["heldout"]["n"] > 0
        if card["precision"] == "fp32":
            assert held["accuracy_delta"] == 0 and held["accuracy"] == held["accuracy_keras"]


def test_the_held_out_accuracy_is_also_measured_at_the_cards_threshold():
    """An artifact that moves answers across 0.5 but not across the card's threshold keeps the accuracy the
    card's user gets, and the export says so beside the argmax figure."""
    from mstl.export.gate import Gate
    from mstl.export.run import _decision_agreement
    n = 400
    p1 = np.where(np.arange(n) % 2 == 0, 0.9, 0.3)  # the threshold 0.2 calls every image positive
    ref = np.stack([1 - p1, p1], 1)
    y = np.ones(n, int)
    moved = ref.copy()
    moved[1::2] = [[0.25, 0.75]]  # across 0.5, still above 0.2
    gate = Gate(np.zeros((n, 1)), ref, y, np.ones(n, bool), np.arange(n) % 3 == 0)
    decision = {"threshold": 0.2, "temperature": 1.0, "positive_index": 1}
    at_op = _decision_agreement(gate, moved, decision)["heldout"]
    assert at_op["n"] == n and at_op["accuracy_keras"] == at_op["accuracy"] == 1.0 and at_op["accuracy_delta"] == 0
    assert gate.judge(moved, 0.99)["heldout"]["accuracy_delta"] == pytest.approx(0.5)  # argmax: half gained
    worse = ref.copy()
    worse[::4] = [[0.95, 0.05]]  # a quarter below the threshold now
    d = _decision_agreement(gate, worse, decision)["heldout"]
    assert d["accuracy"] == pytest.approx(0.75) and d["accuracy_delta"] == pytest.approx(-0.25)
    assert d["accuracy_delta_ci95"][0] < -0.25 < d["accuracy_delta_ci95"][1] < 0


def _served(smoke_exports, tmp_path, decision):
    """The int8 TFLite with its card's decision replaced (the artifact's bytes, and so its sha256, unchanged)."""
    import json
    import shutil
    from mstl.edge.app.inference import Classifier
    src = smoke_exports / "classifier-int8.tflite"
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    card = json.loads((smoke_exports / f"{src.name}.json").read_text())
    if decision is None:
        card.pop("decision", None)
    else:
        card["decision"] = decision
    (tmp_path / f"{src.name}.json").write_text(json.dumps(card))
    return Classifier(dst, workers=1, uncertain_band=0.05)


def test_the_app_decides_at_the_cards_threshold_and_refers_inside_the_band(smoke_exports, smoke_run, tmp_path):
    from mstl.train.store import read_split
    image = open(read_split(smoke_run, "test")[0][0], "rb").read()
    for sub in "abc":
        (tmp_path / sub).mkdir()
    plain = _served(smoke_exports, tmp_path / "a", None)
    old = plain.classify(image)
    assert old["operating_point"]["threshold"] == 0.5 and not old["operating_point"]["chosen"]
    assert "no operating point" in old["operating_point"]["text"]
    p = old["probabilities"][plain.labels[1]]
    base = {"chosen_on": "target validation split (9 images)", "temperature": 1.0, "positive_index": 1,
            "positive_class": plain.labels[1], "target": "sensitivity=0.95", "validation_sensitivity": 0.95}
    near = _served(smoke_exports, tmp_path / "b", {**base, "threshold": min(max(p + 0.01, 0.02), 0.98)}).classify(image)
    assert near["label"] == "uncertain - refer" and near["uncertain"]
    assert "the operating point (sensitivity=0.95, sensitivity 95% on validation)" in near["operating_point"]["text"]
    far = _served(smoke_exports, tmp_path / "c", {**base, "threshold": 0.999 if p < 0.9 else 0.001}).classify(image)
    assert not far["uncertain"] and far["label"] == plain.labels[0 if p < 0.9 else 1]
    assert far["operating_point"]["side"] == ("below" if p < 0.9 else "above")


def _source(n_per_class=100):
    from mstl.edge.core.sources import DatasetIndex
    from mstl.train.prepare import Source
    labels = np.repeat([0, 1], n_per_class)
    index = DatasetIndex("root", "folders", ["NORMAL", "PNEUMONIA"], [f"img{i}.png" for i in range(len(labels))],
                         labels, [None] * len(labels), [None] * len(labels))
    return Source(index, np.zeros((len(labels), 1)), np.arange(len(labels)), labels, [None] * len(labels), [])


def test_without_a_validation_split_the_operating_point_has_a_stratified_carve_out_held_out_of_training():
    from mstl.config import override, preset
    from mstl.train.prepare import target_splits
    cfg = override(preset("paper"), **{"stage2.target_size": 200, "stage2.positive_class": "PNEUMONIA"})
    t = target_splits(_source(), cfg)
    assert len(t.val) == 0 and 15 <= len(t.operating) <= 20  # 10% of the 85% that is not test
    assert not set(t.operating) & set(t.train) and not set(t.operating) & set(t.test)
    assert len(t.train) + len(t.operating) + len(t.test) == 200  # nothing lost
    assert abs(t.y_operating.mean() - 0.5) < 0.1  # both classes, in the target's proportions
    literal = target_splits(_source(), override(cfg, **{"stage2.operating_fraction": 0.0}))
    assert len(literal.operating) == 0 and len(literal.train) == len(t.train) + len(t.operating)
    with_val = target_splits(_source(), override(cfg, **{"stage2.val_fraction": 0.15}))
    assert len(with_val.val) and not len(with_val.operating)  # the validation split chooses; no carve-out


def test_a_run_without_validation_chooses_on_its_carve_out_and_says_so(smoke_run, tmp_path):
    """A paper-like run dir: the validation list is gone, the carve-out list holds those images."""
    import json
    import shutil
    from mstl.train.operating import NoValidationSplit, fit
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("exports", "cache", "bench*"))
    (run / "target_val.tsv").rename(run / "target_operating.tsv")
    d = fit(run)
    assert d["chosen_on"].startswith("operating-point carve-out") and "held out of stage-2 training" in d["chosen_on"]
    assert d["validation"]["sensitivity"] >= 0.95 and "test" in d
    assert json.loads((run / "selection.json").read_text())["decision"]["chosen_on"] == d["chosen_on"]
    (run / "target_operating.tsv").unlink()
    with pytest.raises(NoValidationSplit, match="stage2.operating_fraction"):
        fit(run)


def test_the_ece_floor_of_a_small_test_split_says_whether_a_calibration_goal_can_be_judged():
    """On 95 images a calibrated model's ECE is itself ~0.05 (sampling alone): the report gives that
    floor, so an ECE over 0.03 there is not read as miscalibration; on
    5,000 images the floor shrinks, and an overconfident model (logits x 3, no temperature) is far above it."""
    small, ys = _answers(n=95, seed=1)
    c = calibration_report(small, ys, 1.0)
    floor = c["ece_if_calibrated"]
    assert floor["images"] == 95 and 0.03 < floor["median"] < 0.12
    assert floor["ci95"][0] <= c["ece_after"] <= floor["ci95"][1]
    big, yb = _answers(n=5000, seed=2)
    assert calibration_report(big, yb, 1.0)["ece_if_calibrated"]["median"] < floor["median"] / 3
    sharp, y3 = _answers(n=600, seed=3, sharp=3.0)
    c3 = calibration_report(sharp, y3, 1.0)
    assert c3["ece_after"] > c3["ece_if_calibrated"]["ci95"][1]
