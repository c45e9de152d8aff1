"""mstl.edge.core.rundir, the run directory as training, export, report, the bench and the app read it: record logs
that survive a kill at any moment, writes that never leave a half-written file to pass for an output,
the selection and labels files with clear errors, split lists that round-trip, data draws, and whether
the process a leftover file names is still running. Tiny tmp dirs, no TensorFlow."""

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mstl.edge.core import rundir
from mstl.edge.core.outputs import OutputError
from mstl.edge.core.rundir import (append_jsonl, atomic_write_text, draw_dir, draw_dirs, process_running, read_jsonl, read_labels,
                         read_selection, read_split, split_list_path, write_labels, write_via_temp)

DEAD_PID = 4_194_000  # above Linux's default pid_max (4194304 is the hard cap): never a running process


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- append-only record logs ----------------------------------------------------------------------------

def test_records_append_one_line_each_and_read_back_in_order(tmp_path):
    log = tmp_path / "results.jsonl"
    assert read_jsonl(log) == []  # no log yet: no trials
    append_jsonl(log, {"frozen": 140, "val_accuracy": 0.75})
    append_jsonl(log, {"frozen": 130, "val_accuracy": 0.8})
    assert read_jsonl(log) == [{"frozen": 140, "val_accuracy": 0.75}, {"frozen": 130, "val_accuracy": 0.8}]
    # exactly one line per record: no blank lines, nothing else in the file
    assert log.read_bytes() == b'{"frozen": 140, "val_accuracy": 0.75}\n{"frozen": 130, "val_accuracy": 0.8}\n'


def test_the_same_record_is_the_same_line_whatever_its_key_order(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append_jsonl(a, {"size": 24, "frozen": 140, "seed": 1})
    append_jsonl(b, {"seed": 1, "frozen": 140, "size": 24})
    assert a.read_bytes() == b.read_bytes()  # logs of two runs of one study compare line by line


def test_a_torn_last_line_is_ignored_and_the_next_record_starts_a_fresh_line(tmp_path):
    log = tmp_path / "results.jsonl"
    append_jsonl(log, {"frozen": 140})
    with open(log, "ab") as fh:
        fh.write(b'{"frozen": 130, "val_')  # killed mid-write
    assert read_jsonl(log) == [{"frozen": 140}]
    append_jsonl(log, {"frozen": 130})  # the trial run again
    assert read_jsonl(log) == [{"frozen": 140}, {"frozen": 130}]
    assert log.read_bytes().splitlines() == [b'{"frozen": 140}', b'{"frozen": 130, "val_', b'{"frozen": 130}']


def test_blank_and_torn_lines_in_the_middle_of_a_log_lose_no_later_record(tmp_path):
    log = tmp_path / "stage2.jsonl"
    log.write_text('{"size": 24}\n\n   \n{"size": 48, "tor\n{"size": 0}\n')
    assert read_jsonl(log) == [{"size": 24}, {"size": 0}]


def test_appending_to_an_empty_log_adds_no_blank_line(tmp_path):
    log = tmp_path / "results.jsonl"
    log.touch()  # created, nothing written yet (a kill before the first record)
    append_jsonl(log, {"a": 1})
    assert log.read_bytes() == b'{"a": 1}\n'


def test_a_record_log_is_an_ordinary_readable_file(tmp_path):
    old = os.umask(0o022)
    try:
        append_jsonl(tmp_path / "results.jsonl", {"a": 1})
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "results.jsonl").stat().st_mode)
    assert mode == 0o644  # readable by the team's other tools, executable by nobody


def test_a_record_is_flushed_to_disk_before_append_returns(tmp_path, monkeypatch):
    """A kill -9 (or a power cut) after append_jsonl returned must not lose the trial it recorded."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(rundir.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real(fd)))
    append_jsonl(tmp_path / "results.jsonl", {"a": 1})
    assert synced == [len(b'{"a": 1}\n')]  # the file's descriptor, with the record in it


def test_a_full_disk_while_appending_names_the_folder_and_says_the_run_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.os, "write", _enospc)
    with pytest.raises(OutputError) as e:
        append_jsonl(tmp_path / "results.jsonl", {"a": 1})
    assert str(e.value) == (f"{tmp_path}: cannot write results.jsonl: the disk is full (no space left on device); "
                            "free some space and rerun the same command: finished trials are kept and the run resumes")


def test_an_error_that_is_not_a_full_disk_is_raised_as_it_is(tmp_path):
    (tmp_path / "results.jsonl").mkdir()  # a folder where the log should be
    with pytest.raises(IsADirectoryError):
        append_jsonl(tmp_path / "results.jsonl", {"a": 1})


# --- writes through a temporary file ---------------------------------------------------------------------

def test_an_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    sel = tmp_path / "selection.json"
    atomic_write_text(sel, '{"size": 24}')
    atomic_write_text(sel, '{"size": 48}')
    assert json.loads(sel.read_text()) == {"size": 48}
    assert [p.name for p in tmp_path.iterdir()] == ["selection.json"]


def test_while_an_atomic_write_runs_readers_see_the_old_file_and_a_killed_writer_leaves_a_temp_the_run_sweeps(
        tmp_path, monkeypatch):
    from mstl.train import store
    sel = tmp_path / "selection.json"
    sel.write_text('{"size": 24}')
    seen = {}
    real = Path.write_text

    def watch(self, text, *a, **k):
        real(self, text, *a, **k)
        seen["old"] = json.loads(sel.read_text())
        seen["visible"] = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
        seen["live"] = store.stale_temp_files(tmp_path)  # its writer (this process) is alive: spared
        monkeypatch.setattr(store, "_running", lambda pid: False)
        seen["dead"] = store.stale_temp_files(tmp_path)  # had it been killed here: found by the sweep
        monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", watch)
    atomic_write_text(sel, '{"size": 48}')
    assert seen["old"] == {"size": 24} and seen["visible"] == ["selection.json"]
    assert seen["live"] == [] and len(seen["dead"]) == 1 and seen["dead"][0].parent == tmp_path
    assert json.loads(sel.read_text()) == {"size": 48} and not seen["dead"][0].exists()


def test_a_full_disk_during_an_atomic_write_keeps_the_old_file_and_names_the_target(tmp_path, monkeypatch):
    sel = tmp_path / "selection.json"
    sel.write_text('{"size": 24}')
    real = Path.write_text

    def half(self, text, *a, **k):
        real(self, text[:3], *a, **k)
        _enospc()
    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OutputError) as e:
        atomic_write_text(sel, '{"size": 48}')
    monkeypatch.undo()
    assert str(e.value).startswith(f"{tmp_path}: cannot write selection.json: the disk is full")
    assert "finished trials are kept" in str(e.value)
    assert json.loads(sel.read_text()) == {"size": 24} and [p.name for p in tmp_path.iterdir()] == ["selection.json"]


@pytest.mark.parametrize("failure", [ValueError("a bug in the writer"), KeyboardInterrupt()])
def test_a_writer_that_fails_otherwise_leaves_no_partial_file_and_its_error_goes_through(tmp_path, failure):
    out, tmp = tmp_path / "trials.csv", tmp_path / ".trials.csv.tmp1"

    def write(p):
        p.write_text("frozen,val\n140,")
        raise failure
    with pytest.raises(type(failure)):
        write_via_temp(out, tmp, write)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_fails_before_creating_its_temp_still_reports_its_own_error(tmp_path):
    def write(p):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match=f"{tmp_path}: cannot write report.md: the disk is full"):
        write_via_temp(tmp_path / "report.md", tmp_path / ".report.md.tmp1", write)
    assert list(tmp_path.iterdir()) == []


# --- the selection, the labels, the split lists, the draws: as the README lays the run dir out ---------------

def _run_dir_as_documented(tmp_path):
    """A run dir as the README documents it (an older mstl wrote exactly these names)."""
    d = tmp_path / "run"
    d.mkdir()
    (d / "selection.json").write_text(json.dumps({"model": "stage2/classifier-size-24-seed-1.keras", "size": 24,
                                                  "seed": 1, "why": "best validation accuracy"}))
    (d / "labels.txt").write_text("benign\nmalignant\n")
    (d / "target_test.tsv").write_text("a.png\t0\nb.png\t1\n")
    (d / "target_operating.tsv").write_text("c.png\t1\n")
    return d


def test_a_documented_run_dir_reads_back(tmp_path):
    d = _run_dir_as_documented(tmp_path)
    assert read_selection(d)["model"] == "stage2/classifier-size-24-seed-1.keras"
    assert read_labels(d) == ["benign", "malignant"]
    src, y = read_split(d, "test")
    assert src == ["a.png", "b.png"] and y.tolist() == [0, 1]
    assert read_split(d, "operating")[0] == ["c.png"]
    assert read_split(d, "val") is None and read_split(d, "train") is None  # a preset without val: no list
    # the names the README promises for the files train and report write
    assert (rundir.RESULTS, rundir.STAGE2_RESULTS, rundir.CLAIMS, rundir.REPORT, rundir.TRIALS_CSV) == (
        "results.jsonl", "stage2.jsonl", "claims.json", "report.md", "trials.csv")


def test_no_selection_before_stage2_and_a_broken_one_is_a_clear_error(tmp_path):
    assert read_selection(tmp_path) is None
    (tmp_path / "selection.json").write_text('{"model": "stage2/classif')  # copied in part
    with pytest.raises(ValueError) as e:
        read_selection(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'selection.json'}: not valid JSON (")
    assert f"run `mstl-train stage2 {tmp_path}` to write it again" in str(e.value)
    (tmp_path / "selection.json").write_text('["model"]')
    with pytest.raises(ValueError, match="selection.json: not a JSON object; run `mstl-train stage2"):
        read_selection(tmp_path)


def test_labels_round_trip_in_output_order_and_survive_a_stripped_last_newline(tmp_path):
    names = ["nevus", "melanoma", "basal cell carcinoma", "Läsion-ü"]
    write_labels(tmp_path, names)
    assert read_labels(tmp_path) == names
    (tmp_path / "labels.txt").write_text("benign\nmalignant")  # an editor dropped the final newline
    assert read_labels(tmp_path) == ["benign", "malignant"]


def test_missing_labels_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        read_labels(tmp_path)


def test_split_lists_round_trip_odd_names_and_all_labels(tmp_path):
    from mstl.edge.core.filelist import write_list
    sources = ["img 1.png", "dir/ü.jpg", "npz:/data/pneumonia.npz:test:7"]
    for split in ("test", "val", "train", "operating"):
        write_list(split_list_path(tmp_path, split), sources, [0, 2, 1])
        got_src, got_y = read_split(tmp_path, split)
        assert got_src == sources and isinstance(got_y, np.ndarray) and got_y.tolist() == [0, 2, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target_operating.tsv", "target_test.tsv",
                                                         "target_train.tsv", "target_val.tsv"]
    with pytest.raises(KeyError):
        split_list_path(tmp_path, "holdout")  # not a split a run dir has


def test_data_draws_are_found_in_order_and_nothing_else_counts(tmp_path):
    assert draw_dirs(tmp_path) == []
    for k in (2, 10, 1):
        draw_dir(tmp_path, k).mkdir(parents=True)
    (tmp_path / "draws" / "notes").mkdir()
    assert draw_dir(tmp_path, 2) == tmp_path / "draws" / "data-seed-2"
    assert draw_dirs(tmp_path) == sorted([draw_dir(tmp_path, 1), draw_dir(tmp_path, 10), draw_dir(tmp_path, 2)])


# --- the writer a leftover file names -------------------------------------------------------------------

def test_process_running_tells_live_from_gone_and_leaves_the_process_alone(monkeypatch):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_running(sleeper.pid)
        with pytest.raises(subprocess.TimeoutExpired):
            sleeper.wait(timeout=0.3)  # asking sent it no signal that stops it: still running
    finally:
        sleeper.kill()
        sleeper.wait()
    assert process_running(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid names no process now
    assert not process_running(child.pid)
    assert not process_running(DEAD_PID)

    def other_users(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(rundir.os, "kill", other_users)
    assert process_running(12345)  # another user's process: alive, its files are not ours to remove
