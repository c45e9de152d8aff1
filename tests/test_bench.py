import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from mstl.cli.bench import app

runner = CliRunner()

BENCHMARK_MODEL_LOG = """STARTING!
Num threads: [4]
Graph: [/data/local/tmp/classifier-int8.tflite]
Use xnnpack: [1]
Loaded model /data/local/tmp/classifier-int8.tflite
Initialized session in 20.283ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=200 first=5012 curr=2011 min=1990 max=2400 avg=2050.5 std=40 p5=2000 median=2040 p95=2150
Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=500 first=2100 curr=2001 min=1950 max=2300 avg=2010.25 std=30 p5=1960 median=2000 p95=2100
Inference timings in us: Init: 20283, First inference: 5012, Warmup (avg): 2050.5, Inference (avg): 2010.25
Memory footprint delta from the start of the tool (MB): init=2.94922 overall=10.1797
"""


def test_import_without_tensorflow():
    code = "import sys, mstl.edge.bench.run, mstl.edge.bench.measure, mstl.cli.bench; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parse_benchmark_model():
    from mstl.edge.bench.android import parse_benchmark_model
    r = parse_benchmark_model(BENCHMARK_MODEL_LOG, "phone.txt")
    assert r["artifact"] == "classifier-int8.tflite" and r["precision"] == "int8"
    lat = r["latency"]["4"]
    assert lat["p50"] == pytest.approx(2.0) and lat["mean"] == pytest.approx(2.01025) and lat["runs"] == 500
    assert r["init_ms"] == pytest.approx(20.283) and r["first_ms"] == pytest.approx(5.012) and r["xnnpack"] is True
    with pytest.raises(ValueError, match="benchmark_model"):
        parse_benchmark_model("garbage")


def _markdown_rows(text):
    """The results table of a bench markdown report: artifact -> {column: cell}."""
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(head, cells)) for cells in
            ([c.strip() for c in l.strip("|").split("|")] for l in lines[1:])}


@pytest.mark.slow
def test_bench_exports_json_and_markdown(smoke_exports, tmp_path):
    """The figures are the artifacts' own: the accuracy is the one the artifact's answers on the
    bundle's held-out images give (recomputed here, in this process, from the runtime), the percentiles
    are ordered and come from the runs asked for, and the markdown row shows the JSON's numbers."""
    from mstl.edge.core import bundle
    from mstl.edge.core.cards import card_of
    from mstl.edge.core.preprocess import Preprocess
    from mstl.edge.core.runtimes import load_runtime
    out = tmp_path / "b.json"
    md = tmp_path / "b.md"
    res = runner.invoke(app, [str(smoke_exports), "--runs", "20", "--warmup", "2", "--threads", "1",
                              "--json", str(out), "--markdown", str(md), "--save-dir", str(tmp_path / "saved")])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["machine"]["cores"] >= 1 and rep["runs"] == 20 and rep["threads"] == [1]
    b = bundle.read(smoke_exports)
    y = b["labels_array"]
    assert rep["n_images"] == len(y) > 0 and "verification bundle" in rep["data"]
    on_disk = sorted(p.name for p in smoke_exports.iterdir() if p.suffix in (".tflite", ".onnx"))
    assert sorted(r["artifact"] for r in rep["results"]) == on_disk
    table = _markdown_rows(md.read_text())
    for r in rep["results"]:
        assert r["status"] == "ok" and r["verified"] is True, r
        path = smoke_exports / r["artifact"]
        assert r["size_mb"] == pytest.approx(path.stat().st_size / 1e6)
        probs = load_runtime(path).predict(Preprocess.from_card(card_of(path)).load_many(b["paths"]))
        assert r["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == y)), abs=1.5 / len(y)), r["artifact"]
        saved = np.asarray(r["bundle_probs"])
        assert np.abs(saved - probs).max() < 1e-3 and r["accuracy"] == pytest.approx(np.mean(saved.argmax(1) == y))
        lat = r["latency"]["1"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] and lat["min"] > 0
        assert r["latency_ms"]["1"] == {k: lat[k] for k in ("p50", "p90", "p99", "mean")}
        row = table[r["artifact"]]
        assert row["accuracy %"].split(" [")[0] == f"{100 * r['accuracy']:.1f}"
        assert row["p50 ms @1t"] == f"{lat['p50']:.2f}" and row["p90 ms @1t"] == f"{lat['p90']:.2f}"
        assert row["size MB"] == f"{r['size_mb']:.2f}"
    saved = list((tmp_path / "saved").glob("bench_*litert*_ort*.json"))
    assert len(saved) == 1


@pytest.mark.slow
def test_min_accuracy_and_broken_artifact(smoke_exports, tmp_path):
    res = runner.invoke(app, [str(smoke_exports / "classifier-int8.tflite"), "--runs", "5", "--threads", "1",
                              "--min-accuracy", "0.0", "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    accuracy = json.loads((tmp_path / "a.json").read_text())["results"][0]["accuracy"]
    assert accuracy < 1.0  # the smoke model (random weights, 32 px) is far from perfect
    res = runner.invoke(app, [str(smoke_exports / "classifier-int8.tflite"), "--runs", "5", "--threads", "1",
                              "--min-accuracy", "1.0"])
    assert res.exit_code == 2 and "below --min-accuracy" in res.output
    broken = tmp_path / "broken-int8.tflite"
    broken.write_bytes(b"not a flatbuffer at all" * 10)
    good = tmp_path / "classifier-fp32.onnx"
    shutil.copy(smoke_exports / "classifier-fp32.onnx", good)
    res = runner.invoke(app, [str(broken), str(good), "--runs", "5", "--threads", "1", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "broken-int8.tflite" in res.output and "could not be measured" in res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    status = {r["artifact"]: r["status"] for r in rep["results"]}
    assert status == {"broken-int8.tflite": "failed", "classifier-fp32.onnx": "ok"}
    assert rep["data"] is None and rep["results"][1]["accuracy"] is None  # no labelled data: said, not invented
    (tmp_path / "model.pt").write_bytes(b"x")
    res = runner.invoke(app, [str(tmp_path / "model.pt")])
    assert res.exit_code == 2 and "unknown artifact type" in res.output


def test_dead_worker_is_reported_within_seconds(tmp_path, monkeypatch):
    """A runtime that crashes the process (segfault, OOM kill) must not hang the bench."""
    import time
    from mstl.edge.bench import measure as m
    fake = tmp_path / "boom.tflite"
    fake.write_bytes(b"x")
    monkeypatch.setattr(m, "_worker", _die_with_sigkill)
    t0 = time.monotonic()
    r = m.measure_isolated(str(fake), [1], 1, 0, None, None, None, [], timeout=120)
    assert time.monotonic() - t0 < 20
    assert r["status"] == "failed" and "SIGKILL" in r["error"] and "boom.tflite" in r["error"]


def _die_with_sigkill(args, queue):
    import os
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def _row(fmt, precision, p50, size, verified=True, delta=None):
    return {"format": fmt, "precision": precision, "status": "ok", "artifact": f"c-{precision}.{fmt}",
            "latency": {"1": {"p50": p50}}, "size_mb": size, "verified": verified, "delta_vs_fp32": delta}


def test_recommendation_follows_measured_speed_and_verification():
    from mstl.edge.bench.report import recommendations
    machine = {"cpu_flags": ["avx2", "fma"]}
    fast = {"machine": machine, "threads": [1], "results": [_row("tflite", "fp32", 2.0, 8.9), _row("tflite", "int8", 1.0, 2.7, delta=0.0)]}
    (line,) = recommendations(fast)
    assert "deploy c-int8.tflite" in line and "2.00x faster" in line and "3.3x smaller" in line
    slow = {"machine": machine, "threads": [1], "results": [_row("onnx", "fp32", 5.4, 8.9), _row("onnx", "int8", 7.3, 2.6)]}
    (line,) = recommendations(slow)
    assert line.startswith("onnx: deploy c-fp32.onnx") and "1.35x slower" in line and "AVX2 without VNNI" in line
    unverified = {"machine": machine, "threads": [1],
                  "results": [_row("onnx", "fp32", 5.4, 8.9), _row("onnx", "int8", 1.0, 2.6, verified=False)]}
    (line,) = recommendations(unverified)
    assert "deploy c-fp32.onnx" in line and "no verified quantized form" in line


@pytest.mark.slow
def test_xnnpack_is_detected_not_assumed(smoke_exports, monkeypatch):
    from ai_edge_litert import interpreter as lit
    from mstl.edge.core.runtimes import load_runtime
    path = smoke_exports / "classifier-int8.tflite"
    assert load_runtime(path).xnnpack is True
    real = lit.Interpreter

    def without_delegates(*a, **kw):
        return real(*a, experimental_op_resolver_type=lit.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, **kw)
    monkeypatch.setattr(lit, "Interpreter", without_delegates)
    assert load_runtime(path).xnnpack is False


@pytest.mark.slow
def test_peak_memory_is_the_models_not_the_labelled_sets(smoke_exports, tmp_path):
    """The labelled set reaches the worker as a memory-mapped file, read after the peak is taken; and
    the peak is the worker's own, not the parent's (Linux's ru_maxrss survives fork+exec)."""
    from mstl.edge.bench.measure import measure_isolated
    from mstl.edge.core.runtimes import load_runtime
    model = str(smoke_exports / "classifier-int8.tflite")
    size = load_runtime(model).image_size
    pixels = np.zeros((100_000_000 // (size * size * 3), size, size, 3), np.uint8)  # ~100 MB
    np.save(tmp_path / "pixels.npy", pixels)
    ballast = np.ones(400_000_000, np.uint8)  # the parent grows to well above any worker's peak
    as_file = measure_isolated(model, [1], 5, 1, str(tmp_path / "pixels.npy"), None, None, [])
    in_memory = measure_isolated(model, [1], 5, 1, pixels, None, None, [])
    assert as_file["peak_rss_mb"] < 350, as_file["peak_rss_mb"]
    assert in_memory["peak_rss_mb"] - as_file["peak_rss_mb"] > 60
    del ballast


@pytest.mark.slow
def test_altered_artifact_is_refused_and_threads_must_be_positive(smoke_exports, tmp_path):
    import shutil as sh
    for name in ("classifier-fp32.onnx", "classifier-fp32.onnx.json"):
        sh.copy(smoke_exports / name, tmp_path / name)
    with open(tmp_path / "classifier-fp32.onnx", "ab") as fh:
        fh.write(b"\0")
    res = runner.invoke(app, [str(tmp_path / "classifier-fp32.onnx"), "--runs", "3", "--threads", "1"])
    assert res.exit_code == 2 and "sha256 differs" in res.output
    res = runner.invoke(app, [str(smoke_exports / "classifier-fp32.onnx"), "--threads", "0"])
    assert res.exit_code == 2 and "--threads must be 1 or more" in res.output
    res = runner.invoke(app, [str(smoke_exports / "classifier-fp32.onnx"), "--min-accuracy", "5"])
    assert res.exit_code == 2 and "--min-accuracy is a fraction from 0 to 1" in res.output


@pytest.mark.slow
def test_artifact_that_failed_its_gate_is_flagged_in_the_table(smoke_exports, tmp_path):
    for name in ("classifier-fp32.onnx", "classifier-fp32.onnx.json"):
        shutil.copy(smoke_exports / name, tmp_path / name)
    card_path = tmp_path / "classifier-fp32.onnx.json"
    card = json.loads(card_path.read_text())
    card["verification"].update({"status": "failed", "reason": "agreement 0.91 below 0.999"})
    card_path.write_text(json.dumps(card))
    res = runner.invoke(app, [str(tmp_path / "classifier-fp32.onnx"), "--runs", "3", "--threads", "1",
                              "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert row["verified"] is False
    assert any(n.startswith("NOT VERIFIED: classifier-fp32.onnx failed its export verification (agreement 0.91")
               for n in row["notes"])
    assert "NOT VERIFIED" in (tmp_path / "r.md").read_text() and "NOT VERIFIED" in res.output


def test_u8s8_artifact_from_a_vnni_cpu_is_flagged_on_avx2_without_vnni(monkeypatch):
    from mstl.edge.bench import run as bench_run
    from mstl.edge.core import machine
    card = {"builder_options": {"activations": "uint8"}, "machine": {"cpu_flags": ["avx2", "avx512_vnni"]}}
    monkeypatch.setattr(machine, "cpu_flags", lambda: ["avx2", "fma"])
    assert "saturate" in bench_run._portability_note(card, "onnx")
    assert bench_run._portability_note(card, "tflite") is None
    assert bench_run._portability_note({**card, "builder_options": {"activations": "int8"}}, "onnx") is None
    seven_bit = {**card, "builder_options": {"activations": "uint8", "reduce_range": True}}
    assert bench_run._portability_note(seven_bit, "onnx") is None  # built for these CPUs (--portable-int8)
    monkeypatch.setattr(machine, "cpu_flags", lambda: ["avx2", "avx512_vnni"])
    assert bench_run._portability_note(card, "onnx") is None


def test_device_rows_folder_with_junk_is_read_with_warnings(tmp_path, capsys):
    """A hand-edited or truncated file in RUN_DIR/bench/device is named and left out, not a traceback."""
    from mstl.edge.core.browser_rows import device_dir, load_device_rows
    folder = device_dir(tmp_path / "exports")
    folder.mkdir(parents=True)
    (folder / "a-list.json").write_text("[1, 2]")
    (folder / "b-cut.json").write_text('{"artifact": "c')
    (folder / "c-ok.json").write_text('{"artifact": "c-int8.onnx", "sha256": "x"}')
    rows = load_device_rows(tmp_path / "exports", current_only=False)
    assert [r["saved_as"] for r in rows] == ["c-ok.json"]
    out = capsys.readouterr().err
    assert "a-list.json: left out" in out and "b-cut.json: left out" in out


@pytest.mark.slow
def test_card_without_input_shape_is_measured_at_the_artifacts_own_size(smoke_exports, tmp_path):
    """An older or hand-trimmed card that gives no input shape: the artifact itself says its input size
    (before, the bench stopped with 'no input size' naming no file)."""
    for name in ("classifier-fp32.onnx", "classifier-fp32.onnx.json"):
        shutil.copy(smoke_exports / name, tmp_path / name)
    card_path = tmp_path / "classifier-fp32.onnx.json"
    card = json.loads(card_path.read_text())
    size = card["input"]["shape"][1]
    del card["input"]["shape"]
    card_path.write_text(json.dumps(card))
    res = runner.invoke(app, [str(tmp_path / "classifier-fp32.onnx"), "--runs", "3", "--threads", "1",
                              "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert row["status"] == "ok" and row["accuracy"] is not None and row["image_size"] == size
