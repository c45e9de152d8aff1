"""The parallel sweep's scheduler: whatever the order results arrive in, it records exactly the trials
a serial sweep records, in the same per-chain order."""

import random

import pytest

from mstl.sweep import next_depth
from mstl.train.schedule import Scheduler, simulate


def serial(grid, accs, patience):
    done = {}
    while (d := next_depth(grid, done, patience)) is not None:
        done[d] = {"val_accuracy": accs[d]}
    return list(done)


@pytest.mark.parametrize("trial", range(40))
def test_any_arrival_order_commits_the_serial_trials(trial):
    rng = random.Random(trial)
    grid = list(range(150, 60, -10))
    chains = {(1, s): grid for s in (100, 200, 400)}
    accs = {k: {d: rng.choice([0.5, 0.6, 0.7, 0.8]) for d in grid} for k in chains}
    patience = rng.choice([1, 2, 3])
    sched = Scheduler(chains, {}, patience, lookahead=rng.choice([0, 1, 3]))
    order = {k: [] for k in chains}
    running = []
    while not sched.finished:
        running += sched.launches(rng.randint(1, 4))
        assert running, "nothing runs although the sweep is not finished"
        key, depth = running.pop(rng.randrange(len(running)))  # results arrive in any order
        sched.done(key, depth, {"val_accuracy": accs[key][depth]})
        for k, d, _ in sched.commits():
            order[k].append(d)
        for cancelled in sched.cancels():
            running.remove(cancelled)
    for k in chains:
        assert order[k] == serial(grid, accs[k], patience)


def test_resume_starts_from_the_committed_records_and_continue_mode_never_looks_ahead():
    grid = [150, 140, 130, 120]
    sched = Scheduler({(1, 100): grid}, {(1, 100): {150: {"val_accuracy": 0.5}}}, patience=2,
                      continue_mode=True, lookahead=3)
    assert sched.launches(8) == [((1, 100), 140)]


def test_simulation_counts_speculative_waste_and_speeds_up_with_workers():
    grid = list(range(150, 50, -10))
    chains = {(1, s): grid for s in (100, 200)}
    records = {k: {d: {"val_accuracy": 0.9 if d == 130 else 0.5} for d in grid} for k in chains}
    one = simulate(chains, records, lambda k, d: 10.0, 1, patience=2, lookahead=0)
    four = simulate(chains, records, lambda k, d: 10.0, 4, patience=2, lookahead=2)
    assert one["trials"] == four["trials"] == 2 * 5  # 150, 140, 130 (peak), 120, 110
    assert one["wasted"] == 0 and one["sweep_s"] == 100.0
    assert four["sweep_s"] < one["sweep_s"] / 2 and four["wasted"] > 0


@pytest.mark.slow
def test_plan_from_a_run_replays_its_trials(smoke_run):
    """`mstl-train plan --from-run`: on one worker the simulated schedule is the serial run, trial for trial."""
    import json
    from typer.testing import CliRunner
    from mstl.cli.train import app
    res = CliRunner().invoke(app, ["plan", "--preset", "smoke", "--from-run", str(smoke_run), "--workers", "1,2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    trials = [json.loads(x) for x in (smoke_run / "results.jsonl").read_text().splitlines() if x.strip()]
    one, two = out["scenarios"]["measured"]
    assert one["trials"] == len(trials) and one["sweep_s"] == pytest.approx(sum(t["seconds"] for t in trials), abs=0.2)
    assert two["trials"] == len(trials) and two["sweep_s"] <= one["sweep_s"]
    side = json.loads((smoke_run / "config.json").read_text())["config"]["data"]["image_size"]
    assert out["caches"]["decoded_image_bytes_each"] == side * side * 3
    bad = CliRunner().invoke(app, ["plan", "--preset", "smoke", "--from-run", str(smoke_run.parent)])
    assert bad.exit_code != 0 and "not an mstl run dir" in bad.output
