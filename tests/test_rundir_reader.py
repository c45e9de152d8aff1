"""mstl.edge.core.rundir.RunDir: how export, the report and training read a run dir - its config, its
records (incomplete ones named and left out, repeats resolved the way resume needs), who is training it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mstl.edge.core import rundir
from mstl.edge.core.rundir import LOCKS_HELD, RunDir, RunDirError


def _trial(size, frozen, seed, acc=0.5, **extra):
    return {"size": size, "frozen": frozen, "seed": seed, "val_accuracy": acc, "val_loss": 1 - acc, **extra}


def _stage2(size, seed, acc, **extra):
    return {"size": size, "seed": seed, "accuracy": acc, "ci_low": acc - 0.1, "ci_high": acc + 0.1, **extra}


def _log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_files_it_reads_are_the_documented_names(tmp_path):
    run = RunDir(tmp_path)
    assert (run.config_path.name, run.results_path.name, run.stage2_path.name) == (
        "config.json", "results.jsonl", "stage2.jsonl")
    assert run.config_path.parent == tmp_path == run.dir


def test_a_folder_without_config_is_not_a_run_dir_and_says_what_to_run(tmp_path):
    with pytest.raises(RunDirError) as e:
        RunDir(tmp_path).config_json()
    assert str(tmp_path) in str(e.value) and "no config.json" in str(e.value) and "mstl-train full" in str(e.value)


def test_config_and_its_hash_read_back(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"config_hash": "abc123", "preset": "demo"}))
    run = RunDir(tmp_path)
    assert run.config_json() == {"config_hash": "abc123", "preset": "demo"}
    assert run.config_hash() == "abc123"


def test_trials_keep_their_order_and_the_first_of_a_repeated_trial(tmp_path):
    _log(tmp_path / "results.jsonl", [_trial(100, 140, 1, 0.6), _trial(100, 130, 1, 0.7),
                                      _trial(100, 140, 1, 0.9), _trial(200, 140, 1, 0.8)])
    got = [(r["size"], r["frozen"], r["val_accuracy"]) for r in RunDir(tmp_path).trials()]
    assert got == [(100, 140, 0.6), (100, 130, 0.7), (200, 140, 0.8)]


def test_a_trial_of_another_seed_is_not_a_repeat(tmp_path):
    _log(tmp_path / "results.jsonl", [_trial(100, 140, 1), _trial(100, 140, 2)])
    assert [r["seed"] for r in RunDir(tmp_path).trials()] == [1, 2]


@pytest.mark.parametrize("missing", ["size", "frozen", "seed", "val_accuracy", "val_loss"])
def test_an_incomplete_trial_is_named_once_and_left_out(tmp_path, capsys, missing):
    bad = _trial(100, 130, 1)
    del bad[missing]
    _log(tmp_path / "results.jsonl", [_trial(100, 140, 1), bad, bad, _trial(100, 120, 1)])
    got = RunDir(tmp_path).trials()
    assert [r["frozen"] for r in got] == [140, 120]
    err = capsys.readouterr()
    text = err.out + err.err
    assert str(tmp_path / "results.jsonl") in text and "2 record(s)" in text and missing in text
    assert "run again" in text and text.count("record(s) lack") == 1


def test_complete_records_say_nothing(tmp_path, capsys):
    _log(tmp_path / "results.jsonl", [_trial(100, 140, 1)])
    _log(tmp_path / "stage2.jsonl", [_stage2(100, 1, 0.8)])
    run = RunDir(tmp_path)
    assert len(run.trials()) == 1 and len(run.stage2_records()) == 1
    err = capsys.readouterr()
    assert "lack" not in err.out + err.err


def test_a_non_object_line_is_an_incomplete_record(tmp_path, capsys):
    (tmp_path / "stage2.jsonl").write_text(json.dumps(_stage2(100, 1, 0.8)) + "\n[1, 2]\n")
    assert [r["accuracy"] for r in RunDir(tmp_path).stage2_records()] == [0.8]
    err = capsys.readouterr()
    assert "1 record(s) lack size, seed, accuracy, ci_low, ci_high" in err.out + err.err


def test_the_last_stage2_record_of_a_size_and_seed_wins_where_it_stands(tmp_path):
    # a model re-trained because its file went missing appends a new record: that one describes the file
    _log(tmp_path / "stage2.jsonl", [_stage2(100, 1, 0.70), _stage2(200, 1, 0.80), _stage2(100, 2, 0.75),
                                     _stage2(100, 1, 0.72)])
    got = [(r["size"], r["seed"], r["accuracy"]) for r in RunDir(tmp_path).stage2_records()]
    assert got == [(200, 1, 0.80), (100, 2, 0.75), (100, 1, 0.72)]


def test_no_record_files_mean_no_records(tmp_path):
    run = RunDir(tmp_path)
    assert run.trials() == [] and run.stage2_records() == []


def test_write_json_replaces_the_file_whole_with_sorted_keys(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "selection.json").write_text("old")
    path = run.write_json("selection.json", {"b": 1, "a": [1, 2]})
    assert path == tmp_path / "selection.json"
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selection.json"]


HOLD = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, sys.argv[2].encode())
    print("locked", flush=True)
    time.sleep(60)
""")


def _holder(lock, text):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), text], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_nobody_trains_a_run_dir_without_a_held_lock(tmp_path):
    run = RunDir(tmp_path)
    assert run.writer() is None  # no lock file at all
    (tmp_path / ".lock").write_text("12345")
    assert run.writer() is None  # a lock file left by a trainer that has ended


@pytest.mark.parametrize("text,want", [("4242", "4242"), ("", "unknown")])
def test_another_process_holding_the_lock_is_named(tmp_path, text, want):
    p = _holder(tmp_path / ".lock", text)
    try:
        assert RunDir(tmp_path).writer() == want
    finally:
        p.kill()
        p.wait()
    assert RunDir(tmp_path).writer() is None  # its lock went with it


def test_this_processs_own_lock_is_not_another_writer(tmp_path, monkeypatch):
    p = _holder(tmp_path / ".lock", "777")
    try:
        monkeypatch.setitem(LOCKS_HELD, str(tmp_path.resolve()), -1)
        assert RunDir(tmp_path).writer() is None
    finally:
        p.kill()
        p.wait()


def test_asking_who_trains_leaves_the_lock_free_for_the_trainer(tmp_path):
    import fcntl
    import os
    (tmp_path / ".lock").write_text("1")
    RunDir(tmp_path).writer()
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if writer() had kept its shared lock
    finally:
        os.close(fd)
    assert rundir.CONFIG == "config.json"
