"""`mstl-train report` on a run that is not finished says so - in report.md, in claims.json and on the
terminal - with how many trials are done; the Claims table is written for a reader, not as raw JSON."""

import json
import os
import time

import pytest
from typer.testing import CliRunner

from helpers_processes import run_without_tensorflow, trainer_holding
from mstl.cli.train import app
from mstl.config import preset
from mstl.report.build import build_report, study_progress
from mstl.report.claims import observed_text
from mstl.train.store import RunStore

runner = CliRunner()


def _trial(size, frozen, acc, seed=1):
    return {"size": size, "frozen": frozen, "seed": seed, "val_accuracy": acc, "val_loss": 1 - acc, "seconds": 1.0,
            "n_train": size, "mode": "restart"}


def _stage2(size, acc, seed=1):
    return {"size": size, "seed": seed, "accuracy": acc, "ci_low": acc - 0.1, "ci_high": acc + 0.1, "roc_auc": acc,
            "val_accuracy": acc, "n_val": 10, "seconds": 1.0, "epochs": 1, "stage1_frozen": 140 if size else None}


@pytest.fixture
def run(tmp_path):
    """A smoke-preset run dir made by hand: sizes 24 and 48, depths 140 and 120, patience 1, one seed."""
    store = RunStore(tmp_path / "run")
    store.open(preset("smoke"), "fp")
    yield store
    import mstl.train.store as s
    fd = s.LOCKS_HELD.pop(str(store.dir.resolve()), None)
    if fd is not None:
        os.close(fd)


def test_a_run_in_its_first_sweep_is_reported_incomplete(run):
    run.add_trial(_trial(24, 140, 0.6))  # 1 of the 2 depths of one of the 2 sizes
    p = study_progress(run)
    assert not p["complete"] and p["summary"].startswith("incomplete: 1 of at most 7 trials")
    assert "2 sweep(s) unfinished" in p["summary"] and "stage 2: 0 of 3" in p["summary"]
    text = build_report(run.dir).read_text()
    assert "**Incomplete run - incomplete: 1 of at most 7 trials" in text
    assert "| 24 | 140 so far |" in text and "1 (sweep unfinished)" in text


def _finish_stage1(run):
    for r in (_trial(24, 140, 0.6), _trial(24, 120, 0.5), _trial(48, 140, 0.6), _trial(48, 120, 0.7)):
        run.add_trial(r)


def test_claims_of_a_partial_stage2_say_incomplete(run):
    _finish_stage1(run)
    run.add_stage2(_stage2(0, 0.6))
    run.add_stage2(_stage2(24, 0.7))
    text = build_report(run.dir).read_text()
    claims = json.loads((run.dir / "claims.json").read_text())
    assert all(c["complete"] is False and c["incomplete"].startswith("incomplete: 6 of 7 trials") for c in claims)
    assert "stage 2: 2 of 3" in claims[0]["incomplete"]
    assert "provisional, the run is incomplete" in text


def test_a_finished_run_has_no_incomplete_word_and_a_readable_claims_table(run):
    _finish_stage1(run)
    for size, acc in ((0, 0.6), (24, 0.7), (48, 0.8)):
        run.add_stage2(_stage2(size, acc))
    assert study_progress(run)["complete"]
    text = build_report(run.dir).read_text()
    claims = json.loads((run.dir / "claims.json").read_text())
    assert all(c["complete"] is True and "incomplete" not in c for c in claims)
    assert "ncomplete" not in text and "provisional" not in text
    table = text.split("## Claims")[1].split("\n\n")[1]
    assert '{"' not in table and "Spearman ρ = " in table and "optimal frozen by size: 24 → 140, 48 → 120" in table
    res = runner.invoke(app, ["report", str(run.dir)])
    assert res.exit_code == 0 and "incomplete" not in res.output


def test_report_cli_says_incomplete(run):
    run.add_trial(_trial(24, 140, 0.6))
    res = runner.invoke(app, ["report", str(run.dir)])
    assert res.exit_code == 0 and "incomplete: 1 of at most 7 trials" in " ".join(res.output.split())


def test_report_while_another_process_trains_names_it(run):
    run.add_trial(_trial(24, 140, 0.6))
    import mstl.train.store as s
    os.close(s.LOCKS_HELD.pop(str(run.dir.resolve())))  # this process lets go; a "trainer" takes the lock
    with trainer_holding(run.dir) as trainer:
        assert run.writer() == str(trainer.pid)
        text = build_report(run.dir).read_text()
        assert f"process {trainer.pid} is training this run now" in text
    deadline = time.monotonic() + 5
    while run.writer() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run.writer() is None  # the kernel dropped the dead trainer's lock


def test_observed_text_for_each_claim_shape():
    assert observed_text({"rho": -0.5, "n": 3, "optimal_by_size": {"24": [140], "48": [120, 140]}}) == \
        "Spearman ρ = -0.50 over 3 (draw, seed) sweeps; optimal frozen by size: 24 → 140, 48 → 120, 140"
    assert observed_text({"24": [140]}) == "optimal frozen by size: 24 → 140"
    assert observed_text({"best_size": 48, "chosen_on": "validation",
                          "mean_accuracy_by_size": {"24": 0.7, "48": 0.75, "96": 0.72}}) == \
        "best size 48 (picked on validation); mean accuracy by size: 24 → 70.0%, 48 → 75.0%, 96 → 72.0%"
    assert observed_text({"size": 24, "accuracy": 0.8, "control_accuracy": 0.6, "delta": 0.2}) == \
        "size 24: 80.0% against the control's 60.0% (difference +20.0 points)"
    assert observed_text({"mean": 0.7123, "units": 3}) == "mean 71.2% over 3 (draw, seed) unit(s)"
    assert observed_text({"mean": None, "units": 0}) == "no stage-2 result yet"
    assert observed_text(None) == "-"


def test_incomplete_report_needs_no_tensorflow(run):
    """The progress count reads the depth grid from the base registry, not from Keras: `report` stays TF-free."""
    run.add_trial(_trial(24, 140, 0.6))
    res = run_without_tensorflow("from mstl.cli.train import app\napp(['report', sys.argv[1]])\n", str(run.dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "incomplete: 1 of at most 7 trials" in " ".join((res.stdout + res.stderr).split())


def test_no_stage2_yet_leaves_no_claims_json(run):
    (run.dir / "claims.json").write_text('[{"claim": "from an older state of this run", "verdict": "supported"}]')
    run.add_trial(_trial(24, 140, 0.6))
    build_report(run.dir)
    assert not (run.dir / "claims.json").exists()


def test_full_disk_while_drawing_a_figure_leaves_no_truncated_png(run, monkeypatch):
    import errno
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from mstl.edge.core.outputs import OutputError
    run.add_trial(_trial(24, 140, 0.6))
    build_report(run.dir)
    before = (run.dir / "figures" / "fig3_heatmap.png").read_bytes()
    real = Figure.savefig

    def full(self, fname, *a, **k):
        with open(fname, "wb") as fh:
            fh.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(OutputError, match="figures: cannot write fig2a_frozen_vs_size.png: the disk is full"):
        build_report(run.dir)
    monkeypatch.setattr(Figure, "savefig", real)
    assert (run.dir / "figures" / "fig3_heatmap.png").read_bytes() == before
    assert not [p for p in (run.dir / "figures").iterdir() if p.name.startswith(".")]
