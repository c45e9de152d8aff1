"""The deployed model's operating point and temperature, fitted on the target's validation split and
then measured on its test split at that threshold - the honest figure of what a user gets. Stored in
selection.json under ``decision``; export copies it into every card (src/mstl/edge/core/decision.py applies it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..edge.core.decision import DEFAULT_RULE, calibrate, calibration_report, operating_point, rates, rates_at
from ..edge.core.metrics import percent_with_ci
from ..edge.core.progress import say
from ..edge.core.rundir import SELECTION, read_labels, read_selection


class NoValidationSplit(ValueError):
    pass


def positive_index(labels: list[str], positive_class: str | None) -> int:
    """The positive class: the one the config names, else the second of "not X" / "X", else the second."""
    if positive_class and positive_class in labels:
        return labels.index(positive_class)
    return 1


def fit(run_dir: Path, rule: str = DEFAULT_RULE) -> dict[str, Any]:
    from ..model import load_classifier
    from ..edge.core.preprocess import Preprocess
    from .store import RunStore, read_split

    store = RunStore(run_dir)
    cfg = store.config()
    selection = read_selection(store.dir)
    if selection is None:
        raise FileNotFoundError(f"{run_dir}: no {SELECTION} - stage 2 has not finished (run `mstl-train stage2`)")
    val, chosen_on = _choosing_split(store, cfg)
    test = read_split(store.dir, "test")
    labels = read_labels(store.dir)
    pos = positive_index(labels, getattr(cfg.target, "positive_class", None) if cfg.target else None)
    prep = Preprocess(cfg.data.image_size, cfg.data.resize_method)
    model = load_classifier(store.dir / selection["model"])

    def answers(split):
        return model.predict(prep.load_many(split[0]).astype(np.float32), batch_size=32, verbose=0), np.asarray(split[1])

    val_p, val_y = answers(val)
    op = operating_point(val_p, val_y, rule, pos)
    decision: dict[str, Any] = {
        "positive_class": labels[pos], "positive_index": pos, "target": rule, "threshold": op["threshold"],
        "temperature": op["temperature"], "chosen_on": chosen_on,
        "applies_to": "the positive class's probability after temperature scaling: softmax(log(p) / temperature)",
        "validation": op["validation"]}
    if "temperature_note" in op:
        decision["temperature_note"] = op["temperature_note"]
    if test is not None and len(test[0]):
        test_p, test_y = answers(test)
        decision["test"] = rates_at(test_p, test_y, decision)
        decision["test_at_0.5"] = rates_at(test_p, test_y, {"positive_index": pos})  # T 1, threshold 0.5
        decision["calibration_test"] = calibration_report(test_p, test_y, op["temperature"])
        _figures(store.dir / "figures", test_p, test_y, pos, op["temperature"], op["threshold"])
    selection["decision"] = decision
    store.write_json(SELECTION, selection)
    _say(decision)
    return decision


def _choosing_split(store, cfg) -> tuple[tuple[list[str], np.ndarray], str]:
    """The validation split, else the operating-point carve-out of the training split (presets without
    validation), with the words the report and the card use for it."""
    from .store import read_split
    val = read_split(store.dir, "val")
    if val is not None and len(val[0]):
        return val, f"target validation split ({len(val[0])} images)"
    carve = read_split(store.dir, "operating")
    if carve is not None and len(carve[0]):
        return carve, (f"operating-point carve-out: {len(carve[0])} images ({100 * cfg.stage2.operating_fraction:.0f}%) "
                       "drawn stratified from the target's training split and held out of stage-2 training "
                       "(the preset has no validation split)")
    raise NoValidationSplit(
        f"{store.dir}: no target validation split and no operating-point carve-out (preset {cfg.preset!r}, "
        f"stage2.operating_fraction={cfg.stage2.operating_fraction}); an operating point chosen on the test split "
        "would be judged on the data that chose it - train with stage2.operating_fraction > 0 (e.g. "
        "--set stage2.operating_fraction=0.1) or a preset with a validation split (e.g. corrected)")


def _say(d: dict[str, Any]) -> None:
    def pct(r, key):
        return percent_with_ci(r[key], r[f"{key}_ci95"])
    say(f"operating point ({d['target']}, on the {d['chosen_on']}): threshold {d['threshold']:.4f} on the calibrated "
        f"{d['positive_class']} probability, temperature {d['temperature']:.3f}")
    if d.get("temperature_note"):
        say(f"  temperature {d['temperature_note']}")
    say(f"  validation: sensitivity {pct(d['validation'], 'sensitivity')}, specificity {pct(d['validation'], 'specificity')}")
    if "test" in d:
        c = d["calibration_test"]
        say(f"  test at that threshold: sensitivity {pct(d['test'], 'sensitivity')}, specificity "
            f"{pct(d['test'], 'specificity')}; ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}, "
            f"Brier {c['brier_before']:.3f} -> {c['brier_after']:.3f} ({c['ece_bins']} bins)")
        if c.get("ece_if_calibrated"):
            f = c["ece_if_calibrated"]
            say(f"  a perfectly calibrated model would show an ECE of {f['median']:.3f} [{f['ci95'][0]:.3f}, "
                f"{f['ci95'][1]:.3f}] on these {f['images']} test images")


def _figures(figdir: Path, probs: np.ndarray, y: np.ndarray, pos: int, temperature: float, threshold: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    cal = calibrate(probs, temperature)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    edges = np.linspace(0, 1, 11)
    for p, name in ((probs, "before"), (cal, f"after (T = {temperature:.2f})")):
        conf, hit = p.max(1), p.argmax(1) == y
        mids, accs = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (conf > lo) & (conf <= hi)
            if m.any():
                mids.append(conf[m].mean())
                accs.append(hit[m].mean())
        ax.plot(mids, accs, "o-", label=name)
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="confidence (top-1 probability)", ylabel="accuracy", title="Reliability on the test split",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend()
    fig.tight_layout()
    fig.savefig(figdir / "reliability.png", dpi=120)
    plt.close(fig)
    score, truth = cal[:, pos], y == pos
    ts = np.unique(np.concatenate([score, [0.0, 1.1]]))[::-1]
    tpr = [np.mean(score[truth] >= t) for t in ts]
    fpr = [np.mean(score[~truth] >= t) for t in ts]
    r = rates(score, truth.astype(int), threshold)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr)
    if r["sensitivity"] is not None and r["specificity"] is not None:
        ax.plot([1 - r["specificity"]], [r["sensitivity"]], "o", color="red", label=f"operating point ({threshold:.3f})")
        ax.legend(loc="lower right")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC on the test split")
    fig.tight_layout()
    fig.savefig(figdir / "roc.png", dpi=120)
    plt.close(fig)
