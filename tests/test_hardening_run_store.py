"""The run dir under a full disk and after interrupted writes: a clear error naming the folder, nothing
half-written left to pass for an output (at any depth of the run dir), and a stage-2 model whose file is
gone trained again rather than selected."""

import errno
import json
import os
import shutil
from types import SimpleNamespace

import pytest

from helpers_fakes import write_text_on_a_full_disk
from mstl.config import preset
from mstl.edge.core.outputs import OutputError
from mstl.train.store import RunStore, append_jsonl, atomic_write_text, remove_outputs, save_model_atomic

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
DEAD_PID = 4_194_000  # above Linux's default pid_max (4194304 is the hard cap): never a running process


def _fill_then_fail(dst):
    with open(dst, "wb") as fh:
        fh.write(b"half a model")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_saving_a_model_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "worker.keras"
    src.write_bytes(b"model")
    target = tmp_path / "run" / "stage1" / "size-24-seed-1" / "frozen-140.keras"
    monkeypatch.setattr(shutil, "copyfile", lambda a, b: _fill_then_fail(b))
    with pytest.raises(OutputError) as e:
        save_model_atomic(src, target)
    msg = str(e.value)
    assert str(target.parent) in msg and "the disk is full" in msg and "rerun the same command" in msg
    assert list(target.parent.iterdir()) == []  # no .frozen-140.tmp<pid>.keras, no frozen-140.keras


def test_full_disk_while_a_keras_model_saves_leaves_nothing(tmp_path):
    target = tmp_path / "stage2" / "classifier-size-24-seed-1.keras"
    model = SimpleNamespace(save=_fill_then_fail)
    with pytest.raises(OutputError, match="stage2: cannot write classifier-size-24-seed-1.keras: the disk is full"):
        save_model_atomic(model, target)
    assert list(target.parent.iterdir()) == []


def test_full_disk_while_writing_json_keeps_the_old_file(tmp_path, monkeypatch):
    from pathlib import Path
    sel = tmp_path / "selection.json"
    sel.write_text('{"size": 24}')
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", write_text_on_a_full_disk(keep=3))
        with pytest.raises(OutputError, match="the disk is full"):
            atomic_write_text(sel, '{"size": 48}')
    assert json.loads(sel.read_text()) == {"size": 24} and [p.name for p in tmp_path.iterdir()] == ["selection.json"]


def test_full_disk_while_appending_a_record_is_named(tmp_path, monkeypatch):
    import mstl.train.store as store

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(store.os, "write", full)
    with pytest.raises(OutputError, match=f"{tmp_path}: cannot write results.jsonl: the disk is full"):
        append_jsonl(tmp_path / "results.jsonl", {"a": 1})


def test_the_cli_names_a_full_disk_met_anywhere(tmp_path):
    """A library's own write (h5py, numpy, matplotlib) that meets a full disk is one line, not a traceback."""
    import typer
    from typer.testing import CliRunner
    from mstl.cli.common import friendly

    app = typer.Typer()

    @app.command()
    @friendly
    def write():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "figures" / "fig3_heatmap.png"))
    res = CliRunner().invoke(app, [])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{tmp_path / 'figures'}: cannot write fig3_heatmap.png: the disk is full" in " ".join(res.output.split())


def _leftovers(run):
    files = {
        "stage1/size-24-seed-1/.frozen-140.tmp%d.keras": DEAD_PID, "stage1/size-48-seed-1/.state-120.tmp%d.keras": DEAD_PID,
        "stage2/.classifier-size-24-seed-1.tmp%d.keras": DEAD_PID, ".selection.json.tmp%d": DEAD_PID,
        "cache/.prefix-140.npy.partial%d": DEAD_PID, "figures/.fig.png.tmp%d": DEAD_PID,
    }
    made = []
    for pattern, pid in files.items():
        p = run / (pattern % pid)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
        made.append(p)
    return made


def test_open_removes_temp_files_left_anywhere_in_the_run_dir(tmp_path):
    run = tmp_path / "run"
    store = RunStore(run)
    store.open(preset("smoke"), "fp")
    stale = _leftovers(run)
    live = run / "stage1" / "size-24-seed-1" / f".frozen-120.tmp{os.getppid()}.keras"  # a writer still running
    live.write_bytes(b"being written")
    mine = run / "stage1" / "size-24-seed-1" / "frozen-140.keras"
    mine.write_bytes(b"model")
    RunStore(run).remove_stale_temp()
    assert not any(p.exists() for p in stale)
    assert live.exists() and mine.read_bytes() == b"model"


def test_open_sweeps_leftovers_on_resume(tmp_path):
    run = tmp_path / "run"
    RunStore(run).open(preset("smoke"), "fp")
    stale = _leftovers(run)
    import mstl.train.store as store
    os.close(store.LOCKS_HELD.pop(str(run.resolve())))  # let go of the lock, as a finished process would
    RunStore(run).open(preset("smoke"), "fp")
    assert not any(p.exists() for p in stale)


def test_restart_removes_temp_files_in_subfolders_too(tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({"config_hash": "x", "config": {}, "identity": {}}))
    stale = _leftovers(run)
    assert remove_outputs(run) == []
    assert not any(p.exists() for p in stale)


# -- a stage-2 model whose file was deleted -------------------------------------------------------------

def _fake_stage2(monkeypatch, trained):
    import mstl.train.run as run_mod

    def train(cfg, images, splits, seed, path, cache=True, feature_memo=None):
        size = 0 if path is None else int(path.split("-")[1])
        trained.append((size, seed))
        acc = {0: 0.6, 24: 0.8, 48: 0.7}[size]
        return object(), {"seed": seed, "accuracy": acc, "ci_low": acc - 0.1, "ci_high": acc + 0.1,
                          "val_accuracy": acc, "val_roc_auc": acc, "roc_auc": acc, "n_val": 10, "seconds": 0.1,
                          "epochs": 1}
    monkeypatch.setattr(run_mod, "train_stage2", train)
    monkeypatch.setattr(run_mod, "ensure_best_model", lambda cfg, store, images, split, size, *a: (f"size-{size}", 140))
    monkeypatch.setattr(run_mod, "save_model_atomic", lambda model, path: (path.parent.mkdir(parents=True, exist_ok=True),
                                                                          path.write_bytes(b"model")))
    monkeypatch.setattr(run_mod.keras.backend, "clear_session", lambda: None)
    monkeypatch.setattr(run_mod, "bn_calibration", lambda data: None)


def test_stage2_retrains_a_model_whose_file_was_deleted(tmp_path, monkeypatch):
    from mstl.train.engines import run_stage2
    cfg = preset("smoke")
    store = RunStore(tmp_path / "run")
    store.open(cfg, "fp")
    data = SimpleNamespace(cfg=cfg, bridge=SimpleNamespace(classes=["a", "b"], images=None), splits={24: None, 48: None},
                           target=SimpleNamespace(images=None), target_splits=None)
    trained = []
    _fake_stage2(monkeypatch, trained)
    sel = run_stage2(store, data)
    assert sel["size"] == 24 and sorted(trained) == [(0, 1), (24, 1), (48, 1)]
    chosen = store.dir / sel["model"]
    chosen.unlink()
    trained.clear()
    sel = run_stage2(store, data)
    assert trained == [(24, 1)]  # only the missing one, trained again
    assert (store.dir / sel["model"]).is_file() and sel["size"] == 24
    assert len(store.stage2_records()) == 3  # its new record replaces the old one


def test_export_refuses_a_selection_whose_model_is_gone(tmp_path):
    from mstl.export.run import job_from_run
    from mstl.edge.core.formats import select
    cfg = preset("smoke")
    store = RunStore(tmp_path / "run")
    store.open(cfg, "fp")
    store.write_json("selection.json", {"size": 24, "seed": 1, "why": "best", "model": "stage2/classifier-size-24-seed-1.keras"})
    with pytest.raises(FileNotFoundError, match="classifier-size-24-seed-1.keras: the model selection.json chose .* is "
                                                "missing; run `mstl-train stage2"):
        job_from_run(store.dir, select(["onnx"], set(), {}), None, None, 200, "uint8", {})


def test_full_disk_during_mstl_train_full_is_one_line_and_resumable(tmp_path, monkeypatch):
    """The real command, its first model save meeting a full disk: one line naming the folder, no temporary
    file anywhere in the run dir, and no record of a trial whose model was not saved."""
    from typer.testing import CliRunner
    from mstl.cli.train import app
    from mstl.tf_env import keras

    def full_disk(self, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"PK half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(keras.Model, "save", full_disk)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["full", "--preset", "smoke", "--weights", "none", "--sizes", "24", "--run-dir", str(run)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert f"{run / 'stage1' / 'size-24-seed-1'}: cannot write frozen-140.keras: the disk is full" in out
    assert "rerun the same command" in out and "Traceback" not in res.output
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or p.name.endswith(".keras")]
    assert not (run / "results.jsonl").exists() or (run / "results.jsonl").read_text() == ""
