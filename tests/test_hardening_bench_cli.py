"""mstl-bench refuses what it could not honour before it measures anything: thread counts beyond the
machine, outputs it could not write; a measuring process that hangs is killed and reported per artifact."""

import errno
import json
import multiprocessing as mp
import os
import time

import pytest
from typer.testing import CliRunner

from helpers_fakes import forbid, write_text_on_a_full_disk
from mstl.cli import bench as bench_cli
from mstl.cli.bench import app

runner = CliRunner()


@pytest.fixture
def no_measuring(monkeypatch):
    """Fails the test if the bench gets as far as measuring."""
    import mstl.edge.bench.run as run
    forbid(monkeypatch, run, "run_bench", "measured before refusing")


@pytest.fixture
def artifact(tmp_path):
    a = tmp_path / "classifier-fp32.onnx"
    a.write_bytes(b"onnx")
    return a


def test_threads_beyond_the_machine_are_refused_up_front(artifact, no_measuring):
    res = runner.invoke(app, [str(artifact), "--threads", "1,100000"])
    assert res.exit_code == 2 and "logical CPU" in res.output and f"1 to {os.cpu_count()}" in res.output
    res = runner.invoke(app, [str(artifact), "--threads", "1,1"])
    assert res.exit_code == 2 and "given twice" in res.output


def test_default_threads_fit_a_one_cpu_machine(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert bench_cli._thread_counts(None) == [1]
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert bench_cli._thread_counts(None) == [1, 2]
    assert bench_cli._thread_counts("1,8") == [1, 8]


def test_markdown_that_is_a_folder_is_refused_before_measuring(artifact, tmp_path, no_measuring):
    res = runner.invoke(app, [str(artifact), "--threads", "1", "--markdown", str(tmp_path)])
    assert res.exit_code == 2 and "--markdown" in res.output and "is a folder" in res.output
    res = runner.invoke(app, [str(artifact), "--threads", "1", "--json", str(tmp_path)])
    assert res.exit_code == 2 and "--json" in res.output and "is a folder" in res.output


def test_unwritable_outputs_are_refused_before_measuring(artifact, tmp_path, no_measuring):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for flag, path in (("--json", blocker / "r.json"), ("--markdown", blocker / "sub" / "r.md"),
                       ("--save-dir", blocker / "results"), ("--save-dir", blocker)):
        res = runner.invoke(app, [str(artifact), "--threads", "1", flag, str(path)])
        assert res.exit_code == 2 and flag in res.output and "Traceback" not in res.output, (flag, res.output)


def test_read_only_output_folder_is_refused_before_measuring(artifact, tmp_path, no_measuring, monkeypatch):
    """As root, permission bits do not stop a write: a read-only mount is what does (simulated here at the
    probe's own system call)."""
    import mstl.edge.core.outputs as outputs
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = os.open

    def read_only(path, *a, **k):
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(outputs.os, "open", read_only)
    for flag, path in (("--json", ro / "r.json"), ("--save-dir", ro / "results")):
        res = runner.invoke(app, [str(artifact), "--threads", "1", flag, str(path)])
        assert res.exit_code == 2 and "not writable" in res.output and str(ro) in res.output, res.output


def _report():
    from mstl.edge.core.machine import machine_info
    return {"machine": machine_info(), "threads": [1], "runs": 1, "warmup": 0, "data": None, "n_images": 0,
            "results": []}


def test_markdown_and_json_are_written_as_asked_whatever_the_suffix(artifact, tmp_path, monkeypatch):
    import mstl.edge.bench.run as run
    monkeypatch.setattr(run, "run_bench", lambda *a, **k: _report())
    md, js = tmp_path / "table.json", tmp_path / "report.md"
    res = runner.invoke(app, [str(artifact), "--threads", "1", "--markdown", str(md), "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert json.loads(js.read_text())["threads"] == [1]
    with pytest.raises(ValueError):
        json.loads(md.read_text())
    assert "|" in md.read_text()


def test_full_disk_while_saving_keeps_the_old_file(tmp_path, monkeypatch):
    from pathlib import Path
    from mstl.edge.bench.report import save
    from mstl.edge.core.outputs import OutputError
    out = tmp_path / "bench.json"
    out.write_text('{"old": true}')
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", write_text_on_a_full_disk(keep=10))
        with pytest.raises(OutputError, match=f"{tmp_path}: cannot write bench.json: the disk is full"):
            save(_report(), out)
    assert json.loads(out.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


def _hang(args, queue):
    time.sleep(3600)


def _report_then_hang(args, queue):
    queue.put(("ok", {"artifact": args[0]}))
    time.sleep(3600)


def test_hung_worker_is_killed_and_reported(tmp_path):
    from mstl.edge.bench import measure as m
    fake = tmp_path / "hang.onnx"
    fake.write_bytes(b"x")
    saved, m._worker = m._worker, _hang
    try:
        t0 = time.monotonic()
        r = m.measure_isolated(str(fake), [1], 1, 0, None, None, None, [], timeout=3)
    finally:
        m._worker = saved
    assert time.monotonic() - t0 < 40
    assert r["status"] == "failed" and "hung and was killed" in r["error"] and "hang.onnx" in r["error"]
    assert not [p for p in mp.active_children() if p.is_alive()]


def test_worker_that_hangs_after_reporting_is_not_left_running(tmp_path):
    from mstl.edge.bench import measure as m
    fake = tmp_path / "linger.onnx"
    fake.write_bytes(b"x")
    saved, m._worker = m._worker, _report_then_hang
    try:
        r = m.measure_isolated(str(fake), [1], 1, 0, None, None, None, [], timeout=60)
    finally:
        m._worker = saved
    assert r["status"] == "ok"
    assert not [p for p in mp.active_children() if p.is_alive()]


def test_timeout_flag_is_checked(artifact, no_measuring):
    res = runner.invoke(app, [str(artifact), "--threads", "1", "--timeout", "0"])
    assert res.exit_code == 2 and "--timeout must be a positive number of seconds" in res.output
