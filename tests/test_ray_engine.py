"""--engine ray on a local Ray instance: the same trials and values as the serial run, and a driver killed
mid-sweep that, rerun, completes with no trial lost or repeated."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _records(run_dir: Path, name: str) -> list[dict]:
    path = run_dir / name
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _train(*args: str, **kw):
    return subprocess.Popen([str(BIN / "mstl-train"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def test_ray_smoke_run_records_the_serial_trials(smoke_run, tmp_path):
    from mstl.sweep import optimal_record
    run_dir = tmp_path / "ray"
    proc = _train("full", "--preset", "smoke", "--run-dir", str(run_dir), "--engine", "ray", "--ray-cpus", "2")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "stage 1 on Ray" in out
    serial, ray = _records(smoke_run, "results.jsonl"), _records(run_dir, "results.jsonl")
    key = lambda r: (r["size"], r["frozen"], r["seed"])  # noqa: E731
    assert sorted(map(key, ray)) == sorted(map(key, serial)) and len(ray) == len(set(map(key, ray)))
    by_key = {key(r): r for r in serial}
    # the fixture trains in the test process: if TensorFlow started there before it (another test), it
    # ran with TensorFlow's default threads, and the values agree up to float noise - at most one image
    same_threads = all(r["threads"] == 1 for r in serial)
    for r in ray:
        if same_threads:
            assert r["val_accuracy"] == by_key[key(r)]["val_accuracy"] and r["val_loss"] == by_key[key(r)]["val_loss"]
        else:
            assert abs(r["val_accuracy"] - by_key[key(r)]["val_accuracy"]) <= 1.0 / r["n_val"] + 1e-9
        assert r["engine"] == "ray" and r["threads"] == 1
    for size in {r["size"] for r in serial}:
        assert optimal_record([r for r in ray if r["size"] == size])["frozen"] == \
            optimal_record([r for r in serial if r["size"] == size])["frozen"]
    s2 = {(r["size"], r["seed"]) for r in _records(smoke_run, "stage2.jsonl")}
    assert {(r["size"], r["seed"]) for r in _records(run_dir, "stage2.jsonl")} == s2
    assert json.loads((run_dir / "selection.json").read_text())["size"] in {s for s, _ in s2}
    assert not (run_dir / "stage1" / "pending").exists()


def test_killed_ray_driver_rerun_completes_without_lost_or_repeated_trials(tmp_path):
    run_dir = tmp_path / "killed"
    # 2 sizes x 4 depths, a patience that never stops early: 8 trials, whatever the accuracies
    args = ["full", "--preset", "smoke", "--run-dir", str(run_dir), "--engine", "ray", "--ray-cpus", "2",
            "--start-frozen", "140", "--unfreeze-step", "10", "--min-frozen", "110", "--patience", "9"]
    proc = _train(*args, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_records(run_dir, "results.jsonl")) < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no trial recorded within 10 minutes"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    before = _records(run_dir, "results.jsonl")
    assert 2 <= len(before) < 8
    rerun = _train(*args)
    out, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, out[-3000:]
    after = _records(run_dir, "results.jsonl")
    keys = [(r["size"], r["frozen"], r["seed"]) for r in after]
    assert len(keys) == len(set(keys)) == 8, keys
    assert all(r in after for r in before)  # what was recorded before the kill stays as it was
    assert sorted({r["frozen"] for r in after}) == [110, 120, 130, 140]
    for size in {r["size"] for r in after}:
        best = [r for r in after if r["size"] == size]
        assert any((run_dir / "stage1" / f"size-{size}-seed-{r['seed']}" / f"frozen-{r['frozen']}.keras").exists()
                   for r in best)
