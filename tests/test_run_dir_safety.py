"""The run dir: mstl writes only into folders it made, deletes only what it wrote, one writer at a time."""

import json
import os
import time

import pytest
from typer.testing import CliRunner

from mstl.cli.train import app
from mstl.train.store import RunStore, is_run_dir, remove_outputs

runner = CliRunner()


def test_foreign_folder_is_refused_and_left_alone(tmp_path):
    mine = tmp_path / "thesis"
    (mine / "stage1").mkdir(parents=True)
    (mine / "stage1" / "chapter1.tex").write_text("months of work")
    (mine / "results.jsonl").write_text("my own log\n")
    for extra in ([], ["--restart"]):
        res = runner.invoke(app, ["full", "--preset", "smoke", "--run-dir", str(mine), *extra])
        assert res.exit_code == 2 and "not an mstl run dir" in res.output and "Traceback" not in res.output
    assert (mine / "stage1" / "chapter1.tex").read_text() == "months of work"
    assert (mine / "results.jsonl").read_text() == "my own log\n"


def test_run_dir_that_is_a_file_gets_one_line(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    res = runner.invoke(app, ["full", "--preset", "smoke", "--run-dir", str(f)])
    assert res.exit_code == 2 and "is a file, not a folder" in res.output


def test_restart_removes_only_what_mstl_wrote(tmp_path):
    run = tmp_path / "run"
    (run / "stage1" / "size-24-seed-1").mkdir(parents=True)
    (run / "stage1" / "size-24-seed-1" / "frozen-140.keras").write_bytes(b"model")
    (run / "stage1" / "my-notes.txt").write_text("keep me")
    (run / "figures").mkdir()
    (run / "figures" / "fig2a_frozen_vs_size.png").write_bytes(b"png")
    (run / "results.jsonl").write_text("{}\n")
    (run / "config.json").write_text(json.dumps({"config_hash": "x", "config": {}, "identity": {}}))
    assert is_run_dir(run)
    kept = remove_outputs(run)
    assert kept == [str(run / "stage1" / "my-notes.txt")]
    assert not (run / "results.jsonl").exists() and not (run / "figures").exists()
    assert not (run / "stage1" / "size-24-seed-1").exists() and (run / "stage1" / "my-notes.txt").exists()


def test_read_only_run_dir_is_named(tmp_path, monkeypatch):
    from mstl.config import preset
    from mstl.train.store import RunDirError
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro") else real(p, mode))
    (tmp_path / "ro").mkdir()
    with pytest.raises(RunDirError, match="read-only"):
        RunStore(tmp_path / "ro").open(preset("smoke"), "fp")


def test_second_writer_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    from helpers_processes import trainer_holding
    from mstl.train.store import RunDirError
    with trainer_holding(run) as holder:
        with pytest.raises(RunDirError, match=f"another mstl-train \\(process {holder.pid}\\)"):
            RunStore(run).lock()
    time.sleep(0.2)
    RunStore(run).lock()  # a killed writer leaves no stale lock


def test_records_without_expected_keys_are_ignored_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text('{"size": 24, "frozen": 140, "seed": 1, "val_accuracy": 0.5, "val_loss": 1.0}\n'
                                       '{"size": 24, "seed": 1}\n[1, 2]\n')
    trials = RunStore(run).trials()
    assert len(trials) == 1 and trials[0]["frozen"] == 140
    said = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert said.count("WARNING:") == 1, said  # once for the file, not once per record
    assert f"{run / 'results.jsonl'}: 2 record(s) lack frozen" in said and "are ignored" in said, said
    (run / "results.jsonl").write_text('{"size": 24, "frozen": 140, "seed": 1, "val_accuracy": 0.5, "val_loss": 1.0}\n')
    assert len(RunStore(run).trials()) == 1
    assert "WARNING" not in capsys.readouterr().err  # a complete file is read quietly
