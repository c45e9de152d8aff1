import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mstl.cli.train import app

pytestmark = pytest.mark.slow


def _lines(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def test_smoke_run_dir_contents(smoke_run):
    for name in ("config.json", "results.jsonl", "stage2.jsonl", "report.md", "trials.csv", "selection.json",
                 "target_test.tsv"):
        assert (smoke_run / name).is_file(), name
    trials = _lines(smoke_run / "results.jsonl")
    keys = [(t["size"], t["frozen"], t["seed"]) for t in trials]
    assert len(keys) == len(set(keys)) and {k[0] for k in keys} == {24, 48}
    for t in trials:
        for f in ("val_accuracy", "val_loss", "train_accuracy", "epochs", "seconds", "seed"):
            assert f in t
        assert 0 <= t["val_accuracy"] <= 1 and 0 <= t["train_accuracy"] <= 1 and t["epochs"] >= 1
    s2 = _lines(smoke_run / "stage2.jsonl")
    assert sorted(r["size"] for r in s2) == [0, 24, 48]
    for r in s2:
        assert 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1
        assert (smoke_run / r["model"]).is_file()
    # the best stage-1 model of each size is kept, and only it
    for size in (24, 48):
        best = max((t for t in trials if t["size"] == size), key=lambda t: (t["val_accuracy"], -t["val_loss"], t["frozen"]))
        kept = list((smoke_run / "stage1" / f"size-{size}-seed-1").glob("*.keras"))
        assert [p.name for p in kept] == [f"frozen-{best['frozen']}.keras"]
    report = (smoke_run / "report.md").read_text()
    assert "RANDOM" in report.upper() and "Fig. 2a" in report
    for fig in ("fig2a_frozen_vs_size", "fig2b_accuracy_vs_size", "fig3_heatmap", "sweep_val_accuracy"):
        with Image.open(smoke_run / "figures" / f"{fig}.png") as im:
            assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 5  # drawn, not blank
    cfg = json.loads((smoke_run / "config.json").read_text())
    assert cfg["config"]["data"]["scaling"] == "imagenet" and cfg["config"]["model"]["weights"] == "none"


def test_config_mismatch_is_refused(smoke_run):
    res = CliRunner().invoke(app, ["full", "--preset", "smoke", "--run-dir", str(smoke_run), "--stage2-epochs", "5"])
    assert res.exit_code == 2
    assert "different configuration" in res.output and "stage2.max_epochs" in res.output and "--restart" in res.output


def test_rerun_skips_finished_trials(smoke_run):
    before = (smoke_run / "results.jsonl").read_text()
    res = CliRunner().invoke(app, ["full", "--preset", "smoke", "--run-dir", str(smoke_run)])
    assert res.exit_code == 0, res.output
    assert (smoke_run / "results.jsonl").read_text() == before
    assert "trial:" not in res.output


def test_resume_after_kill(tmp_path):
    run_dir = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mstl.cli.train", "full", "--preset", "smoke", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = run_dir / "results.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(_lines(results))
    assert 2 <= n_before < 4
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = _lines(results)
    keys = [(t["size"], t["frozen"], t["seed"]) for t in trials]
    assert len(keys) == len(set(keys)) == 4
    assert sorted(r["size"] for r in _lines(run_dir / "stage2.jsonl")) == [0, 24, 48]


def test_torn_record_is_ignored(tmp_path):
    from mstl.train.store import append_jsonl, read_jsonl
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    with open(p, "a") as fh:
        fh.write('{"a": 2, "b"')  # a kill mid-write
    assert read_jsonl(p) == [{"a": 1}]
    append_jsonl(p, {"a": 3})
    assert read_jsonl(p) == [{"a": 1}, {"a": 3}]


def test_stop_at_training_accuracy():
    from mstl.tf_env import keras
    from mstl.train.stage2 import StopAtTrainAccuracy
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = StopAtTrainAccuracy(0.85)
    h = m.fit(x, y, epochs=25, batch_size=8, verbose=0, callbacks=[stop]).history["accuracy"]
    assert h[-1] >= 0.85 and all(a < 0.85 for a in h[:-1]) and len(h) < 25
    assert stop.reached_at == len(h)


def test_stage2_embedding_cache_matches_plain_path(smoke_run):
    from mstl.train.prepare import load_source, target_splits
    from mstl.train.stage2 import train_stage2
    from mstl.train.store import RunStore
    store = RunStore(smoke_run)
    cfg = store.config()
    from mstl.train.prepare import resolve_sources
    _, target_path, _ = resolve_sources(cfg)
    src = load_source(target_path, cfg, "target", quiet=True)
    t = target_splits(src, cfg)
    stage1 = sorted((smoke_run / "stage1").glob("size-24-*/*.keras"))[0]
    m1, r1 = train_stage2(cfg, src.images, t, 1, str(stage1), cache=True)
    m2, r2 = train_stage2(cfg, src.images, t, 1, str(stage1), cache=False)
    x = np.asarray(src.images[t.test], dtype="float32")
    np.testing.assert_allclose(m1.predict(x, verbose=0), m2.predict(x, verbose=0), atol=1e-4)
    assert r1["accuracy"] == r2["accuracy"] and r1["epochs"] == r2["epochs"]
