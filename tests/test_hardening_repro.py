"""Issue 24: one study, whatever the engine, the thread count or the CPU kind.

A trial's numbers are fixed by its configuration (seeds, data, depth, ``trial_threads``) on one CPU kind;
the sweep's decisions compare validation results with a one-image tie margin, so that last-digit
differences (another thread count, AVX2 instead of AVX-512) do not move them; a study started on one
engine and resumed on the other records no trial twice and changes no decision."""

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mstl.config import RunConfig, preset
from mstl.sweep import TIE_MARGIN_IMAGES, compare, next_depth, optimal_record
from mstl.train.trials import write_decisions

BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[1] / "src"
GRID = [140, 130, 120, 110]


def _rec(frozen: int, correct: int, n_val: int = 60, **kw) -> dict:
    return {"frozen": frozen, "val_accuracy": correct / n_val, "val_loss": 0.5, "n_val": n_val, **kw}


# --- the decisions, with their tie margin (no TensorFlow) ---------------------------------------------

def test_one_image_of_float_noise_moves_neither_the_stop_nor_the_optimal_depth():
    # issue 24's case: the same trial one validation image apart on two machines (0.7667 vs 0.7833)
    here = {140: _rec(140, 46), 130: _rec(130, 46), 120: _rec(120, 45)}
    there = {140: _rec(140, 46), 130: _rec(130, 47), 120: _rec(120, 45)}
    assert next_depth(GRID, here, patience=2) is None
    assert next_depth(GRID, there, patience=2) is None  # strictly compared: 130 would be better, 110 run too
    assert optimal_record(list(here.values()))["frozen"] == optimal_record(list(there.values()))["frozen"] == 140


def test_more_than_the_margin_is_better_and_ties_go_to_the_more_frozen_depth():
    assert TIE_MARGIN_IMAGES == 1
    assert compare(_rec(130, 48), _rec(140, 46)) == ("better", 2)
    assert compare(_rec(130, 47), _rec(140, 46)) == ("tie", 1)
    assert compare(_rec(130, 44), _rec(140, 46)) == ("worse", -2)
    records = [_rec(140, 46, val_loss=0.9), _rec(130, 47, val_loss=0.1), _rec(120, 48)]
    # 130 is a tie with 140 (the lower loss does not decide: it moves with the last digits too);
    # 120 is two images above the best so far, 140
    assert optimal_record(records)["frozen"] == 120
    assert optimal_record(records[:2])["frozen"] == 140
    assert next_depth(GRID, {140: _rec(140, 46), 130: _rec(130, 48)}, patience=1) == 120


class _Store:
    def __init__(self, trials):
        self._trials, self.written = trials, {}

    def trials(self):
        return list(self._trials)

    def write_json(self, name, doc):
        self.written[name] = doc


def test_the_decisions_file_names_the_ties_that_decided():
    cfg = replace(preset("smoke"), stage1=replace(preset("smoke").stage1, unfreeze_step=10, min_frozen=110, patience=1))
    store = _Store([_rec(140, 6, 8, size=24, seed=1, vs_best=None),
                    _rec(130, 7, 8, size=24, seed=1, vs_best={"frozen": 140, "images": 1, "outcome": "tie"})])
    doc = write_decisions(store, cfg)
    assert store.written["decisions.json"] == doc and doc["tie_margin_images"] == 1
    (chain,) = doc["chains"]
    assert chain["optimal_frozen"] == 140 and chain["finished"] and chain["trials"] == [140, 130]
    assert chain["decided_by_tie"] and chain["ties"] == [{"frozen": 130, "with_frozen": 140, "images": 1}]


# --- the thread count is part of the configuration ----------------------------------------------------

def test_threads_per_trial_is_in_the_identity_and_a_resume_with_another_count_is_refused(tmp_path):
    from mstl.train.store import RunDirError, RunStore
    one = RunConfig(model=replace(RunConfig().model, weights="none"))
    two = replace(one, trial_threads=2)
    assert one.trial_threads == 1 and one.config_hash() != two.config_hash()
    RunStore(tmp_path / "run").open(one, "data")
    with pytest.raises(RunDirError, match="trial_threads"):
        RunStore(tmp_path / "run").open(two, "data")
    with pytest.raises(ValueError, match="trial_threads must be 1..1024"):
        replace(one, trial_threads=0).validate()


def test_tensorflow_runs_the_threads_it_was_given_before_it_started():
    code = ("from mstl.tf_env import pin_threads, tf\n"
            "a = pin_threads(1); tf.constant(1.0) + 1.0; b = pin_threads(2)\n"
            "print(a, b, tf.config.threading.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(SRC)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1", "1"]  # started at 1: a later ask for 2 is reported, not believed


@pytest.mark.skipif(shutil.which("qemu-x86_64-static") is None, reason="qemu-x86_64-static not installed")
def test_the_recorded_cpu_flags_are_the_emulated_cpus():
    code = "from mstl.train.trials import cpu_flags; print(' '.join(cpu_flags()))"
    out = subprocess.run(["qemu-x86_64-static", "-cpu", "Haswell", sys.executable, "-c", code],
                         env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    flags = out.stdout.split()
    assert "avx2" in flags and "fma" in flags and "avx512f" not in flags  # /proc/cpuinfo would say the host's


def test_run_and_the_ray_engine_do_not_import_each_other():
    train = SRC / "mstl" / "train"

    def imported(path):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names.add(node.module or "")
                names.update(f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names)
        return names
    assert not any("ray_engine" in n for n in imported(train / "run.py"))
    assert not any(n == "run" or n.startswith("run.") for n in imported(train / "ray_engine.py"))
    assert not any(n == "run" or n.startswith("run.") for n in imported(train / "stage1.py"))


# --- the same trials on both engines, and a study moved between them (slow: Ray) ---------------------

# 2 sizes x 4 depths; smoke's patience 1 decides where each size stops
ARGS = ["full", "--preset", "smoke", "--start-frozen", "140", "--unfreeze-step", "10", "--min-frozen", "110"]
FIGURES = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "epochs", "best_epoch", "vs_best", "threads")


def _records(run_dir: Path, name: str = "results.jsonl") -> list[dict]:
    path = run_dir / name
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _figures(records) -> dict:
    return {(r["size"], r["frozen"], r["seed"]): tuple(json.dumps(r.get(k)) for k in FIGURES) for r in records}


def _train(run_dir: Path, *extra: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([str(BIN / "mstl-train"), *ARGS, "--run-dir", str(run_dir), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_after_first_trial(proc: subprocess.Popen, run_dir: Path) -> list[dict]:
    deadline = time.monotonic() + 900
    while not _records(run_dir):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no trial recorded within 15 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and any Ray processes it started
    proc.wait()
    return _records(run_dir)


@pytest.fixture(scope="module")
def serial_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("repro") / "serial"
    _finish(_train(run_dir))
    return run_dir


@pytest.mark.parametrize("first,then", [("serial", "ray"), ("ray", "serial")])
@pytest.mark.slow
def test_a_study_moved_between_engines_records_no_trial_twice_and_keeps_its_decisions(
        serial_reference, tmp_path, first, then):
    pytest.importorskip("ray")
    engine = {"serial": [], "ray": ["--engine", "ray", "--ray-cpus", "2"]}
    run_dir = tmp_path / f"{first}-then-{then}"
    before = _kill_after_first_trial(_train(run_dir, *engine[first], start_new_session=True), run_dir)
    reference = _records(serial_reference)
    assert 1 <= len(before) < len(reference)
    _finish(_train(run_dir, *engine[then]))
    after = _records(run_dir)
    keys = [(r["size"], r["frozen"], r["seed"]) for r in after]
    assert len(keys) == len(set(keys)), keys  # no trial twice
    assert after[:len(before)] == before  # what was recorded stays as it was
    # the same trials with the same figures to the last digit as the study run serially in one go
    assert _figures(after) == _figures(reference)
    assert {r["engine"] for r in after} == {first, then} and all(r["threads"] == 1 for r in after)
    assert json.loads((run_dir / "decisions.json").read_text()) == \
        json.loads((serial_reference / "decisions.json").read_text())
    test_acc = lambda d: {(r["size"], r["seed"]): r["accuracy"] for r in _records(d, "stage2.jsonl")}  # noqa: E731
    assert test_acc(run_dir) == test_acc(serial_reference)


@pytest.mark.slow
def test_two_threads_per_trial_take_the_one_thread_decisions(serial_reference, tmp_path):
    run_dir = tmp_path / "two"
    _finish(_train(run_dir, "--threads-per-trial", "2"))
    assert {r["threads"] for r in _records(run_dir)} == {2}
    chains = lambda d: [{k: c[k] for k in ("size", "seed", "trials", "optimal_frozen", "stopped")}  # noqa: E731
                        for c in json.loads((d / "decisions.json").read_text())["chains"]]
    assert chains(run_dir) == chains(serial_reference)


def test_the_plan_replays_a_run_with_the_runs_own_tie_margin():
    from mstl.train.plan import plan
    demo = preset("demo")
    cfg = replace(demo, stage1=replace(demo.stage1, sizes=(600,)))
    # issue 24's size 600: depth 130 one image above 140 (a tie), then 120 clearly worse -> the sweep stops
    trials = [{"seed": 1, "size": 600, "frozen": f, "val_accuracy": c / 120, "n_val": 120, "n_train": 480,
               "seconds": 10.0} for f, c in ((140, 116), (130, 117), (120, 93))]
    rows = plan(cfg, [1], 0, trials, [], "test", 0.8)["scenarios"]["measured"]
    assert rows[0]["trials"] == 3  # compared strictly, 130 would be better and 110 would be run too
