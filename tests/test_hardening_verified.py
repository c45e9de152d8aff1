"""'Is this artifact verified' decided once (mstl.edge.core.cards.unverified_reason), by the app and the bench
alike (issue 22): only a card recording a passing export gate counts."""

import json

import pytest

from mstl.edge.core.cards import unverified_reason

PASSED = {"verification": {"status": "ok"}}


@pytest.mark.parametrize("card, words", [
    (None, "classifier-int8.tflite has no model card (classifier-int8.tflite.json)"),
    ({}, "has no model card"),
    ({"verification": {"status": "failed", "reason": "87% agreement"}}, "failed its export verification (87% agreement)"),
    ({"verification": {"status": "failed"}}, "failed its export verification (no reason recorded)"),
    ({"verification": None, "sha256": "x"}, "has no export verification in its card (gate never run)"),
    ({"verification": {"status": "skipped"}}, "(gate skipped)"),
])
def test_anything_but_a_passing_gate_is_unverified_and_says_why(tmp_path, card, words):
    why = unverified_reason(tmp_path / "classifier-int8.tflite", card)
    assert why is not None and words in why and "\n" not in why


def test_a_passing_gate_is_verified(tmp_path):
    assert unverified_reason(tmp_path / "m.onnx", PASSED) is None


def test_the_app_and_the_bench_give_the_same_verdict(tmp_path, monkeypatch):
    from mstl.edge.app.inference import check_artifact
    from mstl.edge.bench import run as bench_run
    shape = {"input": {"shape": [1, 8, 8, 3]}}
    cards = {"ok.tflite": {**PASSED, **shape}, "failed.tflite": {"verification": {"status": "failed", "reason": "r"}, **shape},
             "nocard.tflite": None, "model.keras": None}
    for name, card in cards.items():
        (tmp_path / name).write_bytes(name.encode())
        if card is not None:
            (tmp_path / f"{name}.json").write_text(json.dumps(card))
    # the measurement is not the question here: every artifact "runs"
    monkeypatch.setattr(bench_run, "measure_isolated", lambda *a, **k: {"status": "ok", "latency": {}})
    report = bench_run.run_bench([tmp_path / n for n in cards], None, [1], 1, 0)
    rows = {r["artifact"]: r for r in report["results"]}
    for name in ("ok.tflite", "failed.tflite", "nocard.tflite"):
        why = check_artifact(tmp_path / name, cards[name])
        assert rows[name]["verified"] is (why is None)
        assert [n for n in rows[name].get("notes", []) if n.startswith("NOT VERIFIED")] == \
            ([] if why is None else [f"NOT VERIFIED: {why}"])
    assert "verified" not in rows["model.keras"]  # the reference itself, not an artifact
