"""mstl-export under a full disk, a read-only --out and a kill: one line naming the folder, the old exports
left as they were, and no scratch outside the exports' parent folder."""

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mstl.edge.core.outputs import OutputError


@pytest.fixture
def export_job(tmp_path, monkeypatch):
    """run_export with the model loading stubbed out (what is tested is the folder handling around it)."""
    import mstl.model
    import mstl.export.run as run
    from mstl.export.run import ExportJob
    monkeypatch.setattr(mstl.model, "load_classifier", lambda p: type("M", (), {"input_shape": (None, 32, 32, 3)})())
    monkeypatch.setattr(run, "check_classifier", lambda m: 2)
    out = tmp_path / "run" / "exports"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text('{"artifacts": [], "old": true}')
    (out / "classifier-fp32.onnx").write_bytes(b"old export")
    job = ExportJob(model_path=tmp_path / "m.keras", out_dir=out, formats=[], labels=["a", "b"], image_size=32,
                    resize_method="bilinear", scaling="imagenet", verify_sources=[], calibration_sources=[])
    return run, job, out


def _old_exports_intact(out: Path):
    assert (out / "classifier-fp32.onnx").read_bytes() == b"old export"
    assert sorted(p.name for p in out.parent.iterdir()) == ["exports"]  # no staging, no scratch, no .old


def test_full_disk_mid_export_is_named_and_leaves_the_old_exports(export_job, monkeypatch):
    run, job, out = export_job
    seen = {}

    def export_all(job, model):
        (job.out_dir / "classifier-int8.onnx").write_bytes(b"half")
        seen["tmp"] = tempfile.mkdtemp(prefix="mstl-tflite-")
        Path(seen["tmp"], "saved_model.pb").write_bytes(b"x" * 1000)
        seen["env"] = os.environ.get("TMPDIR")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(run, "_export_all", export_all)
    with pytest.raises(OutputError) as e:
        run.run_export(job)
    msg = str(e.value)
    assert msg.startswith(f"{out}: cannot write the exports: the disk is full") and "as they were" in msg
    _old_exports_intact(out)
    assert Path(seen["tmp"]).resolve().is_relative_to(out.parent.resolve())
    assert Path(seen["env"]).resolve().is_relative_to(out.parent.resolve())
    assert not Path(seen["tmp"]).exists()
    assert tempfile.gettempdir() != seen["env"] and os.environ.get("TMPDIR") != seen["env"]  # restored


def test_scratch_of_a_finished_export_is_gone_and_not_shipped(export_job, monkeypatch):
    run, job, out = export_job
    made = []

    def export_all(job, model):
        with tempfile.TemporaryDirectory(prefix="mstl-export-") as tmp:
            made.append(tmp)
            Path(tmp, "work.tflite").write_bytes(b"scratch")
        made.append(tempfile.mkdtemp(prefix="mstl-rank-"))  # one a library forgot to remove
        (job.out_dir / "manifest.json").write_text('{"artifacts": []}')
        return {"artifacts": []}
    monkeypatch.setattr(run, "_export_all", export_all)
    before = set(Path(tempfile.gettempdir()).glob("mstl-*"))
    run.run_export(job)
    assert all(Path(m).resolve().is_relative_to(out.parent.resolve()) for m in made)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # no .scratch shipped with the exports
    assert sorted(p.name for p in out.parent.iterdir()) == ["exports"]
    assert set(Path(tempfile.gettempdir()).glob("mstl-*")) == before


def test_scratch_of_a_killed_export_is_removed_by_the_next(export_job, monkeypatch):
    run, job, out = export_job
    dead = out.parent / f".exports.staging-4194000"
    (dead / run.SCRATCH / "mstl-export-x").mkdir(parents=True)
    (dead / run.SCRATCH / "mstl-export-x" / "model.onnx").write_bytes(b"6 MB of scratch")
    monkeypatch.setattr(run, "_export_all", lambda job, model: {"artifacts": []})
    run.run_export(job)
    assert not dead.exists()


def test_read_only_out_is_refused_before_the_export(export_job, monkeypatch):
    run, job, out = export_job
    called = []
    monkeypatch.setattr(run, "_export_all", lambda job, model: called.append(1))
    real = Path.mkdir

    def read_only(self, *a, **k):
        if ".staging-" in self.name:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OutputError, match=f"{out}: cannot write the exports: the folder is not writable"):
        run.run_export(job)
    assert not called
    _old_exports_intact(out)


def test_export_cli_prints_a_full_disk_as_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner
    import mstl.export.run as run
    from mstl.cli.export import app

    def full(job):
        raise OutputError(f"{job.out_dir}: cannot write the exports: the disk is full (no space left on device)")
    monkeypatch.setattr(run, "run_export", full)
    monkeypatch.setattr(run, "job_from_run", lambda *a, **k: type("J", (), {"out_dir": tmp_path / "exports"})())
    (tmp_path / "config.json").write_text("{}")
    res = CliRunner().invoke(app, [str(tmp_path)])
    assert res.exit_code == 2 and "the disk is full" in res.output and "Traceback" not in res.output


def _run_with_selection(tmp_path):
    from mstl.config import preset
    from mstl.train.store import RunStore
    store = RunStore(tmp_path / "run")
    store.open(preset("smoke"), "fp")
    model = store.dir / "stage2" / "classifier-size-24-seed-1.keras"
    model.parent.mkdir()
    model.write_bytes(b"model")
    store.write_json("selection.json", {"size": 24, "seed": 1, "why": "best", "model": str(model.relative_to(store.dir))})
    return store


def _job(store):
    from mstl.export.run import job_from_run
    from mstl.edge.core.formats import select
    return job_from_run(store.dir, select(["onnx"], set(), {}), None, None, 200, "uint8", {})


def test_export_of_a_run_dir_without_its_split_lists_is_named(tmp_path):
    store = _run_with_selection(tmp_path)
    with pytest.raises(FileNotFoundError, match="target_test.tsv: missing - the run dir's test split list"):
        _job(store)


def test_export_of_a_run_being_trained_warns(tmp_path, monkeypatch):
    import mstl.edge.core.progress
    import mstl.train.store as s
    warned = []
    monkeypatch.setattr(mstl.edge.core.progress, "warn", warned.append)
    from mstl.edge.core.filelist import write_list
    store = _run_with_selection(tmp_path)
    for name in ("target_test.tsv", "target_train.tsv"):
        write_list(store.dir / name, ["a.png", "b.png"], np.array([0, 1]))
    (store.dir / "labels.txt").write_text("a\nb\n")
    os.close(s.LOCKS_HELD.pop(str(store.dir.resolve())))
    from helpers_processes import trainer_holding
    with trainer_holding(store.dir) as trainer:
        job = _job(store)
    assert job.labels == ["a", "b"]
    assert any(f"is being trained now (process {trainer.pid})" in w for w in warned), warned


def test_export_cli_refuses_an_unwritable_out_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner
    import mstl.export.run as run
    from mstl.cli.export import app
    monkeypatch.setattr(run, "job_from_run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("went on")))
    (tmp_path / "config.json").write_text("{}")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker / "exports", blocker):
        res = CliRunner().invoke(app, [str(tmp_path), "--out", str(out)])
        assert res.exit_code == 2 and "--out" in res.output and "Traceback" not in res.output, res.output
