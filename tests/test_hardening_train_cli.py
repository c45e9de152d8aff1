"""mstl-train refuses, in one line and before any work, flags that would train nonsense: repeated sizes or
seeds, a plan for zero workers."""

import pytest
from typer.testing import CliRunner

from helpers_fakes import forbid
from mstl.cli.train import app

runner = CliRunner()


@pytest.fixture
def no_training(monkeypatch):
    import mstl.cli.train as t
    forbid(monkeypatch, t, "_open", "went on to prepare data or train")


@pytest.mark.parametrize("flags, named", [(["--sizes", "24,24"], "--sizes 24,24: 24 given more than once"),
                                          (["--seeds", "1,1"], "--seeds 1,1: 1 given more than once"),
                                          (["--sizes", "24,48,24", "--seeds", "1"], "--sizes 24,48,24: 24"),
                                          (["--set", "stage1.sizes=30,30"], "--sizes 30,30")])
def test_repeated_sizes_or_seeds_are_refused(tmp_path, no_training, flags, named):
    for command in (["full", "--run-dir", str(tmp_path / "run")], ["config"]):
        res = runner.invoke(app, [*command, "--preset", "smoke", "--weights", "none", *flags])
        assert res.exit_code == 2 and named in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_distinct_sizes_and_seeds_still_pass(no_training):
    res = runner.invoke(app, ["config", "--preset", "smoke", "--weights", "none", "--sizes", "24,48", "--seeds", "1,2", "--json"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("workers", ["0", "2,0", "-1"])
def test_plan_for_no_workers_is_refused(workers, monkeypatch):
    import mstl.train.plan as plan

    def refuse(*a, **k):
        raise AssertionError("calibrated before refusing")
    monkeypatch.setattr(plan, "calibrate", refuse)
    res = runner.invoke(app, ["plan", "--preset", "smoke", "--weights", "none", "--workers", workers])
    assert res.exit_code == 2 and "--workers" in res.output and "1 or more" in res.output, res.output
    assert not isinstance(res.exception, TypeError)


def test_plan_lookahead_must_not_be_negative(monkeypatch):
    import mstl.train.plan as plan
    monkeypatch.setattr(plan, "calibrate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("calibrated")))
    res = runner.invoke(app, ["plan", "--preset", "smoke", "--weights", "none", "--lookahead", "-1"])
    assert res.exit_code == 2 and "--lookahead" in res.output
